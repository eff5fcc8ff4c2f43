"""The store of record: feeds, keys and signed messages in one SQLite file (WAL mode).

Rules:

1. Every write is one transaction that takes the write lock when it starts (``BEGIN
   IMMEDIATE``, or the single statement of the append fast path below). The subfeed's count and head hash are
   read *inside* it, so appends from many processes are serialized by SQLite and a subfeed can
   never fork locally; a process killed mid-write leaves nothing behind (SQLite rolls back).
   A subfeed's count and head are those of its last stored message (schema version 3): an
   append writes the messages table only. An append to the subfeed this store appended to
   last builds and signs its messages before the transaction, against the count and head it
   left there; inside, it only inserts when nothing was committed to the file since (``PRAGMA
   data_version`` unchanged and no other write by this store object), or else when one query
   finds its last message still the subfeed's last and the feed without a key succession; when
   anything changed in between, the append is redone the usual way inside the same
   transaction. A single append on that path is one statement: an INSERT (its own transaction,
   which takes the write lock when it starts) that inserts only if ``PRAGMA data_version`` is
   still what it was (read inside it); when it inserts nothing, the append goes the way above.
2. After each commit the store touches its notify file (:mod:`kachery_feeds.watch`) so
   followers in every process wake.
3. Received messages are verified completely (:mod:`kachery_feeds.messages`) before the write
   transaction starts; inside it they are only compared with local state.
4. Everything uses plain ``sqlite3``; :attr:`Store.db` (sqlite-utils, imported on first use)
   is there for ad-hoc inspection only, so ``import kachery_feeds`` stays cheap.

``synchronous=NORMAL`` (the default ``durability``) means a commit survives the process being
killed but may be lost if the machine loses power before the WAL reaches the disk;
``durability="full"`` fsyncs every commit.
"""

from __future__ import annotations

import functools
import operator
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import nacl.bindings

from .errors import (
    FeedError,
    FeedRestoringError,
    ForkError,
    InvalidPayloadError,
    InvalidUriError,
    MissingMessagesError,
    NotAStoreError,
    NotWriteableError,
    RestoreIncompleteError,
    StoreFullError,
    UnknownFeedError,
    VerificationError,
    short_repr,
)
from .filesystems import require_local_filesystem
from .forks import ForkProofInfo, build_fork_proof, is_succession_violation, verify_fork_proof
from .key_backup import KeyBackup, encode_backup, parse_backup
from .messages import (
    CarriesSuccession,
    ParsedRange,
    build_bodies,
    message_hash,
    parse_range,
    range_rows,
    sign_hash,
    single_body,
    to_wire,
)
from .payloads import MAX_MESSAGE_BYTES, encode_each, encode_json
from .schema import MAX_STORED_NUMBER, MAX_SUBFEED_ROW_ID, SUBFEED_COUNT, key_range, message_key, migrate
from .store_succession import SuccessionMixin, ViolationFound
from .subfeed import Feed, Subfeed
from .uris import normalize_feed_id, parse_feed_uri
from .wal_checkpoints import BackgroundCheckpointer
from .watch import ChangeNotifier, ChangeWatcher

if TYPE_CHECKING:
    import sqlite_utils

    from .audit import StoreReport
    from .range_verifier import PendingCheck
    from .succession import KeyChain

#: ``PRAGMA wal_autocheckpoint`` of a store's connection: the WAL is copied back into the
#: database (and both are fsynced) by the commit that takes it past this many pages. A store
#: object checkpoints in a thread of its own long before that (every ~4096 pages of its writes,
#: :mod:`kachery_feeds.wal_checkpoints`), so that no append or import waits for it; this bound
#: (64 MB of log) is for a log that thread cannot keep short. SQLite's default, 1000 pages,
#: made checkpoints inside commits about 15% of a batch append's CPU time (and a quarter of its
#: wall time at 4000). Durability is the ``synchronous`` setting's, unchanged.
WAL_AUTOCHECKPOINT_PAGES = 16000

#: How long a statement waits for another connection's write lock before it fails.
BUSY_TIMEOUT_SECONDS = 60.0

# Upper bound on what a body adds around payload and metadata (field names, IDs, numbers).
_BODY_OVERHEAD = 256

#: Subfeeds whose counts :meth:`Store.counts` reads in one statement (two parameters each).
COUNTS_PER_STATEMENT = 64
# Its two kinds of column: a subfeed's last key (its row id known), or its row id.
_LAST_KEY_IN_RANGE = "(SELECT max(message_key) FROM messages WHERE message_key>=? AND message_key<?)"
_SUBFEED_ROW_ID = "(SELECT id FROM subfeeds WHERE feed_id=? AND subfeed_hash=?)"

# The append fast path's check, inside its write transaction, when another connection (or
# another write of this store object) committed since this store's last append: the body at
# the number this store appended last, if it is still the subfeed's last message and the feed
# has no key succession (whose records another process may have added); the caller compares
# its hash with the head it left (a body names its feed, subfeed and number). Parameters: that
# message's key, the end of the subfeed's key range (schema.key_range), feed ID.
_APPEND_CHECK = ("SELECT body FROM messages WHERE message_key=?1 "
                 "AND NOT EXISTS (SELECT 1 FROM messages WHERE message_key>?1 AND message_key<?2) "
                 "AND NOT EXISTS (SELECT 1 FROM feed_successions WHERE feed_id=?3)")
# A subfeed's last message; parameters: its key range.
_LAST_MESSAGE = ("SELECT n, body FROM messages WHERE message_key>=? AND message_key<? "
                 "ORDER BY message_key DESC LIMIT 1")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _make_private_dirs(directory: Path) -> None:
    """``mkdir -p`` with mode 0700 for every directory it creates: a store holds private keys."""
    missing = []
    while not directory.exists() and directory.parent != directory:
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass


def _refuse_foreign_database(conn: sqlite3.Connection, path: Path) -> None:
    """Raise :class:`NotAStoreError` for a database that holds tables but no store schema
    version: someone else's (the original kachery's feeds.db has ``feeds`` too). Checked before
    anything is written, so such a file is neither migrated nor switched to WAL."""
    if conn.execute("PRAGMA user_version").fetchone()[0] != 0:
        return
    tables = sorted(r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"))
    if tables:
        raise NotAStoreError(
            f"{path} is an SQLite database but not a kachery_feeds store (it has the tables "
            f"{', '.join(tables[:5])} and no schema version); it was left unchanged")


class _Unverified(Exception):
    """The import helper did not vouch for its part of a range: the transaction is rolled back
    and the range verified in the store's own process (see :meth:`Store._import_range`)."""


class _Fork(Exception):
    """Internal: raised inside a write transaction to roll it back and report a fork."""

    def __init__(self, position: int, local: list[bytes], incoming: list[bytes]) -> None:
        self.position, self.local, self.incoming = position, local, incoming


class _WriteTransaction:
    """What :meth:`Store._write` returns. A class rather than a ``@contextmanager`` generator:
    every append enters one, and a generator's set-up costs about 1-2 µs more."""

    __slots__ = ("_store",)

    def __init__(self, store: Store) -> None:
        self._store = store

    def __enter__(self) -> sqlite3.Connection:
        store = self._store
        store._lock.acquire()
        try:
            store._conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            store._lock.release()
            raise
        store._write_number += 1
        return store._conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        store = self._store
        try:
            if exc_type is None:
                try:
                    store._conn.execute("COMMIT")
                except BaseException:
                    self._roll_back()
                    raise
            else:
                self._roll_back()
                return
        finally:
            store._lock.release()
        store._notifier.notify()

    def _roll_back(self) -> None:
        store = self._store
        if store._conn.in_transaction:
            store._conn.execute("ROLLBACK")
        # A subfeed row created in the rolled-back transaction is gone, and SQLite may give its
        # id to the next subfeed created: forget every cached id (they are re-read).
        store._subfeed_ids.clear()


class Store(SuccessionMixin):
    """A feed store in one SQLite file. Open it with :func:`open_store`.

    Any number of processes and threads may use the same file at once.
    """

    def __init__(self, path: str | os.PathLike, durability: Literal["normal", "full"] = "normal"):
        self.path = Path(path).absolute()
        require_local_filesystem(self.path.parent, f"the feed store {self.path.name}",
                                 "Open the store at a path on a local disk")
        _make_private_dirs(self.path.parent)
        if not self.path.exists():
            # Create it owner-only first: it holds private keys, and SQLite gives the -wal and
            # -shm files the same permissions as the database.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
        )
        try:
            _refuse_foreign_database(self._conn, self.path)
        except BaseException:
            self._conn.close()
            raise
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
        self._conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        self._lock = threading.RLock()
        try:
            migrate(self._conn)
        except BaseException:
            self._conn.close()
            raise
        self._notifier = ChangeNotifier(self.path)
        self._checkpoint_lock = threading.Lock()
        self._checkpoint_conn: sqlite3.Connection | None = None  # see checkpoint_wal
        self._checkpointer = BackgroundCheckpointer(self.checkpoint_wal)
        weakref.finalize(self, self._checkpointer.close, 0)  # a store never closed: end its thread
        self._secret_keys: dict[str, bytes] = {}
        self._subfeed_ids: dict[tuple[str, str], int] = {}
        # (feed ID, subfeed hash) -> (subfeed row id, count, head hash, data_version, write
        # number) as this store's last append there left them: the append fast path (checked
        # inside its transaction). No bodies: memory stays a few dozen bytes per subfeed.
        self._append_heads: dict[tuple[str, str], tuple[int, int, bytes, int, int]] = {}
        # The same for this store's last import there, in a feed without key succession: the
        # one-message import's fast path (:meth:`_import_alone`), a live follower's every push.
        self._import_heads: dict[tuple[str, str], tuple[int, int, bytes, int, int]] = {}
        self._write_number = 0  # counts this store object's write transactions (see _append)
        self._verified_chains = {}  # key successions, see store_succession.py

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        self._checkpointer.close()
        with self._lock:
            self._conn.close()
            self._notifier.close()
        with self._checkpoint_lock:
            if self._checkpoint_conn is not None:
                self._checkpoint_conn.close()
                self._checkpoint_conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<kachery_feeds.Store {self.path}>"

    def checkpoint_wal(self) -> int:
        """Copy what the write-ahead log holds back into the database file now (SQLite's PASSIVE
        checkpoint: it waits for no reader or writer), on a connection of its own, so that it
        may run in a worker thread while this store object appends and imports. Returns how many
        log frames it copied.

        Without it, the commit that takes the log past :data:`WAL_AUTOCHECKPOINT_PAGES` does
        this itself, inside the append or import that made it (milliseconds, fsyncs included),
        in whichever process made it: a long-running process that keeps the log short this way
        (the daemon does, a few seconds after changes) keeps that pause away from every
        writer's appends. The next write after a complete checkpoint starts the log again
        from its beginning."""
        with self._checkpoint_lock:
            if self._checkpoint_conn is None:
                self._checkpoint_conn = sqlite3.connect(
                    self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False)
            _busy, _log, copied = self._checkpoint_conn.execute(
                "PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            return max(copied, 0)

    @functools.cached_property
    def db(self) -> sqlite_utils.Database:
        """A `sqlite-utils <https://sqlite-utils.datasette.io>`_ view of the store's connection,
        for ad-hoc inspection. sqlite-utils (and numpy, which it pulls in) is imported on first
        use only: it costs ~0.1 s and the store itself reads and writes with plain sqlite3."""
        import sqlite_utils

        return sqlite_utils.Database(self._conn)

    def _query(self, sql: str, args: tuple = ()) -> list[dict[str, Any]]:
        """All rows of a small read (a few columns, by name), under the store's lock."""
        with self._lock:
            cursor = self._conn.execute(sql, args)
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def _write(self) -> _WriteTransaction:
        """``with self._write() as c:`` one BEGIN IMMEDIATE transaction under the store's lock,
        committed (then the notify file touched) or rolled back."""
        return _WriteTransaction(self)

    def watcher(self) -> ChangeWatcher:
        """A watcher that wakes when any process commits to this store."""
        return ChangeWatcher(self.path)

    # ------------------------------------------------------------------ feeds
    def create_feed(self, name: str | None = None) -> Feed:
        """Create a feed with a fresh key pair held by this store (optionally with a local name)."""
        if name is not None and (not isinstance(name, str) or not 1 <= len(name) <= 100):
            raise InvalidUriError("a feed name must be a string of 1 to 100 characters")
        public_key, secret_key = nacl.bindings.crypto_sign_keypair()
        feed_id = public_key.hex()
        with self._write() as c:
            if name is not None and c.execute("SELECT 1 FROM feeds WHERE name=?", (name,)).fetchone():
                raise InvalidUriError(f"a feed named {short_repr(name)} already exists in this store")
            c.execute(
                "INSERT INTO feeds(feed_id, private_key, name, created_ms) VALUES (?,?,?,?)",
                (feed_id, secret_key[:32], name, _now_ms()),
            )
        return Feed(self, feed_id)

    def load_feed(self, uri_or_id: str) -> Feed:
        """A feed by ``feed://`` URI, 64-hex ID, or local name. Read-only unless this store holds
        its key. Unknown IDs are fine (messages can be imported); unknown names raise
        :class:`UnknownFeedError`."""
        if not isinstance(uri_or_id, str):
            raise InvalidUriError(
                f"a feed is named by a feed:// URI, a 64-hex ID or a local name (a string), "
                f"not {type(uri_or_id).__name__}")
        if uri_or_id.startswith("feed://"):
            return Feed(self, parse_feed_uri(uri_or_id).feed_id)
        try:
            return Feed(self, normalize_feed_id(uri_or_id))
        except InvalidUriError:
            try:
                with self._lock:
                    row = self._conn.execute(
                        "SELECT feed_id FROM feeds WHERE name=?", (uri_or_id,)).fetchone()
            except UnicodeEncodeError:  # lone surrogates: no feed can be named so
                row = None
            if row is None:
                raise UnknownFeedError(f"no feed named {short_repr(uri_or_id)} in {self.path}") from None
            return Feed(self, row[0])

    def load_subfeed(self, uri: str) -> Subfeed:
        """A subfeed by URI ``feed://<feedId>/<name>`` (read-only unless this store holds the key)."""
        parsed = parse_feed_uri(uri)
        if parsed.subfeed_name is None:
            raise InvalidUriError(f"{short_repr(uri)} names a feed, not a subfeed")
        return Subfeed(self, parsed.feed_id, parsed.subfeed_name)

    def list_feeds(self) -> list[dict[str, Any]]:
        """Feeds known to this store: ``feed_id``, ``name``, ``is_writeable``."""
        return [
            {"feed_id": r["feed_id"], "name": r["name"], "is_writeable": r["private_key"] is not None}
            for r in self._query("SELECT feed_id, name, private_key FROM feeds ORDER BY created_ms")
        ]

    def delete_feed(self, feed_id: str) -> None:
        """Delete a feed, its key, subfeeds and messages from this store."""
        feed_id = normalize_feed_id(feed_id)
        with self._write() as c:
            if not c.execute("SELECT 1 FROM feeds WHERE feed_id=?", (feed_id,)).fetchone():
                raise UnknownFeedError(f"feed {feed_id} is not in this store")
            for (sid,) in c.execute("SELECT id FROM subfeeds WHERE feed_id=?", (feed_id,)).fetchall():
                c.execute("DELETE FROM messages WHERE message_key>=? AND message_key<?", key_range(sid))
            c.execute("DELETE FROM subfeeds WHERE feed_id=?", (feed_id,))
            c.execute("DELETE FROM feed_successions WHERE feed_id=?", (feed_id,))
            c.execute("DELETE FROM feeds WHERE feed_id=?", (feed_id,))
        self._secret_keys.pop(feed_id, None)
        self._verified_chains.pop(feed_id, None)
        for key in [k for k in self._subfeed_ids if k[0] == feed_id]:
            del self._subfeed_ids[key]

    # ------------------------------------------------------------------ several subfeeds at once
    def new_messages(self, watches: Mapping[str, Subfeed | tuple[Subfeed, int]], *,
                     max_num_messages: int = 0, signed: bool = False) -> dict[str, list[Any]]:
        """Without waiting: for each watch ``name: (subfeed, position)`` (or a bare subfeed, at
        its cursor) that has messages at or after its position, ``name: [payloads]`` (at most
        ``max_num_messages`` each, if > 0; ``signed=True`` as in
        :meth:`Subfeed.get_next_messages`). Watches without news are left out."""
        from .subfeed import _decoder

        decode = _decoder(signed)
        found: dict[str, list[Any]] = {}
        for name, (sf, position) in _watch_items(watches):
            end = None if max_num_messages <= 0 else position + max_num_messages
            rows = self._rows(sf.feed_id, sf.subfeed_hash, position, end)
            if rows:
                found[name] = [decode(*row) for row in rows]
        return found

    def watch_for_new_messages(self, watches: Mapping[str, Subfeed | tuple[Subfeed, int]],
                               wait_msec: float = 0, *, max_num_messages: int = 0,
                               signed: bool = False) -> dict[str, list[Any]]:
        """The original's ``watch_for_new_messages``: the new messages of several subfeeds in
        one call. Returns at once if any watch has some, else when one gets some (any process
        appending or importing), else after ``wait_msec``. Every watch name is in the result,
        with ``[]`` when it has nothing new. Cursors are not moved (positions are the caller's).

        Example::

            news = store.watch_for_new_messages({"a": (sf_a, 10), "b": (sf_b, 0)}, wait_msec=5000)
        """
        items = _watch_items(watches)  # checked before any wait
        deadline = time.monotonic() + wait_msec / 1000
        with self.watcher() as watcher:
            while True:
                found = self.new_messages(dict(items), max_num_messages=max_num_messages,
                                          signed=signed)
                remaining = deadline - time.monotonic()
                if found or remaining <= 0:
                    return {name: found.get(name, []) for name, _ in items}
                watcher.wait(remaining)

    def has_private_key(self, feed_id: str) -> bool:
        return self._secret_key_or_none(feed_id) is not None

    def get_fork_proofs(self, feed_id: str | None = None) -> list[bytes]:
        """Fork proofs recorded by this store (all, or for one feed), oldest first."""
        if feed_id:
            rows = self._query("SELECT proof FROM fork_proofs WHERE feed_id = ? ORDER BY id",
                              (normalize_feed_id(feed_id),))
        else:
            rows = self._query("SELECT proof FROM fork_proofs ORDER BY id")
        return [r["proof"] for r in rows]

    def verify(self, subfeed: tuple[str, str] | None = None) -> StoreReport:
        """Re-check every stored chain, signature, count and key (local reads never do), or
        those of one ``(feed ID, subfeed hash)``; report per subfeed what is wrong. Changes
        nothing. See :mod:`kachery_feeds.audit`."""
        from .audit import verify_store

        return verify_store(self, subfeed)

    # ------------------------------------------------------------------ key backups and restore
    # spec/feeds.md §8: a restored key cannot append until the store has caught up.
    def export_key(self, feed_id: str) -> bytes:
        """A backup of the key that signs ``feed_id`` (a secret: see :mod:`kachery_feeds.key_backup`)."""
        feed_id = normalize_feed_id(feed_id)
        with self._lock:
            row = self._conn.execute(
                "SELECT private_key, name FROM feeds WHERE feed_id=?", (feed_id,)).fetchone()
        if row is None or row[0] is None:
            raise NotWriteableError(f"this store ({self.path}) does not hold the key of feed {feed_id}")
        return encode_backup(KeyBackup(feed_id, bytes(row[0]), row[1], tuple(self.key_succession(feed_id))))

    def restore_key(self, backup: bytes | str) -> Feed:
        """Take a feed's key from a backup (:meth:`export_key`). The feed starts *restoring*:
        appends raise :class:`FeedRestoringError` until :meth:`finish_restore`. If this store
        already holds that key, nothing changes (and a restore under way stays under way)."""
        parsed = parse_backup(backup)
        with self._write() as c:
            if parsed.succession:  # the seed is a newer key: keep the records that vouch for it
                self._restore_records(c, parsed.feed_id, parsed.succession, parsed.seed)
            row = c.execute("SELECT private_key FROM feeds WHERE feed_id=?", (parsed.feed_id,)).fetchone()
            if row is not None and row[0] is not None:
                if bytes(row[0]) == parsed.seed:
                    return Feed(self, parsed.feed_id)
                if not self._replaced_key(c, parsed.feed_id, bytes(row[0])):
                    raise VerificationError(f"this store holds another key for feed {parsed.feed_id}")
                self._secret_keys.pop(parsed.feed_id, None)  # a replaced key gives way to the backup's
            name = parsed.name
            if name is not None and c.execute(
                    "SELECT 1 FROM feeds WHERE name=? AND feed_id<>?", (name, parsed.feed_id)).fetchone():
                name = None  # the local name is taken here: the feed is still known by its ID
            c.execute("INSERT OR IGNORE INTO feeds(feed_id, created_ms) VALUES (?, ?)",
                      (parsed.feed_id, _now_ms()))
            c.execute("UPDATE feeds SET private_key=?, name=COALESCE(name, ?), restoring_since_ms=? "
                      "WHERE feed_id=?", (parsed.seed, name, _now_ms(), parsed.feed_id))
        return Feed(self, parsed.feed_id)

    def is_restoring(self, feed_id: str) -> bool:
        """True while ``feed_id``'s key is restored but the store has not caught up (§8)."""
        return self._key_state(normalize_feed_id(feed_id))[1]

    def finish_restore(self, feed_id: str, known_counts: Mapping[str, int], *,
                       unchecked: bool = False) -> None:
        """End the restore of ``feed_id``: ``known_counts`` maps every subfeed hash the network
        is known to hold of the feed to its newest known message count; the store must hold at
        least that many of each, else :class:`RestoreIncompleteError` (nothing changes).
        ``unchecked=True`` ends it without that check (the caller's explicit risk)."""
        feed_id = normalize_feed_id(feed_id)
        with self._write() as c:
            row = c.execute("SELECT private_key FROM feeds WHERE feed_id=?", (feed_id,)).fetchone()
            if row is None or row[0] is None:
                raise NotWriteableError(f"this store ({self.path}) does not hold the key of feed {feed_id}")
            missing: dict[str, tuple[int, int]] = {}
            if not unchecked:
                for sh, known in known_counts.items():
                    local = c.execute(f"SELECT {SUBFEED_COUNT} FROM subfeeds WHERE feed_id=? AND "
                                      "subfeed_hash=?", (feed_id, sh)).fetchone()
                    have = local[0] if local else 0
                    if have < known:
                        missing[sh] = (have, known)
            if missing:
                some = ", ".join(f"{sh[:12]}… {have}/{known}"
                                 for sh, (have, known) in list(missing.items())[:5])
                raise RestoreIncompleteError(
                    f"feed {feed_id} is still restoring: this store lacks messages the network holds "
                    f"({some}); it stays read-only until they arrive", missing)
            c.execute("UPDATE feeds SET restoring_since_ms=NULL WHERE feed_id=?", (feed_id,))

    # ------------------------------------------------------------------ internals
    def _secret_key_or_none(self, feed_id: str) -> bytes | None:
        return self._key_state(feed_id)[0]

    def _key_state(self, feed_id: str) -> tuple[bytes | None, bool]:
        """(secret key or None, restoring). The key is cached only once the feed is not
        restoring: another process may end the restore, and then appends here may go ahead."""
        sk = self._secret_keys.get(feed_id)
        if sk is not None:
            return sk, False
        with self._lock:
            row = self._conn.execute(
                "SELECT private_key, restoring_since_ms FROM feeds WHERE feed_id=?", (feed_id,)
            ).fetchone()
        if row is None or row[0] is None:
            return None, False
        _pk, sk = nacl.bindings.crypto_sign_seed_keypair(row[0])
        if row[1] is not None:
            return sk, True
        self._secret_keys[feed_id] = sk
        return sk, False

    def _subfeed_id(self, feed_id: str, sh: str) -> int | None:
        key = (feed_id, sh)
        sid = self._subfeed_ids.get(key)
        if sid is None:
            with self._lock:
                row = self._conn.execute(
                    "SELECT id FROM subfeeds WHERE feed_id=? AND subfeed_hash=?", key
                ).fetchone()
            if row is None:
                return None
            sid = self._subfeed_ids[key] = row[0]
        return sid

    def _ensure_subfeed(
        self, c: sqlite3.Connection, feed_id: str, sh: str, name_json: str | None
    ) -> tuple[int, int, bytes | None]:
        """Inside a write transaction: (id, count, head hash), creating the rows if needed."""
        sid = self._subfeed_ids.get((feed_id, sh))
        if sid is not None:
            if c.execute("SELECT 1 FROM subfeeds WHERE id=? AND feed_id=? AND subfeed_hash=?",
                         (sid, feed_id, sh)).fetchone() is not None:
                return (sid, *_last_message(c, sid))
            self._subfeed_ids.pop((feed_id, sh), None)  # deleted by another process
        c.execute(
            "INSERT OR IGNORE INTO feeds(feed_id, created_ms) VALUES (?, ?)", (feed_id, _now_ms())
        )
        c.execute(
            "INSERT OR IGNORE INTO subfeeds(feed_id, subfeed_hash, name) VALUES (?,?,?)",
            (feed_id, sh, name_json),
        )
        (sid,) = c.execute(
            "SELECT id FROM subfeeds WHERE feed_id=? AND subfeed_hash=?", (feed_id, sh)
        ).fetchone()
        if not 0 < sid <= MAX_SUBFEED_ROW_ID:  # its messages' keys would not fit (schema.py)
            raise StoreFullError(
                f"this store ({self.path}) cannot hold another subfeed: its subfeed rows are "
                f"numbered up to {MAX_SUBFEED_ROW_ID}; start a new store")
        self._subfeed_ids[(feed_id, sh)] = sid
        return (sid, *_last_message(c, sid))

    def _count(self, feed_id: str, sh: str) -> int:
        sid = self._subfeed_id(feed_id, sh)
        if sid is None:
            return 0
        low, high = key_range(sid)
        with self._lock:
            (last,) = self._conn.execute(
                "SELECT max(message_key) FROM messages WHERE message_key>=? AND message_key<?",
                (low, high)).fetchone()
        return 0 if last is None else last - low + 1

    def counts(self, subfeeds: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """The local message counts of several subfeeds, ``(feed ID, subfeed hash)`` each, read
        in one statement for up to :data:`COUNTS_PER_STATEMENT` of them (each statement one
        snapshot); 0 for a subfeed this store does not hold. What
        :meth:`Subfeed.get_num_local_messages` says of each, for the price of about one of
        them: a daemon reads its provided subfeeds' counts after every commit."""
        keys = list(dict.fromkeys(subfeeds))
        out: dict[tuple[str, str], int] = {}
        for i in range(0, len(keys), COUNTS_PER_STATEMENT):
            # The subfeeds whose row ids are known get their last key, the others their row id
            # (then counted once they exist); known ones first, so that the statement's text
            # depends only on how many of each there are (sqlite3 keeps it compiled).
            chunk = keys[i:i + COUNTS_PER_STATEMENT]
            known = [(key, sid) for key in chunk if (sid := self._subfeed_ids.get(key)) is not None]
            unknown = [key for key in chunk if key not in self._subfeed_ids]
            params: list[Any] = []
            for _key, sid in known:
                params += key_range(sid)
            for key in unknown:
                params += key
            sql = "SELECT " + ",".join([_LAST_KEY_IN_RANGE] * len(known) + [_SUBFEED_ROW_ID] * len(unknown))
            with self._lock:
                values = self._conn.execute(sql, params).fetchone()
            for (key, sid), last in zip(known, values, strict=False):
                out[key] = 0 if last is None else last - message_key(sid, 0) + 1
            for key, sid in zip(unknown, values[len(known):], strict=True):
                out[key] = 0 if sid is None else self._count(*key)  # it exists now: count it
        return out

    def _rows(self, feed_id: str, sh: str, start: int, end: int | None) -> list[tuple]:
        """(n, body, sig) rows for numbers in [start, end)."""
        sid = self._subfeed_id(feed_id, sh)
        if sid is None:
            return []
        with self._lock:
            return self._conn.execute(
                "SELECT n, body, sig FROM messages WHERE message_key>=? AND message_key<? "
                "ORDER BY message_key", key_range(sid, start, end)).fetchall()

    def _signed_rows(self, feed_id: str, sh: str, start: int, end: int | None) -> list[tuple]:
        """Rows [start, end) extended forward to the first signed message at or after end-1."""
        rows = self._rows(feed_id, sh, start, end)
        if rows and rows[-1][2] is None:
            sid = self._subfeed_id(feed_id, sh)
            with self._lock:
                signed = self._conn.execute(
                    "SELECT n FROM messages WHERE message_key>=? AND message_key<? "
                    "AND sig IS NOT NULL ORDER BY message_key LIMIT 1",
                    key_range(sid, rows[-1][0]),
                ).fetchone()
            if signed is not None:  # always found: stored ranges end signed
                rows += self._rows(feed_id, sh, rows[-1][0] + 1, signed[0] + 1)
        return rows

    def _append(
        self,
        feed_id: str,
        sh: str,
        name_json: str | None,
        payloads: list[Any],
        metadata: dict | None,
    ) -> int:
        sk, restoring = self._key_state(feed_id)
        if sk is None:
            raise NotWriteableError(
                f"cannot append to feed {feed_id}: this store ({self.path}) does not hold its "
                "private key (only the feed's owner can append)"
            )
        if restoring:
            raise FeedRestoringError(
                f"cannot append to feed {feed_id} yet: its key was restored from a backup and this "
                "store has not caught up with the newest messages the network holds of it, so an "
                "append now could fork the feed. Run `kachery feed restore --resume "
                f"{feed_id}` with the daemon running (it fetches them from the channels), or, if "
                "no other machine ever wrote to this feed after the backup, `kachery feed restore "
                f"--resume {feed_id} --offline-ok`", feed_id)
        if not payloads:
            raise InvalidPayloadError("append_messages needs at least one message")
        metas = _metadata_per_message(metadata, len(payloads))
        encoded = encode_each(payloads)
        longest_meta = max(len(mj) if mj else 0 for mj in metas) if metadata is not None else 0
        if max(map(len, encoded)) + _BODY_OVERHEAD + longest_meta > MAX_MESSAGE_BYTES:  # then see which
            for pj, mj in zip(encoded, metas, strict=True):
                if len(pj) + _BODY_OVERHEAD + (len(mj) if mj else 0) > MAX_MESSAGE_BYTES:
                    raise InvalidPayloadError(
                        f"message of {len(pj)} bytes is over the {MAX_MESSAGE_BYTES}-byte limit; "
                        "store large data as a file and append its URI"
                    )
        last = self._append_encoded(feed_id, sh, name_json, sk, encoded, metas)
        self._checkpointer.wrote(len(encoded), sum(map(len, encoded)))
        return last

    def _append_encoded(self, feed_id: str, sh: str, name_json: str | None, sk: bytes,
                        encoded: list[bytes], metas: list[bytes | None]) -> int:
        """:meth:`_append` once the payloads are checked and encoded: returns the last number."""
        key = (feed_id, sh)
        cached = self._append_heads.get(key)
        try:
            if cached is not None:
                # Fast path: this store appended here last. Build and sign outside the write
                # lock, against the count and head it left; inside, confirm that nothing
                # changed since (no other append or import, no deletion, no key succession),
                # else the usual path redoes it under the lock. Nothing changed when no other
                # connection committed to the file (data_version, a counter in the shared
                # memory: no page read) and this store's last write was that append; otherwise
                # one query checks the subfeed's end and the feed's successions.
                _sid, count, prev, _version, _write_number = cached
                if count + len(encoded) - 1 > MAX_STORED_NUMBER:
                    raise _store_full(self.path, count + len(encoded) - 1)
                rows, last_hash = build_bodies(feed_id, sh, count, prev, _now_ms(), encoded, metas)
                return self._append_built(key, cached, name_json, sk, encoded, metas, rows,
                                          sign_hash(sk, last_hash), last_hash)
            with self._write() as c:
                return self._append_locked(c, feed_id, sh, name_json, sk, encoded, metas)
        except BaseException:
            self._append_heads.pop(key, None)
            raise

    def _append_one(self, feed_id: str, sh: str, name_json: str | None, payload: Any) -> int:
        """``append_message`` without metadata: what :meth:`_append` does for one payload, with
        none of its lists when this store appended to the subfeed last (the fast path's cached
        head and a cached key, so the feed is not restoring); any other case goes that way."""
        key = (feed_id, sh)
        sk = self._secret_keys.get(feed_id)
        cached = self._append_heads.get(key)
        if sk is None or cached is None:
            return self._append(feed_id, sh, name_json, [payload], None)
        encoded = encode_json(payload)
        if len(encoded) + _BODY_OVERHEAD > MAX_MESSAGE_BYTES:
            return self._append(feed_id, sh, name_json, [payload], None)  # which says why not
        count, prev = cached[1], cached[2]
        try:
            if count > MAX_STORED_NUMBER:
                raise _store_full(self.path, count)
            body = single_body(feed_id, sh, count, prev, _now_ms(), encoded)
            last_hash = message_hash(body)
            last = self._append_built(key, cached, name_json, sk, [encoded], [None], [(count, body)],
                                      sign_hash(sk, last_hash), last_hash)
        except BaseException:
            self._append_heads.pop(key, None)
            raise
        self._checkpointer.wrote(1, len(encoded))
        return last

    def _append_built(self, key: tuple[str, str], cached: tuple[int, int, bytes, int, int],
                      name_json: str | None, sk: bytes, encoded: list[bytes],
                      metas: list[bytes | None], rows: list[tuple[int, bytes]], signature: bytes,
                      last_hash: bytes) -> int:
        """The fast path's write of ``rows``, built and signed against the ``cached`` head of
        subfeed ``key`` outside the write lock: inserted if nothing changed since (else the
        usual path redoes the append under the lock). Returns the last number."""
        sid, count, prev, version, write_number = cached
        n = count + len(rows)
        if n == count + 1 and self._append_alone(key, cached, rows[0][1], signature, last_hash):
            return count
        feed_id = key[0]
        with self._write() as c:
            (now,) = c.execute("PRAGMA data_version").fetchone()
            if (now == version and write_number == self._write_number - 1) or _still_last(
                    c.execute(_APPEND_CHECK, (message_key(sid, count - 1), key_range(sid)[1],
                                              feed_id)).fetchone(), prev):
                _insert_appended(c, sid, rows, signature)
                self._append_heads[key] = (sid, n, last_hash, now, self._write_number)
                return n - 1
            return self._append_locked(c, feed_id, key[1], name_json, sk, encoded, metas)

    def _append_alone(self, key: tuple[str, str], cached: tuple[int, int, bytes, int, int],
                      body: bytes | bytearray, signature: bytes, last_hash: bytes) -> bool:
        """A single append on the fast path, in one statement: an INSERT, its own transaction
        (which takes the write lock when it starts), whose condition is the fast path's "no
        other connection committed since" (``data_version``, read inside it); the caller has
        checked the rest (this store's last write was that append). Returns whether it
        inserted and committed; if not, nothing was written (the caller goes the usual way).
        One statement instead of four (BEGIN IMMEDIATE, PRAGMA data_version, INSERT, COMMIT)."""
        sid, count, _prev, version, write_number = cached
        with self._lock:
            if write_number != self._write_number or self._conn.in_transaction:
                return False
            self._write_number += 1
            statement = _append_statements(sid)[2]
            if self._conn.execute(statement, (count, body, bytearray(signature), version)).rowcount != 1:
                return False
            self._append_heads[key] = (sid, count + 1, last_hash, version, self._write_number)
        self._notifier.notify()
        return True

    def _append_locked(self, c: sqlite3.Connection, feed_id: str, sh: str, name_json: str | None,
                       sk: bytes, encoded: list[bytes], metas: list[bytes | None]) -> int:
        """Inside an append's write transaction: read the subfeed's count and head, build, sign
        and insert; remembers the new head for the next append's fast path."""
        sid, count, prev = self._ensure_subfeed(c, feed_id, sh, name_json)
        if count + len(encoded) - 1 > MAX_STORED_NUMBER:
            raise _store_full(self.path, count + len(encoded) - 1)
        sk, carry = self._succession_for_append(c, feed_id, sid, sk)  # spec/feeds.md §9
        rows, last_hash = build_bodies(feed_id, sh, count, prev, _now_ms(), encoded, metas, carry)
        n = count + len(rows)
        _insert_appended(c, sid, rows, sign_hash(sk, last_hash))
        known = self._verified_chains.get(feed_id)  # as _succession_for_append just read it
        if known is not None and not known[0]:
            (version,) = c.execute("PRAGMA data_version").fetchone()
            self._append_heads[(feed_id, sh)] = (sid, n, last_hash, version, self._write_number)
        else:  # a feed with a key succession always takes this path (the check is here)
            self._append_heads.pop((feed_id, sh), None)
        return n - 1

    def _import(self, feed_id: str, sh: str, name_json: str | None, lines: list[bytes]) -> int:
        if not lines:
            return 0
        if len(lines) == 1 and self._import_alone(feed_id, sh, lines[0]):
            self._checkpointer.wrote(1, len(lines[0]))
            return 1
        imported = self._import_range(feed_id, sh, name_json, lines)
        if imported:
            self._checkpointer.wrote(imported, sum(map(len, lines)))
        return imported

    def _import_range(self, feed_id: str, sh: str, name_json: str | None, lines: list[bytes]) -> int:
        """:meth:`_import` of a range, the usual way: returns how many messages were new.

        A large range of a feed that never changed keys is verified partly in a helper process
        while this one inserts it (:mod:`kachery_feeds.range_verifier`); the transaction commits
        only once the helper's part verified, else the range is verified here and imported."""
        helped = self._parse_import_helped(feed_id, sh, lines)
        if helped is not None:
            parsed, pending = helped
            try:
                return self._insert_range(feed_id, sh, name_json, lines, parsed, None, pending)
            except _Unverified:
                pass  # verified here instead (which names any fault)
            finally:
                pending.abandon()  # no-op once answered
        # One pass when the feed never changed keys: parsed, chained, signatures checked,
        # rows ready to insert (see parse_range); else checked against its key chain (§9).
        parsed, chain = self._parse_import(feed_id, sh, lines)
        return self._insert_range(feed_id, sh, name_json, lines, parsed, chain, None)

    def _parse_import_helped(self, feed_id: str, sh: str, lines: list[bytes]
                             ) -> tuple[ParsedRange, PendingCheck] | None:
        """The first part of a large range sent to the helper, the rest verified here, the rows
        of both ready to insert; None when the helper is not worth it, not available or the
        range is not of the plain kind (the caller verifies it all here)."""
        from . import range_verifier  # here: `import kachery_feeds` need not load it

        if (len(lines) < range_verifier.HELPER_MIN_LINES or not range_verifier.helper_wanted()
                or set(map(type, lines)) != {bytes}):
            return None
        if not all(lines):
            return None  # an empty line: the fault is named the usual way
        cuts = range_verifier.plan(lines)
        if not cuts:
            return None
        with self._lock:
            if self._chain_in(self._conn, feed_id).records:
                return None  # a key succession: checked against its chain (store_succession.py)
        k = cuts[-1]
        # What the helper's part must end with: the hash of its last body, which the rest links to.
        expected = message_hash(lines[k - 1].rpartition(b"\t")[0])
        pending = range_verifier.shared().check(lines, cuts, feed_id, sh, expected)
        if pending is None:
            return None
        try:
            first, previous_hash, rows = range_rows(lines[:k], feed_id, sh)
            if k < len(lines):
                rest = parse_range(lines[k:], feed_id, sh, bytes.fromhex(feed_id), plain=True)
                if rest.previous_hash != expected or rest.first != first + k:
                    raise VerificationError("the range does not link where it was cut")
        except (FeedError, CarriesSuccession, ValueError, TypeError):
            pending.abandon()
            return None  # verified all here: the fault named, or the succession checked
        except BaseException:
            pending.abandon()
            raise
        if k < len(lines):
            return ParsedRange(first, previous_hash, rows + rest.rows, rest.last_hash), pending
        return ParsedRange(first, previous_hash, rows, expected), pending

    def _insert_range(self, feed_id: str, sh: str, name_json: str | None, lines: list[bytes],
                      parsed: ParsedRange, chain: KeyChain | None, pending: PendingCheck | None) -> int:
        """Insert a parsed range (see :meth:`_import_range`); with ``pending``, raise
        :class:`_Unverified` (nothing written, nothing recorded) unless the helper's verdict is
        that its part verified."""
        rows, last_hash = parsed.rows, parsed.last_hash
        if rows[-1][0] > MAX_STORED_NUMBER:
            if pending is not None and not pending.verified():
                raise _Unverified
            raise _store_full(self.path, rows[-1][0])
        try:
            with self._write() as c:
                try:
                    sid, inserted = self._insert_parsed(c, feed_id, sh, name_json, lines, parsed, chain)
                except Exception:
                    # a fork, a gap, a refusal: a verdict on the range only if it verified
                    if pending is not None and not pending.verified():
                        raise _Unverified from None
                    raise
                if pending is not None and not pending.verified():
                    raise _Unverified  # rolled back
                if inserted and chain is None:  # the plain path: the next one-message import may go fast
                    (version,) = c.execute("PRAGMA data_version").fetchone()
                    self._import_heads[(feed_id, sh)] = (sid, rows[-1][0] + 1, last_hash, version,
                                                         self._write_number)
                return inserted
        except ViolationFound as found:
            raise self._report_violation(found, feed_id) from None
        except _Fork as fork:
            proof = build_fork_proof(feed_id, sh, fork.position, fork.local, fork.incoming,
                                     chain.lines() if chain is not None else None)
            with self._write() as c:
                c.execute(
                    "INSERT OR IGNORE INTO fork_proofs(feed_id, subfeed_hash, position, "
                    "proof_sha256, proof, detected_ms) VALUES (?,?,?,?,?,?)",
                    (feed_id, sh, fork.position, message_hash(proof), proof, _now_ms()),
                )
            raise ForkError(
                f"fork detected in feed {feed_id} subfeed {sh} at message {fork.position}: the "
                "owner signed two different histories. Nothing was imported; the proof is "
                "recorded in the store (Store.get_fork_proofs) and attached to this error.",
                proof=proof,
                position=fork.position,
            ) from None

    def _insert_parsed(self, c: sqlite3.Connection, feed_id: str, sh: str, name_json: str | None,
                       lines: list[bytes], parsed: ParsedRange, chain: KeyChain | None) -> tuple[int, int]:
        """Inside the import's transaction: compare the range with what the store holds (a gap,
        a fork, a proven fork refuse it), insert what is new; ``(subfeed row id, how many)``."""
        first, previous_hash, rows, _last_hash = parsed
        if chain is not None:
            self._adopt_chain(c, feed_id, chain)
        sid, count, head = self._ensure_subfeed(c, feed_id, sh, name_json)
        if first > count:
            raise MissingMessagesError(
                f"range starts at message {first} but this store has only {count} "
                f"messages of subfeed {sh}; import from {count} first",
                local_count=count,
            )
        if first > 0:
            local_prev = head if first == count else self._local_hash(c, sid, first - 1)
            if previous_hash != local_prev:
                incoming = [bytes(x) for x in lines]
                raise _Fork(first - 1, self._local_chain(c, sid, first - 1), incoming)
        last = rows[-1][0]
        overlap_end = min(count, last + 1)
        if first < overlap_end:
            local = c.execute(
                "SELECT n, body FROM messages WHERE message_key>=? AND message_key<? "
                "ORDER BY message_key", key_range(sid, first, overlap_end),
            ).fetchall()
            for (n, body), row in zip(local, rows, strict=False):
                # the same body bytes <=> the same hash (an unsigned row holds its line)
                if body != (row[1] if len(row) == 3 else row[1][:-1]):
                    incoming = [bytes(x) for x in lines[n - first :]]
                    raise _Fork(n, self._local_chain(c, sid, n), incoming)
        if overlap_end > last:
            return sid, 0
        new = rows[overlap_end - first :] if overlap_end > first else rows
        forked_at = self._fork_position(c, feed_id, sh)
        if forked_at is not None and last >= forked_at:
            # A proven fork is channel knowledge (spec/witness.md §5): nothing at or
            # past its position is accepted any more, from either branch.
            (proof,) = c.execute(
                "SELECT proof FROM fork_proofs WHERE feed_id=? AND subfeed_hash=? "
                "AND position=? ORDER BY id LIMIT 1", (feed_id, sh, forked_at)).fetchone()
            raise ForkError(
                f"subfeed {sh} of feed {feed_id} forked at message {forked_at}: no "
                "message at or past the fork is accepted (the proof is attached)",
                proof=proof, position=forked_at)
        _insert_rows(c, sid, new)
        return sid, len(new)

    def _import_alone(self, feed_id: str, sh: str, line: bytes) -> bool:
        """Import the one message that follows this store's last import of the subfeed (a live
        push), in one statement, as :meth:`_append_alone` appends: checked against the feed
        ID's key outside the lock, then inserted by an INSERT that is its own transaction and
        inserts only if no other connection committed since that import (``data_version``)
        and this store wrote nothing else since (its write number). Then nothing can have
        changed what the usual path checks inside its transaction: the subfeed's count and
        head, a fork proof, a key succession, a deletion. Returns whether it imported the
        message; if not, nothing was written and the caller goes the usual way, which also
        reports any error (so one that is not the fast path's business is raised there)."""
        key = (feed_id, sh)
        cached = self._import_heads.get(key)
        if cached is None:
            return False
        sid, count, head, version, write_number = cached
        if write_number != self._write_number:
            return False
        try:
            first, previous_hash, rows, last_hash = parse_range(
                [line], feed_id, sh, bytes.fromhex(feed_id), plain=True)
        except (FeedError, CarriesSuccession):  # the usual path says what is wrong, or takes
            return False                           # the succession in
        if first != count or previous_hash != head or len(rows[0]) != 3 or first > MAX_STORED_NUMBER:
            return False
        n, body, signature = rows[0]
        with self._lock:
            if write_number != self._write_number or self._conn.in_transaction:
                return False
            self._write_number += 1
            statement = _append_statements(sid)[2]
            if self._conn.execute(statement, (n, bytearray(body), bytearray(signature),
                                              version)).rowcount != 1:
                return False
            self._import_heads[key] = (sid, n + 1, last_hash, version, self._write_number)
        self._notifier.notify()
        return True

    @staticmethod
    def _fork_position(c: sqlite3.Connection, feed_id: str, sh: str) -> int | None:
        """The first position of a proven fork of the subfeed, or None. Succession violations
        are recorded in the same table but do not count: the new key's branch goes on."""
        for position, proof in c.execute(
                "SELECT position, proof FROM fork_proofs WHERE feed_id=? AND subfeed_hash=? "
                "ORDER BY position, id", (feed_id, sh)):
            if not is_succession_violation(proof):
                return position
        return None

    def record_fork_proof(self, proof: bytes) -> ForkProofInfo:
        """Verify a fork proof found elsewhere (a peer's notice, a witness's refusal) and record
        it like one found on import: from then on the subfeed accepts no message at or past its
        position. Raises VerificationError if it is not a valid proof; recording the same proof
        twice is a no-op. Returns what it proves."""
        info = verify_fork_proof(proof)
        with self._write() as c:
            c.execute(
                "INSERT OR IGNORE INTO fork_proofs(feed_id, subfeed_hash, position, "
                "proof_sha256, proof, detected_ms) VALUES (?,?,?,?,?,?)",
                (info.feed_id, info.subfeed_hash, info.position, message_hash(proof), proof, _now_ms()),
            )
        return info

    @staticmethod
    def _local_hash(c: sqlite3.Connection, sid: int, n: int) -> bytes:
        (body,) = c.execute(
            "SELECT body FROM messages WHERE message_key=?", (message_key(sid, n),)
        ).fetchone()
        return message_hash(body)

    @staticmethod
    def _local_chain(c: sqlite3.Connection, sid: int, start: int) -> list[bytes]:
        """Local wire messages from ``start`` up to the first signed one (a verifiable chain)."""
        chain = []
        for body, sig in c.execute(
            "SELECT body, sig FROM messages WHERE message_key>=? AND message_key<? "
            "ORDER BY message_key", key_range(sid, start)
        ):
            chain.append(to_wire(body, sig))
            if sig is not None:
                break
        return chain


def _store_full(path: Path, number: int) -> StoreFullError:
    return StoreFullError(f"this store ({path}) cannot hold message {number}: a subfeed's messages "
                          f"in a store are numbered up to {MAX_STORED_NUMBER}")


def _still_last(row: tuple | None, head: bytes) -> bool:
    """Whether :data:`_APPEND_CHECK` found the message whose hash is ``head`` still last."""
    return row is not None and type(row[0]) is bytes and message_hash(row[0]) == head


def _last_message(c: sqlite3.Connection, sid: int) -> tuple[int, bytes | None]:
    """(count, head hash) of subfeed row ``sid``: from its last message (schema version 3)."""
    row = c.execute(_LAST_MESSAGE, key_range(sid)).fetchone()
    if row is None:
        return 0, None
    body = row[1]
    if type(body) is not bytes:  # damage (an edit with SQL string functions); the audit says so
        body = body.encode("utf-8", "surrogateescape") if isinstance(body, str) else bytes(body)
    return row[0] + 1, message_hash(body)


def _insert_rows(c: sqlite3.Connection, sid: int,
                 rows: list[tuple[int, bytes] | tuple[int, bytes, bytes]]) -> None:
    """Insert an import's rows of subfeed row ``sid`` as :func:`parse_range` shapes them:
    ``(n, wire line)`` unsigned, whose body is the line but its last byte (the tab);
    ``(n, body, signature)`` signed. Each run of one shape goes to executemany, in order,
    :data:`_BIND_ROWS` rows at a time; the unsigned rows' NULL is in the statement (see
    :func:`_insert_appended`; ``sid`` is this store's own integer key). The runs are found by a
    C-speed search over the rows' lengths.

    The bytes go to sqlite3 as bytearrays, made by C iterators (map, zip: no Python code per
    row): sqlite3 binds a bytearray as it is but looks up an adapter for each bytes parameter,
    which costs more than the copy (~0.35 against ~0.1 µs for a 400-byte body). An unsigned
    line's bytearray is cut before its tab (faster than SQL's substr, ~0.15 µs a row). Each part's
    parameters are made in a list before its executemany starts, not while it steps: ~0.12 µs
    a row less (measured: 100k batch-signed rows in 203 instead of 216 ms, bench/README.md), and
    each part's memory is reused by the next."""
    sql = f"INSERT INTO messages(message_key, body, sig) VALUES ({message_key(int(sid), 0)} + ?,?,"
    unsigned, signed = sql + "NULL)", sql + "?)"
    shapes = bytes(map(len, rows))
    start, end = 0, len(rows)
    while start < end:
        unsigned_run = shapes[start] == 2
        stop = shapes.find(3 if unsigned_run else 2, start)
        stop = end if stop < 0 else stop
        for at in range(start, stop, _BIND_ROWS):
            part = rows[at:min(stop, at + _BIND_ROWS)]
            numbers = map(_first, part)
            if unsigned_run:
                bodies = map(_but_last, map(bytearray, map(_second, part)))  # each line without its tab
                c.executemany(unsigned, list(zip(numbers, bodies, strict=True)))
            else:
                c.executemany(signed, list(zip(numbers, map(bytearray, map(_second, part)),
                                               map(bytearray, map(_third, part)), strict=True)))
        start = stop


#: Rows :func:`_insert_rows` binds per executemany.
_BIND_ROWS = 1024
_first, _second, _third = operator.itemgetter(0), operator.itemgetter(1), operator.itemgetter(2)
_but_last = operator.itemgetter(slice(None, -1))


def _insert_appended(c: sqlite3.Connection, sid: int, rows: list[tuple[int, bytes]],
                     signature: bytes) -> None:
    """Insert one append's ``(n, body)`` rows of subfeed row ``sid``, unsigned but the last.
    ``sid`` is this store's own integer key and the unsigned rows' NULL is written in the
    statement: each parameter that is not an int, float, str or bytearray costs sqlite3 an
    adapter lookup per row (about 0.2 µs for the None of every unsigned row)."""
    unsigned, signed, _alone = _append_statements(sid)
    if len(rows) > 1:
        c.executemany(unsigned, rows[:-1])
    n, body = rows[-1]
    c.execute(signed, (n, body, bytearray(signature)))  # a bytearray: see _insert_rows


@functools.lru_cache(maxsize=256)
def _append_statements(sid: int) -> tuple[str, str, str]:
    """The INSERT statements of an append to subfeed row ``sid``, built once (sqlite3 then finds
    each in its statement cache): :func:`_insert_appended`'s two (unsigned rows, the signed
    last) and :meth:`Store._append_alone`'s, which inserts only if ``data_version`` is still its
    last parameter."""
    base = message_key(int(sid), 0)  # a message's key is base + its number (schema.py)
    sql = f"INSERT INTO messages(message_key, body, sig) VALUES ({base} + ?,?,"
    alone = (f"INSERT INTO messages(message_key, body, sig) SELECT {base} + ?,?,? "
             "WHERE (SELECT data_version FROM pragma_data_version) = ?")
    return sql + "NULL)", sql + "?)", alone


def _metadata_per_message(metadata: Any, count: int) -> list[bytes | None]:
    """Encoded metadata for each of ``count`` messages: one dict for all, or a list of dicts
    (or None) with one entry per message."""
    if metadata is None:
        return [None] * count
    if not isinstance(metadata, list):
        if not isinstance(metadata, dict):
            raise InvalidPayloadError("metadata must be a JSON object (dict)")
        return [encode_json(metadata)] * count  # one dict for all messages: encoded once
    if len(metadata) != count:
        raise InvalidPayloadError(
            f"metadata has {len(metadata)} entries for {count} messages (give one per message)")
    for m in metadata:
        if m is not None and not isinstance(m, dict):
            raise InvalidPayloadError("metadata must be a JSON object (dict)")
    cache: dict[int, bytes] = {}  # a dict shared by several messages is encoded once
    out: list[bytes | None] = []
    for m in metadata:
        if m is None:
            out.append(None)
        else:
            encoded = cache.get(id(m))
            if encoded is None:
                encoded = cache[id(m)] = encode_json(m)
            out.append(encoded)
    return out


def _watch_items(watches: Mapping[str, Any]) -> list[tuple[str, tuple[Subfeed, int]]]:
    """``[(name, (subfeed, position))]`` from a watches mapping, or InvalidUriError."""
    if not isinstance(watches, Mapping):
        raise InvalidUriError("watches map names to subfeeds or (subfeed, position) pairs")
    items = []
    for name, watch in watches.items():
        sf, position = (watch, watch.position) if isinstance(watch, Subfeed) else (
            watch if isinstance(watch, tuple) and len(watch) == 2 else (None, None))
        if not isinstance(sf, Subfeed) or type(position) is not int or position < 0:
            raise InvalidUriError(
                f"watch {short_repr(name)}: expected a subfeed or (subfeed, position >= 0), "
                f"got {short_repr(watch)}")
        items.append((name, (sf, position)))
    return items


def open_store(path: str | os.PathLike, durability: Literal["normal", "full"] = "normal") -> Store:
    """Open (or create) the feed store at ``path``, creating parent folders as needed."""
    return Store(path, durability=durability)


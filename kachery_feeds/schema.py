"""The store's SQLite schema and its migrations.

The schema version is SQLite's ``PRAGMA user_version``. :data:`MIGRATIONS` is the table of
steps: ``MIGRATIONS[i]`` takes a store from version ``i`` to ``i + 1``; a store is brought up to
date inside one write transaction when it is opened, so concurrent openers never see a half-
migrated schema (they wait for it: :func:`migrate`). A store newer than this code is refused
rather than guessed at.

Tables (version 1):

* ``feeds``: one row per feed this store knows; ``private_key`` (the 32-byte Ed25519 seed) is
  present only for feeds this store can sign. ``name`` is an optional local name.
* ``subfeeds``: one row per (feed, subfeed hash) with the message ``count`` and the hash of the
  last message (``head_hash``), so appends never scan.
* ``messages``: the exact body bytes and the signature (NULL inside a batch) per position.
  ``WITHOUT ROWID`` keeps the rows in one B-tree ordered by (subfeed, number): appends go to
  the end of it and range reads are sequential.
* ``fork_proofs``: evidence of forks detected on import (see :mod:`kachery_feeds.forks`).

Version 2 (fork-safe restore, spec/feeds.md §8):

* ``feeds.restoring_since_ms``: set while a feed whose key was restored from a backup has not
  caught up with the network yet; appends are refused until it is cleared.

Version 2 also holds key successions (spec/feeds.md §9):

* ``feed_successions``: the verified succession records of each feed, ``seq`` 1, 2, …; the
  feed's ``private_key`` is then the seed of the newest key.
* ``subfeeds.succession_seq``: how many records the subfeed's own messages have carried, so
  that the next append carries the chain when a newer record exists.

Version 3 (issue 15): ``subfeeds.count`` and ``subfeeds.head_hash`` are dropped. A subfeed's
message count and head are those of its last message in ``messages`` (one seek at the end of
its range of the primary key, :data:`SUBFEED_COUNT`), so an append writes the messages B-tree
only, not a second page per commit. Stores are numbered 0, 1, … without gaps (the audit checks
it), so the count is the last number + 1.

Version 4 (issue 15): ``messages`` is keyed by one integer, ``message_key`` = subfeed row id ×
2^40 + message number (:func:`message_key`), as its rowid (``INTEGER PRIMARY KEY``): the rows
are still in one B-tree ordered by (subfeed, number), but its interior pages hold 8-byte keys
instead of whole rows (``WITHOUT ROWID`` keeps every column of a row in the key, and a message
is ~500 bytes: SQLite's own advice is rows under 1/20 of a page). Measured on the benchmark
machine: a one-transaction insert of 100k messages takes ~18% less CPU, one commit per message
~30% less time. ``subfeed_id`` and ``n`` remain, as virtual generated columns (computed from
the key when read, never stored), so reads and ad-hoc SQL see the same columns; a query that
should seek (rather than scan) states its range on ``message_key``.

The key's split: a message number needs at most 40 bits, because a store cannot hold 2^40
messages (a body is at least ~230 bytes, 2^40 of them ~250 TB, past SQLite's largest database
with this store's 4 KiB pages, 17.6 TB); a subfeed row id gets the 23 bits left below the
sign, up to 8,388,606 (rows are numbered 1, 2, …: the store refuses a subfeed row past that
with :class:`~kachery_feeds.errors.StoreFullError`, as it would a message number past 2^40 - 1).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from .errors import StoreBusyError, StoreVersionError

# The statements are exactly those sqlite-utils generated when it built this schema (so stores
# made before and after read the same in ``sqlite_master``); plain SQL here keeps sqlite-utils
# (and numpy, which it imports: ~0.1 s) out of ``import kachery_feeds`` and of store creation.
_V1_STATEMENTS = (
    'CREATE TABLE "feeds" (\n'
    '   "feed_id" TEXT PRIMARY KEY,\n'
    '   "private_key" BLOB,\n'
    '   "name" TEXT,\n'
    '   "created_ms" INTEGER NOT NULL\n'
    ')',
    'CREATE UNIQUE INDEX "idx_feeds_name"\n    ON "feeds" ("name")',
    'CREATE TABLE "subfeeds" (\n'
    '   "id" INTEGER PRIMARY KEY,\n'
    '   "feed_id" TEXT NOT NULL,\n'
    '   "subfeed_hash" TEXT NOT NULL,\n'
    '   "name" TEXT,\n'  # JSON of the subfeed's name, when known
    '   "count" INTEGER NOT NULL DEFAULT 0,\n'
    '   "head_hash" BLOB\n'
    ')',
    'CREATE UNIQUE INDEX "idx_subfeeds_feed_id_subfeed_hash"\n    ON "subfeeds" ("feed_id", "subfeed_hash")',
    """CREATE TABLE messages (
               subfeed_id INTEGER NOT NULL,
               n INTEGER NOT NULL,
               body BLOB NOT NULL,
               sig BLOB,
               PRIMARY KEY (subfeed_id, n)
           ) WITHOUT ROWID""",
    'CREATE TABLE "fork_proofs" (\n'
    '   "id" INTEGER PRIMARY KEY,\n'
    '   "feed_id" TEXT NOT NULL,\n'
    '   "subfeed_hash" TEXT NOT NULL,\n'
    '   "position" INTEGER NOT NULL,\n'
    '   "proof_sha256" BLOB,\n'
    '   "proof" BLOB NOT NULL,\n'
    '   "detected_ms" INTEGER NOT NULL\n'
    ')',
    'CREATE UNIQUE INDEX "idx_fork_proofs_proof_sha256"\n    ON "fork_proofs" ("proof_sha256")',
)


def _v0_to_v1(conn: sqlite3.Connection) -> None:
    for statement in _V1_STATEMENTS:
        conn.execute(statement)


def _v1_to_v2(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE feeds ADD COLUMN restoring_since_ms INTEGER")
    conn.execute("ALTER TABLE subfeeds ADD COLUMN succession_seq INTEGER NOT NULL DEFAULT 0")
    conn.execute("""CREATE TABLE feed_successions (
                        feed_id TEXT NOT NULL,
                        seq INTEGER NOT NULL,
                        record BLOB NOT NULL,
                        PRIMARY KEY (feed_id, seq)
                    ) WITHOUT ROWID""")


def _v2_to_v3(conn: sqlite3.Connection) -> None:
    # ALTER TABLE ... DROP COLUMN needs SQLite 3.35 (2021); Python 3.11's builds have newer.
    conn.execute("ALTER TABLE subfeeds DROP COLUMN count")
    conn.execute("ALTER TABLE subfeeds DROP COLUMN head_hash")


#: Bits of ``message_key`` that hold the message number (see the module docstring).
NUMBER_BITS = 40
#: The largest message number a store holds.
MAX_STORED_NUMBER = (1 << NUMBER_BITS) - 1
#: The largest subfeed row id whose messages' keys, and the (exclusive) end of their range
#: (:func:`key_range`), fit SQLite's signed 64-bit integers.
MAX_SUBFEED_ROW_ID = (1 << (63 - NUMBER_BITS)) - 2

# Version 4's messages table. Generated columns need SQLite 3.31 (2020).
_V4_MESSAGES = f"""CREATE TABLE messages (
               message_key INTEGER PRIMARY KEY,
               body BLOB NOT NULL,
               sig BLOB,
               subfeed_id INTEGER GENERATED ALWAYS AS (message_key >> {NUMBER_BITS}) VIRTUAL,
               n INTEGER GENERATED ALWAYS AS (message_key & {MAX_STORED_NUMBER}) VIRTUAL
           )"""


def _v3_to_v4(conn: sqlite3.Connection) -> None:
    # The rows are copied in key order (the old primary key's), so the new B-tree is built by
    # appends at its end. A store's rows are all within the key's bounds: its subfeed ids are
    # row ids of a table far smaller than 2^23 rows, and see NUMBER_BITS for the numbers.
    (too_big,) = conn.execute(
        "SELECT count(*) FROM messages WHERE subfeed_id < 1 OR subfeed_id > ? OR n < 0 OR n > ?",
        (MAX_SUBFEED_ROW_ID, MAX_STORED_NUMBER)).fetchone()
    if too_big:
        raise StoreVersionError(
            f"cannot migrate this store to schema version 4: {too_big} of its messages have a "
            "subfeed id or number outside the new key's bounds (a damaged store: run "
            "`kachery fsck` with kachery of the version that made it)")
    conn.execute("ALTER TABLE messages RENAME TO messages_v3")
    conn.execute(_V4_MESSAGES)
    conn.execute(
        f"INSERT INTO messages(message_key, body, sig) SELECT (subfeed_id << {NUMBER_BITS}) + n, "
        "body, sig FROM messages_v3 ORDER BY subfeed_id, n")
    conn.execute("DROP TABLE messages_v3")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v0_to_v1, _v1_to_v2, _v2_to_v3, _v3_to_v4]
SCHEMA_VERSION = len(MIGRATIONS)


#: How long, in all, opening a store that needs converting waits for another process holding
#: its write lock (most likely converting it: one transaction, about 10 s a million messages).
MIGRATION_WAIT_SECONDS = 3600.0


def _refuse_newer(version: int) -> None:
    if version > SCHEMA_VERSION:
        raise StoreVersionError(
            f"this store has schema version {version}, but this kachery_feeds understands "
            f"only up to {SCHEMA_VERSION}; upgrade kachery"
        )


def message_key(subfeed_row_id: int, number: int) -> int:
    """The ``message_key`` of message ``number`` of subfeed row ``subfeed_row_id``."""
    return (subfeed_row_id << NUMBER_BITS) + number


def key_range(subfeed_row_id: int, start: int = 0, end: int | None = None) -> tuple[int, int]:
    """``(low, high)``: the keys of the subfeed row's messages numbered ``start`` ≤ n < ``end``
    (to its last if None) are ``low`` ≤ message_key < ``high``, the form of a range that SQLite
    answers with a seek in the primary key."""
    base = subfeed_row_id << NUMBER_BITS
    return base + start, base + (1 << NUMBER_BITS if end is None else end)


#: The message count of the subfeed row ``subfeeds`` in a query over that table: one seek to the
#: last key of the subfeed's range of the messages table (SQLite answers ``max`` of the rowid
#: over a range of it without a scan).
SUBFEED_COUNT = (f"(SELECT coalesce(max(message_key) - (subfeeds.id << {NUMBER_BITS}) + 1, 0) "
                 f"FROM messages WHERE message_key >= subfeeds.id << {NUMBER_BITS} "
                 f"AND message_key < (subfeeds.id + 1) << {NUMBER_BITS})")


def migrate(conn: sqlite3.Connection, wait_seconds: float | None = None) -> None:
    """Bring the database up to :data:`SCHEMA_VERSION` (no-op when it already is).

    The conversion runs in one write transaction. Another process that opens the store
    meanwhile finds the old version and waits for the write lock; when the connection's busy
    timeout passes first (a large store's conversion takes longer), it looks at the version
    again: converted by then, it is done; else it waits on, up to ``wait_seconds`` in all
    (:data:`MIGRATION_WAIT_SECONDS` by default), then raises :class:`StoreBusyError`."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    deadline = time.monotonic() + (MIGRATION_WAIT_SECONDS if wait_seconds is None else wait_seconds)
    told = False
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")  # waits up to the connection's busy timeout
            break
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", sqlite3.SQLITE_BUSY) != sqlite3.SQLITE_BUSY:
                raise
        version = conn.execute("PRAGMA user_version").fetchone()[0]  # the last committed
        if version >= SCHEMA_VERSION:
            _refuse_newer(version)
            return  # another process converted it meanwhile
        if time.monotonic() >= deadline:
            raise StoreBusyError(
                f"this store needs converting to schema version {SCHEMA_VERSION} (it has "
                f"{version}), and another process has held its write lock for longer than "
                "this one waited: most likely it is converting the store (about 10 s a million "
                "messages). Nothing was changed; open it again once that process is done")
        if not told:
            told = True
            import logging  # here: importing kachery_feeds does not import logging (~4 ms)

            logging.getLogger("kachery.feeds").warning(
                "waiting for another process to finish converting the feed store to schema "
                "version %d (it holds the store's write lock)", SCHEMA_VERSION)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]  # re-read under the lock
        _refuse_newer(version)
        for step in MIGRATIONS[version:]:
            step(conn)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise

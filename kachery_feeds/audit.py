"""Re-verifying a store: every chain, signature and count, as if it had just been received.

Local reads trust the store: messages were verified when they were appended or imported, and are
not checked again when read. Someone who can write the file (or a disk that rots) can change
that. :func:`verify_store` (``Store.verify()``) reads everything back and reports, per subfeed,
what no longer holds; it changes nothing. It checks:

* the SQLite file itself (``PRAGMA quick_check``);
* each feed: a 64-hex ID and, where the store holds its key, that the key is the feed's;
* each subfeed: its name hashes to its hash; its messages are numbered 0, 1, ... without gaps;
  each parses as a message of that feed and subfeed (spec/feeds.md); each links to the hash of
  the one before; each signature verifies under the feed's key; the last one is signed (its
  count and head are those of its last message: schema version 3 records no others);
* messages that belong to no subfeed, and fork proofs that do not verify.

Memory is bounded: messages are read a page at a time.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import nacl.bindings
import nacl.exceptions

from .errors import FeedError
from .forks import verify_fork_proof
from .messages import message_hash, parse_wire, signature_is_valid, to_wire
from .schema import key_range
from .succession import KeyChain
from .uris import subfeed_hash

if TYPE_CHECKING:
    from .store import Store

#: Messages read per query.
PAGE_SIZE = 1000
#: Problems listed per subfeed; the rest are counted.
MAX_PROBLEMS_PER_SUBFEED = 20


@dataclass(frozen=True)
class Problem:
    """Something wrong in the store. ``position`` is the message number, when one is at fault."""

    feed_id: str | None
    subfeed_hash: str | None
    position: int | None
    message: str

    def __str__(self) -> str:
        where = "store" if self.feed_id is None else f"feed {self.feed_id}"
        if self.subfeed_hash is not None:
            where += f" subfeed {self.subfeed_hash}"
        if self.position is not None:
            where += f" message {self.position}"
        return f"{where}: {self.message}"


@dataclass
class StoreReport:
    """What :func:`verify_store` found. ``ok`` when ``problems`` is empty."""

    path: str
    feeds: int = 0
    subfeeds: int = 0
    messages: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def by_subfeed(self) -> dict[tuple[str | None, str | None], list[Problem]]:
        """Problems grouped by (feed ID, subfeed hash); store and feed problems under None."""
        grouped: dict[tuple[str | None, str | None], list[Problem]] = {}
        for p in self.problems:
            grouped.setdefault((p.feed_id, p.subfeed_hash), []).append(p)
        return grouped

    def first_bad_position(self, feed_id: str, subfeed: str) -> int | None:
        """The first message number at fault in a subfeed; None if no message is (which does
        not mean the subfeed is sound: its recorded name may be wrong)."""
        positions = [p.position for p in self.problems if p.position is not None
                     and p.feed_id == feed_id and p.subfeed_hash == subfeed]
        return min(positions) if positions else None

    def to_json(self) -> dict:
        return {"path": self.path, "ok": self.ok, "feeds": self.feeds, "subfeeds": self.subfeeds,
                "messages": self.messages,
                "problems": [{"feed_id": p.feed_id, "subfeed_hash": p.subfeed_hash,
                              "position": p.position, "message": p.message}
                             for p in self.problems]}


def verify_store(store: Store, subfeed: tuple[str, str] | None = None) -> StoreReport:
    """Re-check everything in ``store`` (see the module docstring), or only ``subfeed``
    (feed ID, subfeed hash); change nothing."""
    report = StoreReport(str(store.path))
    conn = sqlite3.connect(store.path, timeout=60.0, isolation_level=None)
    try:
        conn.execute("PRAGMA query_only = 1")  # an audit changes nothing
        conn.execute("BEGIN")  # one snapshot: appends by other processes do not show up midway
        _check_database(conn, report)
        keys = _check_feeds(conn, report)
        for sid, feed_id, sh, name in conn.execute(
                "SELECT id, feed_id, subfeed_hash, name FROM subfeeds ORDER BY id").fetchall():
            if subfeed is None or subfeed == (feed_id, sh):
                report.subfeeds += 1
                _check_subfeed(conn, report, keys, sid, feed_id, sh, name)
        if subfeed is not None:
            report.problems = [p for p in report.problems if p.feed_id in (None, subfeed[0])]
            return report
        orphans = conn.execute(
            "SELECT subfeed_id, count(*) FROM messages WHERE subfeed_id NOT IN "
            "(SELECT id FROM subfeeds) GROUP BY subfeed_id").fetchall()
        for sid, n in orphans:
            report.problems.append(Problem(None, None, None,
                                           f"{n} messages belong to no subfeed (subfeed id {sid})"))
        _check_fork_proofs(conn, report)
    finally:
        conn.close()
    return report


def _check_database(conn: sqlite3.Connection, report: StoreReport) -> None:
    result = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
    if result != ["ok"]:
        report.problems.append(Problem(None, None, None, "SQLite: " + "; ".join(result[:5])))


def _check_feeds(conn: sqlite3.Connection, report: StoreReport) -> dict[str, bytes | KeyChain | None]:
    """Each feed's public key, or its key chain if it changed keys (None if its ID is malformed),
    checking held private keys."""
    keys: dict[str, bytes | KeyChain | None] = {}
    for feed_id, private_key in conn.execute("SELECT feed_id, private_key FROM feeds"):
        report.feeds += 1
        try:
            public = bytes.fromhex(feed_id) if isinstance(feed_id, str) else b""
        except ValueError:
            public = b""
        if len(public) != 32 or public.hex() != feed_id:
            report.problems.append(Problem(str(feed_id), None, None, "malformed feed ID"))
            keys[feed_id] = None
            continue
        keys[feed_id] = public
        held_may_be = {public}
        records = [_blob(r[0]) or b"" for r in conn.execute(
            "SELECT record FROM feed_successions WHERE feed_id=? ORDER BY seq", (feed_id,))]
        if records:  # spec/feeds.md §9: signatures are checked against the key chain
            try:
                chain = KeyChain.verify(feed_id, records)
                keys[feed_id], public = chain, chain.current_key
                # A store that learned the succession may still hold a replaced key (it then
                # refuses to append): that is the feed's key history, not damage.
                held_may_be = {bytes.fromhex(feed_id)} | {r.key for r in chain.records}
            except FeedError as exc:
                report.problems.append(Problem(feed_id, None, None, f"its key succession is invalid: {exc}"))
        if private_key is not None:
            try:
                derived, _ = nacl.bindings.crypto_sign_seed_keypair(bytes(private_key))
            except (nacl.exceptions.ValueError, nacl.exceptions.TypeError, TypeError):
                derived = None
            if derived not in held_may_be:
                report.problems.append(Problem(feed_id, None, None,
                                               "the private key stored for this feed is not its key"))
    return keys


def _check_subfeed(conn: sqlite3.Connection, report: StoreReport, keys: dict[str, bytes | KeyChain | None],
                   sid: int, feed_id: str, sh: str, name: str | None) -> None:
    problems: list[Problem] = []

    def problem(position: int | None, message: str) -> None:
        problems.append(Problem(feed_id, sh, position, message))

    if feed_id not in keys:
        problem(None, "its feed is not in the feeds table")
        public = None
    else:
        public = keys[feed_id]
    if name is not None:
        try:
            if subfeed_hash(json.loads(name)) != sh:
                problem(None, f"its name {name[:80]!r} does not hash to its subfeed hash")
        except (ValueError, FeedError):
            problem(None, f"its recorded name is not a valid subfeed name: {name[:80]!r}")
    expected = 0
    prev_hash: bytes | None = None
    last_signed = True
    while True:
        rows = conn.execute(
            "SELECT n, body, sig FROM messages WHERE message_key>=? AND message_key<? "
            "ORDER BY message_key LIMIT ?", (*key_range(sid, expected), PAGE_SIZE)).fetchall()
        if not rows:
            break
        for n, body, sig in rows:
            report.messages += 1
            if n != expected:
                problem(expected, f"messages {expected}-{n - 1} are missing")
            expected = n + 1
            body_bytes, sig_bytes = _blob(body), _blob(sig)
            if body_bytes is None or (sig is not None and sig_bytes is None):
                problem(n, f"its body or signature is stored as {type(body).__name__}, not bytes")
            try:
                number, previous, h, _body, signature = parse_wire(
                    to_wire(body_bytes or b"", sig_bytes), feed_id, sh)
            except FeedError as exc:
                problem(n, f"not a valid message: {exc}")
                prev_hash, last_signed = message_hash(body_bytes or b""), sig is not None
                continue
            if number != n:
                problem(n, f"its body says it is message {number}")
            if n > 0 and prev_hash is not None and previous != prev_hash:
                problem(n - 1, f"messages {n - 1} and {n} do not link (hash chain broken: one of "
                               "them was changed)")
            key = public.key_for(sh, n) if isinstance(public, KeyChain) else public
            if signature is not None and key is not None and not signature_is_valid(
                    key, h, signature):
                problem(n, "bad signature")
            prev_hash, last_signed = h, signature is not None
    if expected and not last_signed:
        problem(expected - 1, "the last message is not signed")
    report.problems.extend(problems[:MAX_PROBLEMS_PER_SUBFEED])
    if len(problems) > MAX_PROBLEMS_PER_SUBFEED:
        report.problems.append(Problem(feed_id, sh, None,
                                       f"... and {len(problems) - MAX_PROBLEMS_PER_SUBFEED} more"))


def _blob(value: object) -> bytes | None:
    """A column as bytes: an edit with SQL string functions turns a BLOB into TEXT."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return None


def _check_fork_proofs(conn: sqlite3.Connection, report: StoreReport) -> None:
    for rowid, feed_id, sh, position, proof in conn.execute(
            "SELECT id, feed_id, subfeed_hash, position, proof FROM fork_proofs"):
        try:
            info = verify_fork_proof(_blob(proof) or b"")
        except FeedError as exc:
            report.problems.append(Problem(feed_id, sh, None, f"fork proof {rowid} is invalid: {exc}"))
            continue
        if (info.feed_id, info.subfeed_hash, info.position) != (feed_id, sh, position):
            report.problems.append(Problem(feed_id, sh, None,
                                           f"fork proof {rowid} proves a fork elsewhere"))


def cut_subfeed_for_repair(store: Store, feed_id: str, sh: str, first_bad: int | None) -> int:
    """Repair's first step (not an audit: this changes the store): drop a subfeed's messages
    from ``first_bad`` on, and back to the last signed message before it (a stored range must end
    signed; its count and head follow from what is left), and forget a name that does not hash
    to it. ``first_bad=None`` keeps every stored message (only the records were off).
    Returns how many messages remain; the rest is to be fetched again from elsewhere."""
    with store._write() as c:
        row = c.execute("SELECT id, name FROM subfeeds WHERE feed_id=? AND subfeed_hash=?",
                        (feed_id, sh)).fetchone()
        if row is None:
            return 0
        sid, name = row
        low, high = key_range(sid)
        if first_bad is None:
            (last,) = c.execute("SELECT max(message_key) FROM messages WHERE message_key>=? AND "
                                "message_key<?", (low, high)).fetchone()
            first_bad = 0 if last is None else last - low + 1
        (last_signed,) = c.execute(
            "SELECT n FROM messages WHERE message_key>=? AND message_key<? AND sig IS NOT NULL "
            "ORDER BY message_key DESC LIMIT 1", key_range(sid, 0, first_bad)).fetchone() or (None,)
        keep = 0 if last_signed is None else last_signed + 1
        c.execute("DELETE FROM messages WHERE message_key>=? AND message_key<?", key_range(sid, keep))
        try:
            name_ok = name is None or subfeed_hash(json.loads(name)) == sh
        except (ValueError, FeedError):
            name_ok = False
        if not name_ok:
            c.execute("UPDATE subfeeds SET name=NULL WHERE id=?", (sid,))
    store._subfeed_ids.pop((feed_id, sh), None)
    return keep

"""The store's side of key succession (spec/feeds.md §9), kept apart from the append and import
hot paths in :mod:`kachery_feeds.store`, which call in here only for feeds that changed keys.

* Owners: :meth:`SuccessionMixin.rotate_key`, :meth:`SuccessionMixin.set_recovery_key` and
  :meth:`SuccessionMixin.recover_key` add a record (one write transaction each) and switch the
  held seed to the new key; the next append to each subfeed carries the chain.
* Readers: imports verify records carried by messages, keep them (``feed_successions``), check
  every signature against :meth:`KeyChain.key_for`, and report a superseded key's message as a
  succession violation (a :class:`~kachery_feeds.ForkError` with a portable proof).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from typing import TYPE_CHECKING

import nacl.bindings
import orjson

from .errors import ForkError, NotWriteableError, VerificationError
from .messages import (
    CarriesSuccession,
    ParsedRange,
    check_chain,
    message_hash,
    parse_range,
    parse_wire,
    signature_is_valid,
    to_wire,
)
from .schema import SUBFEED_COUNT, key_range, message_key
from .succession import (
    KeyChain,
    Violation,
    build_record,
    build_violation_proof,
    carried_chains,
    check_chain_with_keys,
    merge,
    public_key_of,
)
from .uris import normalize_feed_id

if TYPE_CHECKING:
    from contextlib import AbstractContextManager
    from pathlib import Path

_KEEP = object()


class ViolationFound(Exception):
    """Internal: raised inside a write transaction (rolling it back) when stored or incoming
    messages break a succession; the caller records the proof and raises ForkError."""

    def __init__(self, subfeed_hash: str, position: int, lines: list[bytes], chain: KeyChain) -> None:
        self.subfeed_hash, self.position, self.lines, self.chain = subfeed_hash, position, lines, chain


class SuccessionMixin:
    """Key succession methods of :class:`~kachery_feeds.Store` (see the module docstring)."""

    path: Path
    _conn: sqlite3.Connection
    _lock: threading.RLock
    _secret_keys: dict[str, bytes]
    _verified_chains: dict[str, tuple[tuple[bytes, ...], KeyChain]]

    if TYPE_CHECKING:
        def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...

    # ------------------------------------------------------------------ public
    def key_succession(self, feed_id: str) -> list[bytes]:
        """The feed's succession records (wire lines, oldest first); empty if it never changed keys."""
        feed_id = normalize_feed_id(feed_id)
        with self._lock:
            return [_as_bytes(r[0]) for r in self._conn.execute(
                "SELECT record FROM feed_successions WHERE feed_id=? ORDER BY seq", (feed_id,))]

    def current_key(self, feed_id: str) -> bytes:
        """The public key that signs the feed's new messages (its ID until a succession)."""
        feed_id = normalize_feed_id(feed_id)
        return KeyChain.verify(feed_id, self.key_succession(feed_id)).current_key

    def rotate_key(self, feed_id: str, *, new_seed: bytes | None = None,
                   recovery_key: bytes | object | None = _KEEP) -> bytes:
        """Hand the feed to a new key (``new_seed``, or a fresh one), signed by the key this store
        holds; ``recovery_key`` (a public key, or None for none) is committed for the new key
        (default: the one committed before, if any). Returns the record."""
        return self._add_record(feed_id, new_seed=new_seed or _fresh_seed(), recovery_key=recovery_key,
                                recovery_seed=None)

    def set_recovery_key(self, feed_id: str, recovery_key: bytes) -> bytes:
        """Commit ``recovery_key`` (32-byte public key): it may later sign a succession in place
        of the current key (:meth:`recover_key`), e.g. when that key is lost. Returns the record."""
        if type(recovery_key) is not bytes or len(recovery_key) != 32:
            raise VerificationError("a recovery key is a 32-byte Ed25519 public key")
        return self._add_record(feed_id, new_seed=None, recovery_key=recovery_key, recovery_seed=None)

    def recover_key(self, feed_id: str, recovery_seed: bytes, *, new_seed: bytes | None = None) -> bytes:
        """Hand the feed to a new key with the committed recovery key (its 32-byte seed) instead
        of the current key; this store then holds the new key. The heads recorded are this
        store's: it should have caught up with the feed first. Returns the record."""
        return self._add_record(feed_id, new_seed=new_seed or _fresh_seed(), recovery_key=_KEEP,
                                recovery_seed=recovery_seed)

    # ------------------------------------------------------------------ writing records
    def _add_record(self, feed_id: str, *, new_seed: bytes | None, recovery_key: bytes | object | None,
                    recovery_seed: bytes | None) -> bytes:
        feed_id = normalize_feed_id(feed_id)
        with self._write() as c:
            row = c.execute("SELECT private_key, restoring_since_ms FROM feeds WHERE feed_id=?",
                            (feed_id,)).fetchone()
            held = None if row is None or row[0] is None else bytes(row[0])
            if row is not None and row[1] is not None:
                raise NotWriteableError(f"feed {feed_id} is restoring: finish the restore first "
                                        "(`kachery feed restore --resume`)")
            chain = self._chain_in(c, feed_id)
            if recovery_seed is not None:
                if chain.current_recovery is None:
                    raise NotWriteableError(
                        f"this store knows of no recovery key committed for feed {feed_id}: follow the "
                        "feed first (the commitment travels with its messages)")
                if public_key_of(recovery_seed) != chain.current_recovery:
                    raise NotWriteableError(f"that is not the recovery key committed for feed {feed_id}")
                signer, by = recovery_seed, "recovery"
            else:
                if held is None or public_key_of(held) != chain.current_key:
                    raise NotWriteableError(f"this store ({self.path}) does not hold the current key of "
                                            f"feed {feed_id}")
                signer, by = held, "key"
            key = public_key_of(new_seed) if new_seed is not None else chain.current_key
            recovery = chain.current_recovery if recovery_key is _KEEP else recovery_key
            heads: dict[str, tuple[int, bytes]] = {}
            if key != chain.current_key:
                for sid, sh in c.execute("SELECT id, subfeed_hash FROM subfeeds WHERE feed_id=?",
                                         (feed_id,)).fetchall():
                    last = c.execute("SELECT n, body FROM messages WHERE message_key>=? AND "
                                     "message_key<? ORDER BY message_key DESC LIMIT 1",
                                     key_range(sid)).fetchone()
                    if last is not None:
                        heads[sh] = (last[0] + 1, message_hash(last[1]))
            last = chain.records[-1] if chain.records else None
            line = build_record(feed_id, len(chain.records) + 1, last.body_hash if last else None, key,
                                recovery, by, heads, time.time_ns() // 1_000_000, signer)  # type: ignore[arg-type]
            KeyChain.verify(feed_id, chain.lines() + [line])  # what we write, readers accept
            c.execute("INSERT INTO feed_successions(feed_id, seq, record) VALUES (?,?,?)",
                      (feed_id, len(chain.records) + 1, line))
            if new_seed is not None:
                c.execute("INSERT OR IGNORE INTO feeds(feed_id, created_ms) VALUES (?, ?)",
                          (feed_id, time.time_ns() // 1_000_000))
                c.execute("UPDATE feeds SET private_key=? WHERE feed_id=?", (new_seed, feed_id))
        self._secret_keys.pop(feed_id, None)
        return line

    def _restore_records(self, c: sqlite3.Connection, feed_id: str, lines: tuple[bytes, ...],
                         seed: bytes) -> None:
        """Inside a restore's transaction: keep a backup's records (the seed must be the newest key)."""
        chain = merge(self._chain_in(c, feed_id), KeyChain.verify(feed_id, lines))
        if public_key_of(seed) != chain.current_key:
            raise VerificationError("this key backup's seed is not the newest key of its feed")
        self._store_chain(c, feed_id, chain)

    def _replaced_key(self, c: sqlite3.Connection, feed_id: str, seed: bytes) -> bool:
        """True if ``seed`` is the seed of a key the feed's succession has replaced."""
        chain = self._chain_in(c, feed_id)
        replaced = [bytes.fromhex(feed_id)] + [r.key for r in chain.records]
        return public_key_of(seed) in replaced and public_key_of(seed) != chain.current_key

    # ------------------------------------------------------------------ appending
    def _chain_in(self, c: sqlite3.Connection, feed_id: str) -> KeyChain:
        lines = tuple(_as_bytes(r[0]) for r in c.execute(
            "SELECT record FROM feed_successions WHERE feed_id=? ORDER BY seq", (feed_id,)))
        cache = self._verified_chains
        hit = cache.get(feed_id)
        if hit is not None and hit[0] == lines:
            return hit[1]
        chain = KeyChain.verify(feed_id, lines)  # the store is trusted, but this is cheap and rare
        cache[feed_id] = (lines, chain)
        return chain

    def _succession_for_append(self, c: sqlite3.Connection, feed_id: str, sid: int,
                               secret_key: bytes) -> tuple[bytes, bytes | None]:
        """Inside an append's transaction: (secret key to sign with, the ``succession`` JSON the
        first message must carry, or None). Refuses a key that a succession replaced."""
        chain = self._chain_in(c, feed_id)
        if not chain.records:
            return secret_key, None
        if secret_key[32:] != chain.current_key:  # another process rotated: reread the seed
            row = c.execute("SELECT private_key FROM feeds WHERE feed_id=?", (feed_id,)).fetchone()
            _pk, secret_key = nacl.bindings.crypto_sign_seed_keypair(bytes(row[0]))
            self._secret_keys.pop(feed_id, None)
            if secret_key[32:] != chain.current_key:
                raise NotWriteableError(
                    f"the key this store holds for feed {feed_id} was replaced by a key succession "
                    f"(record {len(chain.records)}): it can no longer append. Restore a backup of the "
                    "new key (`kachery feed restore`)")
        (carried,) = c.execute("SELECT succession_seq FROM subfeeds WHERE id=?", (sid,)).fetchone()
        if carried >= len(chain.records):
            return secret_key, None
        c.execute("UPDATE subfeeds SET succession_seq=? WHERE id=?", (len(chain.records), sid))
        return secret_key, orjson.dumps([x.decode("utf-8") for x in chain.lines()])

    # ------------------------------------------------------------------ importing
    def _parse_import(self, feed_id: str, subfeed_hash: str, lines: list[bytes]
                      ) -> tuple[ParsedRange, KeyChain | None]:
        """Parse and verify a range for import, outside any transaction. A feed that never
        changed keys (none stored, none carried) takes :func:`parse_range`'s one pass against
        the feed ID's key; otherwise each message is checked against the key that governs its
        position (a violation is recorded and raised as ForkError). Returns the range and the
        chain it was checked against (None: the plain path)."""
        with self._lock:
            stored = self._chain_in(self._conn, feed_id)
        if not stored.records:
            try:  # raises CarriesSuccession, before checking any signature, if a line carries records
                return parse_range(lines, feed_id, subfeed_hash, bytes.fromhex(feed_id), plain=True), None
            except CarriesSuccession:
                pass
        msgs = [parse_wire(line, feed_id, subfeed_hash) for line in lines]
        chain = self._succession_for_import(feed_id, msgs)
        if chain is None:
            check_chain(msgs, bytes.fromhex(feed_id))
        else:
            self._check_import(msgs, chain, feed_id, subfeed_hash)
        rows = [(m[0], m[3] + b"\t") if m[4] is None else (m[0], m[3], m[4]) for m in msgs]
        return ParsedRange(msgs[0][0], msgs[0][1], rows, msgs[-1][2]), chain

    def _succession_for_import(self, feed_id: str, msgs: list) -> KeyChain | None:
        """The key chain an imported range is checked against: the stored one merged with any the
        range carries; None when the feed has none (the plain, fast path)."""
        carried = carried_chains([m[3] for m in msgs])
        with self._lock:
            stored = self._chain_in(self._conn, feed_id)
        if not carried and not stored.records:
            return None
        chain = stored
        for lines in dict.fromkeys(tuple(x) for x in carried):  # each distinct chain verified once
            if chain.lines()[: len(lines)] == list(lines):
                continue  # already known (and verified)
            chain = merge(chain, KeyChain.verify(feed_id, lines))
        return chain

    def _check_import(self, msgs: list, chain: KeyChain, feed_id: str, subfeed_hash: str) -> None:
        """Check a range against the chain, outside any transaction; a violation is recorded and
        raised as ForkError."""
        violation: Violation | None = check_chain_with_keys(msgs, chain, subfeed_hash)
        if violation is not None:
            line = next(to_wire(m[3], m[4]) for m in msgs if m[0] == violation.position)
            raise self._report_violation(ViolationFound(subfeed_hash, violation.position, [line], chain),
                                         feed_id)

    def _adopt_chain(self, c: sqlite3.Connection, feed_id: str, chain: KeyChain) -> None:
        """Inside an import's transaction: keep records this store did not have, after checking
        every stored subfeed of the feed against them (raises ViolationFound)."""
        stored = self._chain_in(c, feed_id)
        chain = merge(stored, chain)
        if len(chain.records) == len(stored.records):
            return
        subfeeds = c.execute(f"SELECT * FROM (SELECT id, subfeed_hash, {SUBFEED_COUNT} AS count FROM "
                             "subfeeds WHERE feed_id=?) WHERE count > 0", (feed_id,)).fetchall()
        for sid, sh, count in subfeeds:
            for position, pinned_hash in chain.pinned(sh):
                if position < count and message_hash_at(c, sid, position) != pinned_hash:
                    raise VerificationError(
                        f"the key succession of feed {feed_id} pins another message {position} of subfeed "
                        f"{sh} than this store holds: the old key signed two histories")
            for boundary in sorted(set(chain.boundaries(sh))):
                row = c.execute("SELECT n, body, sig FROM messages WHERE message_key>=? AND "
                                "message_key<? AND sig IS NOT NULL ORDER BY message_key LIMIT 1",
                                key_range(sid, boundary)).fetchone()
                if row is None:
                    continue
                n, body, sig = row
                h = message_hash(bytes(body))
                if signature_is_valid(chain.key_for(sh, n), h, bytes(sig)):
                    continue
                if any(signature_is_valid(k, h, bytes(sig)) for k in chain.superseded_before(sh, n)):
                    raise ViolationFound(sh, n, [to_wire(bytes(body), bytes(sig))], chain)
        self._store_chain(c, feed_id, chain)

    def _store_chain(self, c: sqlite3.Connection, feed_id: str, chain: KeyChain) -> None:
        c.executemany("INSERT OR IGNORE INTO feed_successions(feed_id, seq, record) VALUES (?,?,?)",
                      [(feed_id, r.seq, r.line) for r in chain.records])

    def _report_violation(self, found: ViolationFound, feed_id: str) -> ForkError:
        """Record a violation proof (like a fork proof) and return the ForkError to raise."""
        proof = build_violation_proof(feed_id, found.subfeed_hash, found.position, found.chain, found.lines)
        with self._write() as c:
            c.execute("INSERT OR IGNORE INTO fork_proofs(feed_id, subfeed_hash, position, proof_sha256, "
                      "proof, detected_ms) VALUES (?,?,?,?,?,?)",
                      (feed_id, found.subfeed_hash, found.position, hashlib.sha256(proof).digest(), proof,
                       time.time_ns() // 1_000_000))
        return ForkError(
            f"fork detected in feed {feed_id} subfeed {found.subfeed_hash} at message {found.position}: "
            "it is signed by a key that a key succession had already replaced there (a compromised or "
            "leaked old key?). Nothing was imported; the proof is recorded (Store.get_fork_proofs).",
            proof=proof, position=found.position)


def message_hash_at(c: sqlite3.Connection, sid: int, n: int) -> bytes:
    (body,) = c.execute("SELECT body FROM messages WHERE message_key=?", (message_key(sid, n),)).fetchone()
    return message_hash(bytes(body))


def _as_bytes(value: object) -> bytes:
    """A BLOB column as bytes (an edit with SQL string functions turns it into TEXT)."""
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)  # type: ignore[arg-type]


def _fresh_seed() -> bytes:
    return os.urandom(32)

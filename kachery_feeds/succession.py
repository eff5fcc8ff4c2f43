"""Key succession (spec/feeds.md §9): handing a feed to a new key while its ID and URIs stay.

Theory of operation
-------------------
A feed's ID is its first key ``K0``. A *succession record* ``i`` (``seq`` 1, 2, …), signed by the
key ``K(i-1)`` (or by the recovery key that an earlier record committed to), names the feed's
next key ``Ki``, optionally a recovery key ``Qi`` that may sign record ``i+1`` instead of
``Ki``, and — when the key changes — the *heads* of every subfeed at that moment
(``{subfeed hash: (count, hash of message count-1)}``). The records form a chain (each names the
hash of the one before), verified from ``K0`` alone: :class:`KeyChain`.

The heads are what makes a compromised old key harmless: message ``n`` of subfeed ``S`` must be
signed by the key of the newest key-changing record whose head of ``S`` is at most ``n``
(:meth:`KeyChain.key_for`; a subfeed a record does not list begins under that record's key). A
message the old key signs past its boundary is refused and reported with a portable
*succession violation* proof (:func:`build_violation_proof`, :func:`verify_violation_proof`).

Records travel inside the subfeeds: the first message appended to a subfeed after a record was
made carries the whole chain in its body's ``succession`` field (spec/feeds.md §2, §9), so
followers, buckets and pub-sub need nothing new. A reader verifies the carried chain, keeps it,
and from then on checks every subfeed of the feed against it.

Wire form of a record (like a message line): ``body || TAB || signature (128 hex)`` with the
signature ``Ed25519(signer, "kachery-feed-succession-v1" || 0x00 || SHA-256(body))``.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from typing import NamedTuple

import nacl.bindings
import nacl.exceptions
import orjson

from .errors import VerificationError, short_repr
from .jsontext import MAX_SAFE_INTEGER, JsonTextError
from .jsontext import loads as loads_json
from .messages import ParsedMessage, check_links, parse_message, signature_is_valid

#: Prefix of every signed record hash: a succession signature can never pass for a message's.
SUCCESSION_CONTEXT = b"kachery-feed-succession-v1\x00"
RECORD_TYPE = "kachery-feed-succession"
VIOLATION_TYPE = "kachery-succession-violation"
_KEYS = frozenset({"type", "v", "feed", "seq", "prev", "key", "recovery", "by", "heads", "ts"})
_VIOLATION_KEYS = frozenset({"type", "v", "feed", "subfeed", "position", "succession", "chain"})
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX40 = re.compile(r"[0-9a-f]{40}")
#: Records per feed a reader accepts (each key change adds one; generous, but bounded).
MAX_RECORDS = 1000


class SuccessionRecord(NamedTuple):
    """One parsed record. ``heads`` maps subfeed hashes to ``(count, hash of message count-1)``."""

    line: bytes
    body_hash: bytes
    seq: int
    prev: bytes | None
    key: bytes
    recovery: bytes | None
    by: str
    heads: dict[str, tuple[int, bytes]]
    ts: int


def _sign(secret_key: bytes, body_hash: bytes) -> bytes:
    return nacl.bindings.crypto_sign(SUCCESSION_CONTEXT + body_hash, secret_key)[:64]


def _valid(public_key: bytes, body_hash: bytes, signature: bytes) -> bool:
    try:
        nacl.bindings.crypto_sign_open(signature + SUCCESSION_CONTEXT + body_hash, public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        return False
    return True


def public_key_of(seed: bytes) -> bytes:
    """The Ed25519 public key of a 32-byte seed."""
    return nacl.bindings.crypto_sign_seed_keypair(seed)[0]


def build_record(feed_id: str, seq: int, prev: bytes | None, key: bytes, recovery: bytes | None,
                 by: str, heads: dict[str, tuple[int, bytes]], ts: int, signer_seed: bytes) -> bytes:
    """A signed record line (spec/feeds.md §9.1), body in orjson's sorted compact form."""
    body = orjson.dumps({
        "type": RECORD_TYPE, "v": 1, "feed": feed_id, "seq": seq,
        "prev": prev.hex() if prev is not None else None, "key": key.hex(),
        "recovery": recovery.hex() if recovery is not None else None, "by": by,
        "heads": {sh: {"count": c, "hash": h.hex()} for sh, (c, h) in sorted(heads.items())},
        "ts": ts}, option=orjson.OPT_SORT_KEYS)
    _pk, sk = nacl.bindings.crypto_sign_seed_keypair(signer_seed)
    return body + b"\t" + _sign(sk, hashlib.sha256(body).digest()).hex().encode()


def _hex(value: object, pattern: re.Pattern[str], what: str) -> bytes:
    if type(value) is not str or not pattern.fullmatch(value):
        raise VerificationError(f"malformed succession record: {what} is not lowercase hex of its length")
    return bytes.fromhex(value)


def _int(value: object, what: str, low: int = 0) -> int:
    if type(value) is not int or not low <= value <= MAX_SAFE_INTEGER:
        raise VerificationError(f"malformed succession record: {what} is not an integer in [{low}, 2^53-1]")
    return value


def parse_record(line: bytes, feed_id: str) -> tuple[SuccessionRecord, bytes]:
    """Parse a record line of feed ``feed_id`` (format only); returns it and its signature."""
    if type(line) is not bytes:
        raise VerificationError(f"a succession record must be bytes, not {type(line).__name__}")
    body, tab, sig_hex = line.rpartition(b"\t")
    if not tab or not body or b"\n" in line:
        raise VerificationError("malformed succession record: expected '<body>\\t<signature>'")
    signature = _hex(sig_hex.decode("ascii", "replace"), re.compile(r"[0-9a-f]{128}"), "the signature")
    try:
        d = loads_json(body)
    except JsonTextError as exc:
        raise VerificationError(f"malformed succession record: {exc}") from None
    if type(d) is not dict or d.keys() != _KEYS:
        raise VerificationError(f"malformed succession record: expected exactly the keys {sorted(_KEYS)}")
    if d["type"] != RECORD_TYPE or type(d["v"]) is not int or d["v"] != 1:
        raise VerificationError("not a kachery feed succession record (v1)")
    if d["feed"] != feed_id:
        raise VerificationError(f"succession record of feed {short_repr(d['feed'])}, not {feed_id}")
    seq = _int(d["seq"], "seq", 1)
    prev = None if d["prev"] is None else _hex(d["prev"], _HEX64, "prev")
    if (prev is None) != (seq == 1):
        raise VerificationError("malformed succession record: prev is null exactly for seq 1")
    key = _hex(d["key"], _HEX64, "key")
    recovery = None if d["recovery"] is None else _hex(d["recovery"], _HEX64, "recovery")
    if d["by"] not in ("key", "recovery"):
        raise VerificationError("malformed succession record: by is 'key' or 'recovery'")
    if type(d["heads"]) is not dict:
        raise VerificationError("malformed succession record: heads is not an object")
    heads: dict[str, tuple[int, bytes]] = {}
    for sh, head in d["heads"].items():
        if not _HEX40.fullmatch(sh) or type(head) is not dict or head.keys() != {"count", "hash"}:
            raise VerificationError("malformed succession record: heads maps subfeed hashes to {count, hash}")
        heads[sh] = (_int(head["count"], "a head count", 1), _hex(head["hash"], _HEX64, "a head hash"))
    record = SuccessionRecord(line, hashlib.sha256(body).digest(), seq, prev, key, recovery, d["by"],
                              heads, _int(d["ts"], "ts"))
    return record, signature


class KeyChain:
    """A verified chain of succession records of one feed (possibly empty: the feed's own key).

    Build it with :meth:`verify`; it never holds an unverified record."""

    def __init__(self, feed_id: str, records: tuple[SuccessionRecord, ...] = ()) -> None:
        self.feed_id = feed_id
        self.records = records
        keys, recovery = [bytes.fromhex(feed_id)], None
        self._changes: list[tuple[bytes, dict[str, tuple[int, bytes]]]] = []
        for r in records:
            if r.key != keys[-1]:
                self._changes.append((r.key, r.heads))
            keys.append(r.key)
            recovery = r.recovery
        self.current_key: bytes = keys[-1]
        self.current_recovery: bytes | None = recovery

    @classmethod
    def verify(cls, feed_id: str, lines: list[bytes] | tuple[bytes, ...]) -> KeyChain:
        """Verify ``lines`` (records 1, 2, … in order) from the feed's own key; raises
        :class:`~kachery_feeds.VerificationError` naming the first bad record."""
        if len(lines) > MAX_RECORDS:
            raise VerificationError(f"more than {MAX_RECORDS} succession records")
        records: list[SuccessionRecord] = []
        key, recovery = bytes.fromhex(feed_id), None
        changes: list[dict[str, tuple[int, bytes]]] = []
        for i, line in enumerate(lines, start=1):
            r, signature = parse_record(line, feed_id)
            if r.seq != i or r.prev != (records[-1].body_hash if records else None):
                raise VerificationError(f"succession record {r.seq} does not follow record {i - 1}")
            signer = key if r.by == "key" else recovery
            if signer is None:
                raise VerificationError(f"succession record {i} is signed by a recovery key, but none "
                                        "was committed before it")
            if not _valid(signer, r.body_hash, signature):
                raise VerificationError(f"bad signature on succession record {i} (by {r.by})")
            if r.key == key:
                if r.heads or r.by != "key":
                    raise VerificationError(f"succession record {i} keeps the key: it must be signed "
                                            "by it and list no heads")
            else:
                for before in changes:  # boundaries only move forward (spec/feeds.md §9.2)
                    for sh, (count, _h) in before.items():
                        if r.heads.get(sh, (0, b""))[0] < count:
                            raise VerificationError(f"succession record {i} moves subfeed {sh}'s "
                                                    "boundary back (or omits it)")
                changes.append(r.heads)
            records.append(r)
            key, recovery = r.key, r.recovery
        return cls(feed_id, tuple(records))

    # ------------------------------------------------------------------ queries
    def lines(self) -> list[bytes]:
        return [r.line for r in self.records]

    def extends(self, other: KeyChain) -> bool:
        """True if ``other``'s records are the first records of this chain."""
        return (len(other.records) <= len(self.records)
                and all(a.body_hash == b.body_hash
                        for a, b in zip(other.records, self.records, strict=False)))

    def key_for(self, subfeed_hash: str, n: int) -> bytes:
        """The key that must sign message ``n`` of the subfeed."""
        key = bytes.fromhex(self.feed_id)
        for new_key, heads in self._changes:
            if heads.get(subfeed_hash, (0, b""))[0] > n:
                break
            key = new_key
        return key

    def superseded_before(self, subfeed_hash: str, n: int) -> list[bytes]:
        """Keys that governed the subfeed before the key of message ``n`` (whose signature at
        ``n`` is therefore a violation)."""
        governing = self.key_for(subfeed_hash, n)
        earlier = [bytes.fromhex(self.feed_id)] + [k for k, _h in self._changes]
        return [k for k in earlier[: earlier.index(governing)] if k != governing]

    def pinned(self, subfeed_hash: str) -> list[tuple[int, bytes]]:
        """``(position, hash)`` pairs the key-changing records pin for the subfeed."""
        return [(heads[subfeed_hash][0] - 1, heads[subfeed_hash][1])
                for _k, heads in self._changes if subfeed_hash in heads]

    def boundaries(self, subfeed_hash: str) -> list[int]:
        """The positions where the subfeed's key changes."""
        return [heads.get(subfeed_hash, (0, b""))[0] for _k, heads in self._changes]


def carried_chains(bodies: list[bytes]) -> list[list[bytes]]:
    """The record lists carried by message bodies (their ``succession`` field), if any."""
    found = []
    for body in bodies:
        if b'"succession"' not in body:
            continue  # cheap filter; the field's presence is decided by parsing
        d = orjson.loads(body)
        if "succession" in d:
            found.append([x.encode("utf-8") for x in d["succession"]])
    return found


def merge(current: KeyChain, candidate: KeyChain) -> KeyChain:
    """The longer of two chains of which one extends the other; two chains that diverge mean
    a key signed two different successions (raised as VerificationError)."""
    if candidate.extends(current):
        return candidate
    if current.extends(candidate):
        return current
    raise VerificationError(f"two different key successions of feed {current.feed_id}: a key signed "
                            "two successions; refusing both the new one and messages that need it")


class Violation(NamedTuple):
    """A message signed, at ``position``, by a key that a succession had already replaced there."""

    position: int


def check_chain_with_keys(messages: list, chain: KeyChain, subfeed_hash: str) -> Violation | None:
    """:func:`~kachery_feeds.messages.check_chain` for a feed with successions: each signed
    message under the key :meth:`KeyChain.key_for` its position, and every hash the records pin
    respected. Returns a :class:`Violation` if a signature is a superseded key's; raises
    VerificationError for anything else wrong."""
    if not messages:
        return None
    check_links(messages)
    first = messages[0][0]
    for position, pinned_hash in chain.pinned(subfeed_hash):
        i = position - first
        determined = (messages[i][2] if 0 <= i < len(messages) else
                      messages[i + 1][1] if 0 <= i + 1 < len(messages) else None)
        if determined is not None and determined != pinned_hash:
            raise VerificationError(f"message {position} contradicts the key succession of feed "
                                    f"{chain.feed_id}, which pins another message there")
    for m in messages:
        if m[4] is None:
            continue
        n = m[0]
        if signature_is_valid(chain.key_for(subfeed_hash, n), m[2], m[4]):
            continue
        if any(signature_is_valid(k, m[2], m[4]) for k in chain.superseded_before(subfeed_hash, n)):
            return Violation(n)
        raise VerificationError(f"bad signature on message {n}")
    return None


def build_violation_proof(feed_id: str, subfeed_hash: str, position: int, chain: KeyChain,
                          lines: list[bytes]) -> bytes:
    """A portable proof that a superseded key signed message ``position`` (spec/feeds.md §9.4):
    the chain of records and the wire lines from that message to the next signed one."""
    return orjson.dumps({"type": VIOLATION_TYPE, "v": 1, "feed": feed_id, "subfeed": subfeed_hash,
                         "position": position, "succession": [x.decode("utf-8") for x in chain.lines()],
                         "chain": [x.decode("utf-8") for x in lines]})


def verify_violation_proof(proof: bytes) -> tuple[str, str, int]:
    """Check a succession violation proof independently of any store; returns
    ``(feed ID, subfeed hash, position)`` or raises VerificationError."""
    try:
        d = loads_json(proof)
    except JsonTextError as exc:
        raise VerificationError(f"malformed violation proof: {exc}") from None
    if type(d) is not dict or d.keys() != _VIOLATION_KEYS or d["type"] != VIOLATION_TYPE or d["v"] != 1:
        raise VerificationError(
            f"not a succession violation proof: expected exactly the keys {sorted(_VIOLATION_KEYS)}")
    feed_id, sh = d["feed"], d["subfeed"]
    if (type(feed_id) is not str or not _HEX64.fullmatch(feed_id)
            or type(sh) is not str or not _HEX40.fullmatch(sh)):
        raise VerificationError("malformed violation proof: feed or subfeed")
    for k in ("succession", "chain"):
        if type(d[k]) is not list or not d[k] or not all(type(x) is str for x in d[k]):
            raise VerificationError(f"malformed violation proof: {k!r} is not a non-empty list of lines")
    chain = KeyChain.verify(feed_id, [x.encode("utf-8") for x in d["succession"]])
    msgs: list[ParsedMessage] = [parse_message(x.encode("utf-8"), feed_id, sh) for x in d["chain"]]
    if msgs[-1].signature is None:
        raise VerificationError("a violation proof's chain must end at a signed message")
    for a, b in itertools.pairwise(msgs):
        if b.number != a.number + 1 or b.previous_hash != a.hash:
            raise VerificationError("a violation proof's chain is not contiguous")
    last = msgs[-1]
    superseded = chain.superseded_before(sh, last.number)
    if signature_is_valid(chain.key_for(sh, last.number), last.hash, last.signature):
        raise VerificationError("the chain is signed by the key the succession names: no violation")
    if not any(signature_is_valid(k, last.hash, last.signature) for k in superseded):
        raise VerificationError("the chain is not signed by a key the succession replaced")
    return feed_id, sh, msgs[0].number

"""Portable fork proofs: evidence that a feed's owner signed two conflicting histories.

A *chain* is a contiguous list of wire-form messages of one subfeed that passes
:func:`~kachery_feeds.messages.check_chain` (linked, validly signed, ending at a signed message).
A chain *determines* the hash of position ``p`` if it contains message ``p`` (its hash) or
message ``p + 1`` (its ``prev`` field). A fork proof is two chains of the same subfeed that
determine different hashes for some position: since every chain ends in the owner's signature,
the owner has vouched for both. Format (JSON, UTF-8)::

    {"type":"kachery-fork-proof","v":1,"feed":"<64 hex>","subfeed":"<40 hex>",
     "position":<int>,"a":["<wire message>",...],"b":["<wire message>",...]}
"""

from __future__ import annotations

import re
from typing import NamedTuple

import orjson

from .errors import VerificationError
from .jsontext import MAX_SAFE_INTEGER, JsonTextError
from .jsontext import loads as loads_json
from .messages import ParsedMessage, check_chain, parse_message
from .succession import KeyChain, check_chain_with_keys

_KEYS = frozenset({"type", "v", "feed", "subfeed", "position", "a", "b"})
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX40 = re.compile(r"[0-9a-f]{40}")


class ForkProofInfo(NamedTuple):
    """What a valid fork proof shows: the subfeed and the first position in conflict."""

    feed_id: str
    subfeed_hash: str
    position: int


def _determined_hashes(chain: list[ParsedMessage]) -> dict[int, bytes]:
    hashes: dict[int, bytes] = {}
    for m in chain:
        if m.previous_hash is not None:
            hashes[m.number - 1] = m.previous_hash
        hashes[m.number] = m.hash
    return hashes


def conflict_position(a: list[ParsedMessage], b: list[ParsedMessage]) -> int | None:
    """The first position whose hash two verified chains determine differently, if any."""
    ha, hb = _determined_hashes(a), _determined_hashes(b)
    conflicts = [p for p in ha.keys() & hb.keys() if ha[p] != hb[p]]
    return min(conflicts) if conflicts else None


def build_fork_proof(
    feed_id: str, subfeed_hash: str, position: int, a: list[bytes], b: list[bytes],
    succession: list[bytes] | None = None,
) -> bytes:
    """``succession``: the feed's key succession records, for a feed that changed keys (the
    chains' signatures are then checked against them, spec/feeds.md §9)."""
    proof = {
        "type": "kachery-fork-proof",
        "v": 1,
        "feed": feed_id,
        "subfeed": subfeed_hash,
        "position": position,
        "a": [line.decode("utf-8") for line in a],
        "b": [line.decode("utf-8") for line in b],
    }
    if succession:
        proof["succession"] = [line.decode("utf-8") for line in succession]
    return orjson.dumps(proof)


def _key_chain(feed_id: str, succession: object) -> KeyChain | None:
    """The verified key chain a fork proof of a feed that changed keys carries (§9), or None."""
    if succession is None:
        return None
    if type(succession) is not list or not succession or not all(type(x) is str for x in succession):
        raise VerificationError("malformed fork proof: 'succession' is not a non-empty list of records")
    return KeyChain.verify(feed_id, [x.encode("utf-8") for x in succession])


def verify_fork_proof(proof: bytes) -> ForkProofInfo:
    """Check a fork proof independently of any store; raise VerificationError if it is not one.

    A succession violation proof (spec/feeds.md §9.4) is checked too. Otherwise the proof
    must have exactly the keys of spec/feeds.md §6 (and ``succession`` for a feed that changed
    keys); ``position`` is informational
    (a non-negative integer; the proven position is recomputed from the chains)."""
    try:
        d = loads_json(proof)
    except JsonTextError as exc:
        raise VerificationError(f"malformed fork proof: {exc}") from None
    if type(d) is dict and d.get("type") == "kachery-succession-violation":  # spec/feeds.md §9.4
        from .succession import verify_violation_proof

        return ForkProofInfo(*verify_violation_proof(proof))
    if type(d) is not dict or d.keys() - {"succession"} != _KEYS:
        raise VerificationError(f"malformed fork proof: expected exactly the keys {sorted(_KEYS)}")
    if d["type"] != "kachery-fork-proof" or d["v"] != 1 or type(d["v"]) is not int:
        raise VerificationError("not a kachery fork proof (v1)")
    feed_id, sub, position = d["feed"], d["subfeed"], d["position"]
    if type(feed_id) is not str or not _HEX64.fullmatch(feed_id):
        raise VerificationError("malformed fork proof: 'feed' is not 64 lowercase hex")
    if type(sub) is not str or not _HEX40.fullmatch(sub):
        raise VerificationError("malformed fork proof: 'subfeed' is not 40 lowercase hex")
    if type(position) is not int or not 0 <= position <= MAX_SAFE_INTEGER:
        raise VerificationError("malformed fork proof: 'position' is not an integer in [0, 2^53-1]")
    chains = []
    for k in ("a", "b"):
        if type(d[k]) is not list or not all(type(line) is str for line in d[k]):
            raise VerificationError(f"malformed fork proof: {k!r} is not a list of wire lines")
        chains.append([line.encode("utf-8") for line in d[k]])
    public_key = bytes.fromhex(feed_id)
    keys = _key_chain(feed_id, d.get("succession"))
    parsed = []
    for chain in chains:
        if not chain:
            raise VerificationError("a fork proof chain is empty")
        msgs = [parse_message(line, feed_id, sub) for line in chain]
        if keys is None:
            check_chain(msgs, public_key)
        elif check_chain_with_keys(msgs, keys, sub) is not None:
            raise VerificationError("a fork proof chain is signed by a key its succession replaced "
                                    "(a succession violation, not a fork)")
        parsed.append(msgs)
    position = conflict_position(parsed[0], parsed[1])
    if position is None:
        raise VerificationError("the two chains do not conflict: this is not a fork")
    return ForkProofInfo(feed_id, sub, position)

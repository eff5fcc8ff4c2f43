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

from typing import NamedTuple

import orjson

from .errors import VerificationError
from .messages import ParsedMessage, check_chain, parse_message
from .uris import normalize_feed_id


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
    feed_id: str, subfeed_hash: str, position: int, a: list[bytes], b: list[bytes]
) -> bytes:
    return orjson.dumps(
        {
            "type": "kachery-fork-proof",
            "v": 1,
            "feed": feed_id,
            "subfeed": subfeed_hash,
            "position": position,
            "a": [line.decode("utf-8") for line in a],
            "b": [line.decode("utf-8") for line in b],
        }
    )


def verify_fork_proof(proof: bytes) -> ForkProofInfo:
    """Check a fork proof independently of any store; raise VerificationError if it is not one."""
    try:
        d = orjson.loads(proof)
        if d.get("type") != "kachery-fork-proof" or d.get("v") != 1:
            raise VerificationError("not a kachery fork proof (v1)")
        feed_id = normalize_feed_id(d["feed"])
        sub = d["subfeed"]
        chains = [[line.encode("utf-8") for line in d[k]] for k in ("a", "b")]
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise VerificationError(f"malformed fork proof: {exc}") from exc
    public_key = bytes.fromhex(feed_id)
    parsed = []
    for chain in chains:
        if not chain:
            raise VerificationError("a fork proof chain is empty")
        msgs = [parse_message(line, feed_id, sub) for line in chain]
        check_chain(msgs, public_key)
        parsed.append(msgs)
    position = conflict_position(parsed[0], parsed[1])
    if position is None:
        raise VerificationError("the two chains do not conflict: this is not a fork")
    return ForkProofInfo(feed_id, sub, position)

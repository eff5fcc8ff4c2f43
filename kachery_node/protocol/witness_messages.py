"""Witness and fork messages on the feed bands (spec/witness.md §6). Pure, no I/O.

* ``subfeedCheckpoint`` on ``provide-feeds`` (a provider, after a witness cosigned)::

      {"type": "subfeedCheckpoint", "feed_id": <64 hex>, "subfeed_hash": <40 hex>, "size": int >= 1}
      attachment: the witnessed checkpoint object (spec/witness.md §3), or none when it is too
      big to carry (the receiver reads the bucket's ``.../checkpoint``)

* ``forkProof`` on ``request-feeds`` or ``provide-feeds`` (any member that found a fork)::

      {"type": "forkProof", "feed_id": ..., "subfeed_hash": ..., "position": int >= 0}
      attachment: the fork proof (spec/feeds.md §6), or none when too big (then it is in the
      bucket's ``.../fork``)

* ``checkpointCosignature`` on ``request-feeds`` (a node witness, spec/witness.md §4.3)::

      {"type": "checkpointCosignature", "feed_id": ..., "subfeed_hash": ..., "size": int >= 1,
       "cosignature": "<note signature line>"}

The body's fields say what the attachment is about so that a receiver can decide without
parsing it; the attachment is verified anyway and must agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import short_repr
from .feed_messages import MalformedFeedMessage, _count, _names

CHECKPOINT = "subfeedCheckpoint"
FORK_PROOF = "forkProof"
COSIGNATURE = "checkpointCosignature"
TYPES = frozenset({CHECKPOINT, FORK_PROOF, COSIGNATURE})
MAX_INLINE_ATTACHMENT = 40_000  # as inline feed pushes: the embedded relay refuses over 64 KiB


@dataclass(frozen=True)
class SubfeedCheckpoint:
    feed_id: str
    subfeed_hash: str
    size: int
    witnessed: bytes | None  # the object, or None: read it from the bucket

    def to_body(self) -> dict[str, Any]:
        return {"type": CHECKPOINT, "feed_id": self.feed_id, "subfeed_hash": self.subfeed_hash,
                "size": self.size}


@dataclass(frozen=True)
class ForkProof:
    feed_id: str
    subfeed_hash: str
    position: int
    proof: bytes | None  # the proof, or None: read it from the bucket

    def to_body(self) -> dict[str, Any]:
        return {"type": FORK_PROOF, "feed_id": self.feed_id, "subfeed_hash": self.subfeed_hash,
                "position": self.position}


@dataclass(frozen=True)
class CheckpointCosignature:
    feed_id: str
    subfeed_hash: str
    size: int
    cosignature: str  # a note signature line (spec/witness.md §2), parsed by the receiver

    def to_body(self) -> dict[str, Any]:
        return {"type": COSIGNATURE, "feed_id": self.feed_id, "subfeed_hash": self.subfeed_hash,
                "size": self.size, "cosignature": self.cosignature}


def inline(data: bytes) -> bytes | None:
    """``data`` as an attachment if it is small enough to travel on pub-sub, else None."""
    return data if len(data) <= MAX_INLINE_ATTACHMENT else None


def parse(body: dict[str, Any], attachment: bytes | None
          ) -> SubfeedCheckpoint | ForkProof | CheckpointCosignature:
    """A witness message's body (and attachment); raises MalformedFeedMessage."""
    feed_id, subfeed_hash = _names(body)
    if body.get("type") == CHECKPOINT:
        size = _count(body, "size")
        if size < 1:
            raise MalformedFeedMessage("a checkpoint's size is at least 1")
        return SubfeedCheckpoint(feed_id, subfeed_hash, size, attachment)
    if body.get("type") == COSIGNATURE:
        size, line = _count(body, "size"), body.get("cosignature")
        if size < 1 or type(line) is not str or len(line) > 300:
            raise MalformedFeedMessage("a cosignature needs a size >= 1 and a cosignature line")
        return CheckpointCosignature(feed_id, subfeed_hash, size, line)
    if body.get("type") == FORK_PROOF:
        return ForkProof(feed_id, subfeed_hash, _count(body, "position"), attachment)
    # short_repr, not repr: of a list nested 100,000 deep repr raised RecursionError, of an
    # integer of over 4300 digits ValueError, in place of MalformedFeedMessage.
    raise MalformedFeedMessage(f"{short_repr(body.get('type'))} is not a witness message")

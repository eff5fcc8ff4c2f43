"""An owner's requirement of ``k`` witnesses, and the follower's gate that enforces it
(spec/witness.md §4.4). Pure: no I/O, no clock.

**The policy** lives in the feed itself, so it is signed by the owner and append-only like any
message: the subfeed named :data:`POLICY_SUBFEED` holds messages whose payload is
``{"type": "kachery-witness-policy", "subfeed": <40 hex>, "witnesses": k}``; for each subfeed the
latest such message wins (``k = 0`` lifts the requirement). A follower of any subfeed of the
feed also follows the policy subfeed.

**The gate**: a follower of a subfeed whose owner requires ``k`` witnesses stores a message only
once a checkpoint at or beyond it carries cosignatures of ``k`` *trusted* witnesses (the channel's
hub, or members of the channel: anyone can make cosignatures with fresh keys, so unknown keys
count for nothing). Messages that arrive earlier wait in the gate (bounded: beyond
:data:`MAX_PENDING_LINES` per subfeed the newest are dropped, and come again through the bucket).
The message at the checkpoint's end is taken from the checkpoint (``last``, always signed) when
the copy that arrived is unsigned (a batch's inner message), so every admitted range ends at a
signed message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from kachery_feeds import subfeed_hash as _subfeed_hash
from kachery_feeds.checkpoints import WitnessedCheckpoint

POLICY_SUBFEED = "kachery.witness-policy"
POLICY_TYPE = "kachery-witness-policy"
MAX_WITNESSES = 64
MAX_PENDING_LINES = 10_000
POLICY_SUBFEED_HASH = _subfeed_hash(POLICY_SUBFEED)

Subfeed = tuple[str, str]  # (feed ID, subfeed hash)


def policy_payload(subfeed_hash: str, witnesses: int) -> dict[str, Any]:
    """The payload an owner appends to :data:`POLICY_SUBFEED` to require ``witnesses``."""
    if not 0 <= witnesses <= MAX_WITNESSES:
        raise ValueError(f"witnesses must be in [0, {MAX_WITNESSES}]")
    return {"type": POLICY_TYPE, "subfeed": subfeed_hash, "witnesses": witnesses}


def required_witnesses(payloads: Iterable[Any]) -> dict[str, int]:
    """Subfeed hash -> witnesses required, from the policy subfeed's payloads in order (later
    messages win; malformed ones are ignored)."""
    required: dict[str, int] = {}
    for p in payloads:
        if (isinstance(p, dict) and p.get("type") == POLICY_TYPE and isinstance(p.get("subfeed"), str)
                and type(p.get("witnesses")) is int and 0 <= p["witnesses"] <= MAX_WITNESSES):
            required[p["subfeed"]] = p["witnesses"]
    return required


def _number(line: bytes) -> int | None:
    try:
        n = orjson.loads(line.rsplit(b"\t", 1)[0])["n"]
    except (orjson.JSONDecodeError, KeyError, TypeError, IndexError):
        return None
    return n if type(n) is int else None


@dataclass
class _Held:
    witnessed: WitnessedCheckpoint | None = None  # the newest with enough trusted cosignatures
    pending: dict[int, bytes] = field(default_factory=dict)  # message number -> wire line


class WitnessGate:
    """Per subfeed: how many witnesses its owner requires (set by the driver from the policy
    subfeed), the newest checkpoint that has them, and the messages waiting for one."""

    def __init__(self, max_pending_lines: int = MAX_PENDING_LINES) -> None:
        self._required: dict[Subfeed, int] = {}
        self._held: dict[Subfeed, _Held] = {}
        self._max_pending = max_pending_lines

    def set_required(self, subfeed: Subfeed, witnesses: int) -> None:
        self._required[subfeed] = witnesses

    def required(self, subfeed: Subfeed) -> int:
        return self._required.get(subfeed, 0)

    def witnessed_size(self, subfeed: Subfeed) -> int:
        held = self._held.get(subfeed)
        return held.witnessed.checkpoint.size if held and held.witnessed else 0

    def waiting(self, subfeed: Subfeed) -> bool:
        """Whether messages of ``subfeed`` wait here for a checkpoint with enough witnesses."""
        held = self._held.get(subfeed)
        return self.required(subfeed) > 0 and held is not None and bool(held.pending)

    def on_checkpoint(self, obj: WitnessedCheckpoint, trusted: Callable[[str], bool]) -> bool:
        """A verified witnessed checkpoint (consistent with the local copy); True if it moves the
        subfeed's witnessed size forward (then :meth:`admit` lets more through)."""
        subfeed = (obj.checkpoint.feed_id, obj.checkpoint.subfeed_hash)
        if sum(1 for w in obj.witnesses() if trusted(w)) < self.required(subfeed):
            return False
        held = self._held.setdefault(subfeed, _Held())
        if held.witnessed is not None and held.witnessed.checkpoint.size >= obj.checkpoint.size:
            return False
        held.witnessed = obj
        return True

    def admit(self, subfeed: Subfeed, local_count: int, lines: Iterable[bytes] = ()) -> list[bytes]:
        """Of ``lines`` (contiguous, in order) and those waiting, the contiguous run from
        ``local_count`` that a checkpoint with enough witnesses covers, ending at a signed
        message; the rest wait. Without a requirement everything passes as it is."""
        lines = list(lines)
        if self.required(subfeed) == 0:
            return lines
        held = self._held.setdefault(subfeed, _Held())
        for line in lines:
            n = _number(line)
            if n is None:
                continue  # malformed: the import would refuse it anyway
            if n >= local_count and (n in held.pending or len(held.pending) < self._max_pending):
                held.pending[n] = line
        for n in [n for n in held.pending if n < local_count]:
            del held.pending[n]
        end = self.witnessed_size(subfeed)
        run: list[bytes] = []
        n = local_count
        while n < end and n in held.pending:
            run.append(held.pending.pop(n))
            n += 1
        if not run:
            return []
        if n == end and run[-1].endswith(b"\t") and held.witnessed is not None:
            last = held.witnessed.last  # the same message, signed (the import checks it is)
            if run[-1].rsplit(b"\t", 1)[0] == last.rsplit(b"\t", 1)[0]:
                run[-1] = last
        while run and run[-1].endswith(b"\t"):  # end at a signed message; the rest waits
            n -= 1
            held.pending[n] = run.pop()
        return run

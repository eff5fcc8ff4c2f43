"""The rules of a witness (spec/witness.md §4), pure: what it refuses and when it signs. Its
state (copies of the subfeeds, cosignatures made) is :mod:`kachery_node.storage.witness_state`.

How a witness stays consistent: it keeps its own verified copy of every subfeed it has
witnessed, so every checkpoint it ever cosigned is a prefix of the chain it holds. A request
carries the wire lines from (at most) the witness's count up to the checkpoint's last message;
importing them runs the checks of spec/feeds.md §5, so a request is cosigned only if it
*extends* (or repeats a prefix of) what the witness holds. A conflict is a fork: the store
records its proof, and the witness then refuses to cosign any checkpoint of that subfeed past
the fork's position, on either branch.

Unlike C2SP tlog-witness, which keeps only the latest tree head per log and checks Merkle
consistency proofs, a hash chain has no short consistency proof: the proof *is* the messages in
between, so the witness holds them and the requester sends only what the witness lacks (a
refusal with :attr:`WitnessRefusal.size` tells it where to start, like tlog-witness's 409).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import kachery_feeds as kf
from kachery_feeds.checkpoints import Checkpoint, Cosignature

#: Segments a witness reads from the channel's bucket for one request at most (spec/witness.md
#: §4.1, ``segments_to``): 20,000 messages, a few tenths of a second of its import, so the one
#: witness lock is not held much longer than for a request of lines; the requester asks again.
MAX_BUCKET_SEGMENTS = 20


class RefusalReason(enum.Enum):
    MISSING = "missing_messages"  # the lines start past the witness's count: send from `size`
    STALE = "stale_checkpoint"  # smaller than one already cosigned (consistent, but not news)
    FORK = "fork"  # conflicts with what the witness holds; `proof` proves it
    FORKED = "forked"  # past a known fork of the subfeed; `proof` proves it
    INVALID = "invalid"  # the lines do not verify


class WitnessRefusal(Exception):
    """Why the witness did not cosign: ``size`` is its count (MISSING) or its largest cosigned
    size (STALE); ``proof`` a fork proof (FORK, FORKED). (A plain exception, not a frozen
    dataclass: raising sets ``__traceback__``, also when re-raised from a worker thread.)"""

    def __init__(self, reason: RefusalReason, detail: str, size: int | None = None,
                 proof: bytes | None = None) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason, self.detail, self.size, self.proof = reason, detail, size, proof


@dataclass(frozen=True)
class Cosigned:
    """A cosignature and what it covers."""

    checkpoint: Checkpoint
    last: bytes  # the owner-signed wire line of message size - 1
    cosignature: Cosignature


def check_not_forked(checkpoint: Checkpoint, fork_proofs: list[bytes]) -> None:
    """Refuse (FORKED) a checkpoint past the position of a known fork of its subfeed."""
    fork_proofs = [p for p in fork_proofs if not kf.is_succession_violation(p)]
    if not fork_proofs:
        return
    position = min(kf.verify_fork_proof(p).position for p in fork_proofs)
    if checkpoint.size > position:
        raise WitnessRefusal(RefusalReason.FORKED, f"subfeed forked at message {position}; the "
                             "witness cosigns neither branch past it", proof=fork_proofs[0])


def signing_time(checkpoint: Checkpoint, latest: tuple[int, int] | None, now_s: int) -> int:
    """The time to cosign ``checkpoint`` at (consistent with the witness's copy), given the
    (size, time) of the largest cosigned before; refuses (STALE) a smaller checkpoint, which
    is consistent but would claim to be the largest seen. Never a time before one already
    signed for the subfeed: a timeline read back from cosignatures stays ordered even if the
    clock stepped back."""
    if latest is None:
        return now_s
    if checkpoint.size < latest[0]:
        raise WitnessRefusal(RefusalReason.STALE, f"the witness cosigned {latest[0]} messages already",
                             size=latest[0])
    return max(now_s, latest[1])

"""Reading a subfeed's witnessed checkpoint and fork proof from a channel's bucket (spec/witness.md
§3, §5), without a daemon: plain public GETs (spec/bucket.md §5), everything verified.

The function other code should use to learn how far a subfeed provably went is
:func:`newest_witnessed_checkpoint` (one channel) or :func:`newest_witnessed_checkpoints` (every
channel this storage joined). A restore that must not fork (issue 18 part 3) catches up to at
least that checkpoint's size before it lets the owner append.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import kachery_feeds as kf
from kachery_feeds.checkpoints import CheckpointError, WitnessedCheckpoint, parse_witnessed_checkpoint

from .errors import RemoteProtocolError
from .joined_channels import load_memberships
from .protocol.bucket_layout import subfeed_checkpoint_path, subfeed_fork_path
from .transport.bucket.public_reads import BucketReadError, PublicBucketReader

MAX_OBJECT_BYTES = 8 * 1024 * 1024  # a witnessed checkpoint or fork proof: a few wire lines


class BadWitnessObjectError(RemoteProtocolError):
    """The bucket's checkpoint or fork object is malformed or does not verify."""


def _get(bucket_url: str, key: str, reader: PublicBucketReader | None) -> bytes | None:
    if reader is not None:
        return reader.get(bucket_url, key, MAX_OBJECT_BYTES)
    with PublicBucketReader() as own:
        return own.get(bucket_url, key, MAX_OBJECT_BYTES)


def newest_witnessed_checkpoint(bucket_url: str, channel: str, feed_id: str, subfeed_hash: str, *,
                                reader: PublicBucketReader | None = None) -> WitnessedCheckpoint | None:
    """The newest witnessed checkpoint of subfeed ``subfeed_hash`` of ``feed_id`` in
    ``channel``'s bucket (read at ``bucket_url``), verified: its last message is the owner's
    signed message ``size - 1`` and only cosignatures that verify are kept (the caller decides
    which witnesses it trusts: :meth:`WitnessedCheckpoint.witnesses`). None if the bucket holds
    none. Raises :class:`BadWitnessObjectError` for an object that does not verify, and
    :class:`BucketReadError` when the bucket cannot be read (``reader``: reuse a connection)."""
    data = _get(bucket_url, subfeed_checkpoint_path(channel, feed_id, subfeed_hash), reader)
    if data is None:
        return None
    try:
        obj = parse_witnessed_checkpoint(data)
    except CheckpointError as exc:
        raise BadWitnessObjectError(f"the {channel} bucket's checkpoint: {exc}") from None
    if (obj.checkpoint.feed_id, obj.checkpoint.subfeed_hash) != (feed_id, subfeed_hash):
        raise BadWitnessObjectError(f"the {channel} bucket's checkpoint is of another subfeed")
    return obj


def fork_proof_in_bucket(bucket_url: str, channel: str, feed_id: str, subfeed_hash: str, *,
                         reader: PublicBucketReader | None = None) -> tuple[bytes, kf.ForkProofInfo] | None:
    """The fork proof of the subfeed in ``channel``'s bucket, verified, or None."""
    data = _get(bucket_url, subfeed_fork_path(channel, feed_id, subfeed_hash), reader)
    if data is None:
        return None
    try:
        info = kf.verify_fork_proof(data)
    except kf.VerificationError as exc:
        raise BadWitnessObjectError(f"the {channel} bucket's fork proof: {exc}") from None
    if (info.feed_id, info.subfeed_hash) != (feed_id, subfeed_hash):
        raise BadWitnessObjectError(f"the {channel} bucket's fork proof is of another subfeed")
    return data, info


@dataclass(frozen=True)
class ChannelWitnessView:
    """What one joined channel's bucket says about a subfeed (``error``: why it could not say)."""

    channel: str
    checkpoint: WitnessedCheckpoint | None = None
    fork: kf.ForkProofInfo | None = None
    fork_proof: bytes | None = None
    error: str | None = None


def newest_witnessed_checkpoints(storage_dir: str | os.PathLike, feed_id: str, subfeed_hash: str,
                                 channel: str | None = None) -> list[ChannelWitnessView]:
    """For every channel this storage joined (or just ``channel``): its bucket's newest witnessed
    checkpoint of the subfeed and any fork proof, verified."""
    views = []
    with PublicBucketReader() as reader:
        for name, entry in sorted(load_memberships(Path(storage_dir)).items()):
            if channel is not None and name != channel:
                continue
            url = entry.get("bucket_url")
            if not isinstance(url, str):
                views.append(ChannelWitnessView(name, error="no bucket URL recorded (join again)"))
                continue
            try:
                cp = newest_witnessed_checkpoint(url, name, feed_id, subfeed_hash, reader=reader)
                fork = fork_proof_in_bucket(url, name, feed_id, subfeed_hash, reader=reader)
            except (BucketReadError, BadWitnessObjectError) as exc:
                views.append(ChannelWitnessView(name, error=f"{type(exc).__name__}: {exc}"))
                continue
            views.append(ChannelWitnessView(name, cp, fork[1] if fork else None, fork[0] if fork else None))
    return views


# ----------------------------------------------------------------------------- provable timeline
@dataclass(frozen=True)
class TimelineEntry:
    """Messages ``[0, size)`` existed by ``time`` (POSIX seconds): the earliest cosignature of a
    checkpoint at ``size`` that verifies against the local copy; ``witnesses`` every witness
    that cosigned that checkpoint (their earliest times in ``times``)."""

    size: int
    time: int
    witnesses: tuple[str, ...]
    times: tuple[int, ...]


def provable_timeline(subfeed: kf.Subfeed, cosignatures: list[tuple[int, str]]) -> list[TimelineEntry]:
    """From cosignature lines of checkpoints of ``subfeed`` (``(size, line)``, e.g. a witness's
    history or a bucket object's), those that verify against the *local* copy's hashes, as a
    timeline by size. A cosignature of a size the local copy lacks, or over another hash (a
    branch this copy does not have), proves nothing here and is left out."""
    from kachery_feeds.checkpoints import (
        Checkpoint,
        parse_cosignature_line,
        verify_cosignature,
    )
    from kachery_feeds.messages import message_hash

    count = subfeed.get_num_local_messages()
    by_size: dict[int, dict[str, int]] = {}
    hashes: dict[int, bytes] = {}
    for size, line in cosignatures:
        if not 1 <= size <= count:
            continue
        try:
            cosignature = parse_cosignature_line(line)
        except CheckpointError:
            continue
        if size not in hashes:
            last = subfeed.get_signed_messages(size - 1, size)[0]
            hashes[size] = message_hash(last.rsplit(b"\t", 1)[0])
        checkpoint = Checkpoint(subfeed.feed_id, subfeed.subfeed_hash, size, hashes[size])
        if not verify_cosignature(checkpoint, cosignature):
            continue
        seen = by_size.setdefault(size, {})
        seen[cosignature.witness] = min(seen.get(cosignature.witness, cosignature.timestamp),
                                        cosignature.timestamp)
    return [TimelineEntry(size, min(w.values()), tuple(sorted(w)), tuple(w[k] for k in sorted(w)))
            for size, w in sorted(by_size.items())]

"""Subfeeds in a bucket: immutable segments plus a small mutable head (spec/bucket.md §3).

Segment ``i`` holds messages ``[i*S, (i+1)*S)`` (``S = SEGMENT_SIZE``) in segment form
(wire lines, each ending in LF); once full it never changes, so it caches well. The head holds
the message count and the *tail*: the messages after the last full segment, so it always ends
with the subfeed's last (signed) message::

    {"v":1,"count":N,"segmentSize":1000,"tail":["<wire line>", ...]}

Nothing in the bucket is trusted: a reader imports segments and tail with
``Subfeed.add_signed_messages``, which verifies every signature and the hash chain. The head is
unsigned and may be stale (or rolled back by someone with upload rights); live pub-sub updates
from providers correct that.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

import kachery_feeds as kf
from kachery_feeds.jsontext import MAX_SAFE_INTEGER, JsonTextError
from kachery_feeds.jsontext import loads as loads_json

from ..errors import RemoteProtocolError
from .bucket_layout import SEGMENT_SIZE

_HEAD_KEYS = frozenset({"v", "count", "segmentSize", "tail"})


class HeadError(RemoteProtocolError, ValueError):
    """A head object from the bucket is malformed (the peer's fault: whoever uploaded it)."""


@dataclass(frozen=True)
class Head:
    count: int
    tail: list[bytes]

    @property
    def full_segments(self) -> int:
        return self.count // SEGMENT_SIZE


def encode_head(count: int, tail: list[bytes]) -> bytes:
    if len(tail) != count - (count // SEGMENT_SIZE) * SEGMENT_SIZE:
        raise ValueError("the tail must hold exactly the messages after the last full segment")
    return orjson.dumps(
        {"v": 1, "count": count, "segmentSize": SEGMENT_SIZE, "tail": [line.decode() for line in tail]}
    )


def parse_head(data: bytes) -> Head:
    """Parse a head object (spec/bucket.md §3): exactly the keys ``v`` (1), ``count``,
    ``segmentSize`` (1000) and ``tail``; raises :class:`HeadError`."""
    try:
        d = loads_json(data)
    except JsonTextError as exc:
        raise HeadError(f"malformed subfeed head: {exc}") from None
    if type(d) is not dict or d.keys() != _HEAD_KEYS:
        raise HeadError(f"malformed subfeed head: expected exactly the keys {sorted(_HEAD_KEYS)}")
    count, tail, size, v = d["count"], d["tail"], d["segmentSize"], d["v"]
    if type(v) is not int or v != 1 or type(size) is not int or size != SEGMENT_SIZE:
        raise HeadError("unsupported subfeed head (version or segment size)")
    if type(count) is not int or not 0 <= count <= MAX_SAFE_INTEGER:
        raise HeadError("malformed subfeed head: count is not an integer in [0, 2^53-1]")
    if not isinstance(tail, list) or not all(isinstance(x, str) for x in tail):
        raise HeadError("malformed subfeed head tail")
    if len(tail) != count - (count // SEGMENT_SIZE) * SEGMENT_SIZE:
        raise HeadError("subfeed head tail length does not match its count")
    return Head(count, [x.encode() for x in tail])


def head_for(subfeed: kf.Subfeed) -> tuple[int, bytes]:
    """(count, encoded head) for the local state of ``subfeed``."""
    count = subfeed.get_num_local_messages()
    return count, head_at(subfeed, count)


def head_at(subfeed: kf.Subfeed, count: int) -> bytes:
    """The encoded head for the first ``count`` messages of ``subfeed`` (it must hold them, and
    message ``count - 1`` must be signed, as every count a store has held is): the head an
    upload planned at that count writes, even if the subfeed grew meanwhile."""
    start = (count // SEGMENT_SIZE) * SEGMENT_SIZE
    tail = subfeed.get_signed_messages(start, count) if count > start else []
    return encode_head(count, tail[: count - start])


def segment_for(subfeed: kf.Subfeed, index: int) -> bytes:
    """The encoded full segment ``index`` (the subfeed must have that many messages)."""
    lines = subfeed.get_signed_messages(index * SEGMENT_SIZE, (index + 1) * SEGMENT_SIZE)
    return kf.encode_segment(lines[:SEGMENT_SIZE])


def signed_count_in_segment(segment: bytes, index: int) -> int | None:
    """The count that ends at the last signed message of full segment ``index`` (encoded as
    :func:`segment_for` does), or None if none of its messages is signed (a batch runs on)."""
    end = len(segment) - 1  # the LF after the last line
    for back in range(SEGMENT_SIZE):
        start = segment.rfind(b"\n", 0, end) + 1
        if start <= 0 and back < SEGMENT_SIZE - 1:
            raise ValueError("not a full segment")
        if segment[end - 1:end] != b"\t":
            return index * SEGMENT_SIZE + SEGMENT_SIZE - back
        end = start - 1
    return None


def segments_to_upload(local_count: int, bucket_count: int) -> range:
    """Full segments present locally but not (fully) in the bucket yet."""
    return range(bucket_count // SEGMENT_SIZE, local_count // SEGMENT_SIZE)


def segments_to_download(local_count: int, head: Head) -> range:
    """Full segments holding messages this store lacks."""
    return range(local_count // SEGMENT_SIZE, head.full_segments)


@dataclass(frozen=True)
class BucketPlan:
    """What to upload to bring a bucket's copy up to date: nothing, or ``segments`` then the
    head; ``replaces_bad_head``: the bucket's head claims our count but is not ours."""

    upload: bool
    segments: range = range(0)
    replaces_bad_head: bool = False


def plan_bucket_update(local_count: int, local_head: bytes, bucket_head: bytes | None) -> BucketPlan:
    """Compare the local subfeed with the bucket's head (None: missing). An unreadable head
    counts as an empty bucket; a bucket ahead of us is left alone (another provider has more)."""
    bucket_count = 0
    if bucket_head is not None:
        try:
            bucket_count = parse_head(bucket_head).count
        except HeadError:
            pass
    if local_count == 0 or local_count < bucket_count:
        return BucketPlan(upload=False)
    if local_count == bucket_count and bucket_head == local_head:
        return BucketPlan(upload=False)
    return BucketPlan(True, segments_to_upload(local_count, bucket_count),
                      replaces_bad_head=local_count == bucket_count)


def plan_from_count(local_count: int, bucket_count: int) -> BucketPlan:
    """:func:`plan_bucket_update` for a bucket whose head is known to be this provider's own at
    ``bucket_count`` (it read or wrote it lately), without reading it."""
    if local_count == 0 or local_count <= bucket_count:
        return BucketPlan(upload=False)
    return BucketPlan(True, segments_to_upload(local_count, bucket_count))


class SegmentImporter:
    """Feeds downloaded segments (in order) and then the tail into a subfeed, verifying all.

    Lines accumulate until they end at a signed message, then are imported in one verified
    transaction, so a batch whose signature is in a later segment still verifies, and memory
    stays bounded by the largest unsigned run.
    """

    def __init__(self, subfeed: kf.Subfeed) -> None:
        self.subfeed = subfeed
        self._pending: list[bytes] = []
        self.added = 0

    def add_lines(self, lines: list[bytes]) -> None:
        self._pending.extend(lines)
        # Import up to the last signed line of what we have.
        for i in range(len(self._pending) - 1, -1, -1):
            if not self._pending[i].endswith(b"\t"):
                ready, self._pending = self._pending[: i + 1], self._pending[i + 1 :]
                local = self.subfeed.get_num_local_messages()
                ready = _skip_known(ready, local)
                if ready:
                    self.added += self.subfeed.add_signed_messages(ready)
                return

    def add_segment(self, data: bytes) -> None:
        self.add_lines(kf.decode_segment(data))

    @property
    def pending(self) -> list[bytes]:
        """The unsigned lines after the last signed one, not imported (yet)."""
        return list(self._pending)

    def finish(self) -> int:
        if self._pending:
            raise kf.VerificationError("downloaded messages do not end at a signed message")
        return self.added


def _skip_known(lines: list[bytes], local_count: int) -> list[bytes]:
    """Drop leading lines this store already has (saves re-verifying them).

    The first kept line's ``prev`` is still checked against the local chain on import, so a
    fork in the dropped part is still caught. Malformed input is left for the import to reject.
    """
    try:
        first = orjson.loads(lines[0].rsplit(b"\t", 1)[0])["n"]
    except (orjson.JSONDecodeError, KeyError, TypeError, IndexError):
        return lines
    if type(first) is not int:
        return lines
    return lines[max(0, local_count - first) :]

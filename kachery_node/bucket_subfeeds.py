"""Reading another node's subfeed straight from channels' buckets, with no daemon.

A channel's bucket is public and nothing in it is trusted (spec/bucket.md §3), so a script can
catch up on a subfeed the way the daemon's follower does, over plain HTTP: read the head,
download the full segments beyond the local end (a few ahead, in threads), then take the tail,
importing everything through ``Subfeed.add_signed_messages`` (every signature and the hash
chain checked; all or nothing per batch). The pure parts are the daemon's
(:mod:`kachery_node.protocol.feed_bucket`); the buckets are those of
:func:`kachery_node.channel_buckets.channel_bucket_readers`.

:func:`catch_up` tries each bucket in turn and returns a :class:`CatchUp` saying what each one
gave; :class:`BucketPoller` is what ``Subfeed.follow()`` calls between its waits when no daemon
pushes messages.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import kachery_feeds as kf

from .errors import InvalidDataError, NotFoundError
from .protocol import feed_bucket
from .protocol.bucket_layout import subfeed_head_path, subfeed_segment_path

log = logging.getLogger("kachery.feeds")

SEGMENT_DOWNLOADS_AHEAD = 4  # as the daemon's follower: downloads overlap verification


class BucketReader(Protocol):
    """One channel's bucket, read over HTTP (kachery_node/channel_buckets.py)."""

    channel: str

    def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes: ...


@dataclass
class CatchUp:
    """What a catch-up did: messages ``added`` in all, and one line per bucket tried."""

    added: int = 0
    attempts: list[str] = field(default_factory=list)
    reached: bool = False  # some bucket had a head that verified
    rejected: bool = False  # some bucket's data failed verification


def catch_up(subfeed: kf.Subfeed, buckets: Iterable[BucketReader]) -> CatchUp:
    """Import what each bucket holds of ``subfeed`` beyond the local end, in turn, verified.

    Never raises for a bucket's failure (absent, unreachable, tampered): each is recorded in
    the result's ``attempts``, and the next bucket is tried.
    """
    result = CatchUp()
    for bucket in buckets:
        name = f"channel {bucket.channel}'s bucket"
        try:
            added, count = catch_up_from(subfeed, bucket)
        except NotFoundError:
            result.attempts.append(f"{name}: nothing published (no head)")
        except (kf.VerificationError, kf.MissingMessagesError, feed_bucket.HeadError,
                InvalidDataError) as exc:  # InvalidDataError: an object far too large to be ours
            result.rejected = True
            result.attempts.append(f"{name}: refused, it failed verification ({type(exc).__name__}: {exc})")
            log.warning("the %s bucket's copy of %s failed verification: %s",
                        bucket.channel, subfeed.uri, exc)
        except Exception as exc:  # transport: unreachable hub or bucket, timeouts
            result.attempts.append(f"{name}: unreachable ({type(exc).__name__}: {exc})")
        else:
            result.reached = True
            result.added += added
            result.attempts.append(f"{name}: {count} messages published, {added} new")
    return result


def catch_up_from(subfeed: kf.Subfeed, bucket: BucketReader) -> tuple[int, int]:
    """Import ``bucket``'s copy of ``subfeed`` beyond the local end; returns (messages added,
    the head's count). Raises NotFoundError if the bucket has no head, HeadError or
    kachery_feeds.VerificationError if what it holds is bad, and transport errors as they come.
    """
    head = feed_bucket.parse_head(bucket.get(subfeed_head_path(bucket.channel, subfeed.feed_id,
                                                               subfeed.subfeed_hash)))
    local = subfeed.get_num_local_messages()
    if head.count <= local:
        return 0, head.count  # nothing new (a stale head can only make us miss, never mislead)
    importer = feed_bucket.SegmentImporter(subfeed)
    indices = feed_bucket.segments_to_download(local, head)
    for data in _segments(bucket, subfeed, indices):
        importer.add_segment(data)
    importer.add_lines(list(head.tail))
    return importer.finish(), head.count


def _segments(bucket: BucketReader, subfeed: kf.Subfeed, indices: range) -> Iterator[bytes]:
    """The segments in order, downloaded at most :data:`SEGMENT_DOWNLOADS_AHEAD` ahead of the
    one being imported (bounded memory on a long subfeed)."""
    if not indices:
        return
    with ThreadPoolExecutor(SEGMENT_DOWNLOADS_AHEAD, thread_name_prefix="kachery-segments") as pool:
        def fetch(i: int) -> Future[bytes]:
            key = subfeed_segment_path(bucket.channel, subfeed.feed_id, subfeed.subfeed_hash, i)
            return pool.submit(bucket.get, key)

        ahead = {i: fetch(i) for i in indices[:SEGMENT_DOWNLOADS_AHEAD]}
        try:
            for n, i in enumerate(indices):
                data = ahead.pop(i).result()
                following = n + SEGMENT_DOWNLOADS_AHEAD
                if following < len(indices):
                    ahead[indices[following]] = fetch(indices[following])
                yield data
        finally:
            for future in ahead.values():
                future.cancel()


def buckets_for(storage_dir: str | os.PathLike, channel: str | None) -> list[BucketReader]:
    """The buckets to read: ``channel``'s, or every joined channel's."""
    from .channel_buckets import channel_bucket_readers

    return list(channel_bucket_readers(storage_dir, channel))


class BucketPoller:
    """What ``Subfeed.follow()`` calls when it has nothing new and no daemon pushes: one
    catch-up from the buckets; returns how many messages it added (0 on any failure, logged)."""

    def __init__(self, buckets: list[BucketReader]) -> None:
        self.buckets = buckets

    def __call__(self, subfeed: kf.Subfeed) -> int:
        result = catch_up(subfeed, self.buckets)
        if not result.reached:
            log.debug("polling %s: %s", subfeed.uri, "; ".join(result.attempts))
        return result.added

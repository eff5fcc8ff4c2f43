"""Catching a feed up with what the channels hold of it: every subfeed, to its newest known head.

Used by a fork-safe restore (spec/feeds.md §8): a node that took a feed's key from a backup asks
its daemon which subfeeds of the feed exist on its channels and how many messages each is known
to hold (:func:`newest_known_heads`), and follows each of them, so the bucket's copies and the
providers' live pushes (the old machine's, a follower's) bring the store up to date. The caller
then waits until the store holds at least those counts and ends the restore
(:meth:`kachery_feeds.Store.finish_restore`).

Where the newest known head comes from is decided in :func:`newest_known_heads` alone: today the
subfeed heads in the channels' buckets; witnessed checkpoints (issue 18 part 1) plug in there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import anyio

import kachery_feeds as kf

from ..protocol.bucket_layout import pathify, subfeed_head_path
from ..protocol.feed_bucket import HeadError, parse_head
from .channel_link import BucketObjectMissing

_HEX40 = re.compile(r"[0-9a-f]{40}")
#: How long one channel may take to connect, list and read its heads before it counts as
#: unreachable.
CHANNEL_TIMEOUT_SECONDS = 20.0


@dataclass(frozen=True)
class KnownHead:
    """The newest message count of one subfeed known on one channel."""

    channel: str
    subfeed_hash: str
    count: int


def subfeed_list_prefix(channel: str, feed_id: str) -> str:
    """The bucket prefix under which every published subfeed of ``feed_id`` has its head
    (spec/bucket.md §3.1)."""
    return f"{channel}/feeds/{pathify(feed_id)}/subfeeds/"


def subfeed_hashes_from_keys(channel: str, feed_id: str, keys: list[str]) -> list[str]:
    """The subfeed hashes whose heads are among ``keys`` (a listing of
    :func:`subfeed_list_prefix`); other keys (segments, anything malformed) are ignored."""
    prefix = subfeed_list_prefix(channel, feed_id)
    found: dict[str, None] = {}
    for key in keys:
        if not key.startswith(prefix) or not key.endswith("/head"):
            continue
        parts = key[len(prefix):].split("/")
        if (len(parts) == 5 and _HEX40.fullmatch(parts[3])
                and key == subfeed_head_path(channel, feed_id, parts[3])):
            found[parts[3]] = None
    return list(found)


async def _heads_on(link, feed_id: str) -> tuple[list[KnownHead], list[str]]:
    """The heads of ``feed_id``'s subfeeds in ``link``'s bucket, and what was wrong. A head that
    cannot be read still names its subfeed (count 0, so that it is followed and its providers
    are asked to rewrite it), but the channel's answer is then incomplete: a restore must not
    end on it."""
    keys = await link._require_bucket().list(subfeed_list_prefix(link.channel, feed_id))
    heads, problems = [], []
    for sh in subfeed_hashes_from_keys(link.channel, feed_id, keys):
        try:
            count = parse_head(await link.bucket_get(subfeed_head_path(link.channel, feed_id, sh))).count
        except (BucketObjectMissing, HeadError) as exc:
            problems.append(f"the head of subfeed {sh} cannot be read ({exc})")
            count = 0
        heads.append(KnownHead(link.channel, sh, count))
    return heads, problems


async def newest_known_heads(links, feed_id: str) -> tuple[list[KnownHead], dict[str, str]]:
    """Every subfeed of ``feed_id`` known on ``links`` with its newest known count, and the
    channels that could not be asked or answered incompletely (channel -> why).

    The one place that decides what "newest known" means. Today: the subfeed heads in each
    channel's bucket (found by listing it, spec/bucket.md §3.1); providers bring the buckets up
    to date when the subfeeds are followed. With witnessed checkpoints this becomes the newest
    witnessed checkpoint of each subfeed.
    """
    kf.normalize_feed_id(feed_id)
    heads: list[KnownHead] = []
    failed: dict[str, str] = {}
    for link in links:
        try:
            with anyio.fail_after(CHANNEL_TIMEOUT_SECONDS):
                await link.connected.wait()  # a daemon just started: its channels are coming up
                found, problems = await _heads_on(link, feed_id)
            heads += found
            if problems:
                failed[link.channel] = "; ".join(problems)
        except Exception as exc:  # transport of any kind: this channel says nothing
            failed[link.channel] = f"{type(exc).__name__}: {exc}"
    return heads, failed

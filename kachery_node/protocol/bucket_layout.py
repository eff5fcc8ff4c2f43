"""Where things live in a channel's bucket (spec/bucket.md). Every path starts ``<channel>/``.

* files and chunks: ``<channel>/sha1/aa/bb/cc/<sha1>`` (the original's layout: raw bytes);
* subfeeds: ``<channel>/feeds/<p(feedId)>/subfeeds/<p(subfeedHash)>/`` holding
  ``head`` (mutable: count and the messages after the last full segment) and
  ``segments/<index>`` (immutable: exactly ``SEGMENT_SIZE`` messages);
* task results: ``<channel>/task_results/<p(taskHash)>``.

``p(h) = h[0:2]/h[2:4]/h[4:6]/h`` spreads objects over prefixes as the original did.
"""

from __future__ import annotations

import re

SEGMENT_SIZE = 1000
_HEX = re.compile(r"[0-9a-f]+")


def pathify(h: str) -> str:
    if not _HEX.fullmatch(h) or len(h) < 6:
        raise ValueError(f"not a lowercase hex hash: {h!r}")
    return f"{h[0:2]}/{h[2:4]}/{h[4:6]}/{h}"


def file_path(channel: str, sha1: str) -> str:
    return f"{channel}/sha1/{pathify(sha1)}"


def subfeed_prefix(channel: str, feed_id: str, subfeed_hash: str) -> str:
    return f"{channel}/feeds/{pathify(feed_id)}/subfeeds/{pathify(subfeed_hash)}"


def subfeed_head_path(channel: str, feed_id: str, subfeed_hash: str) -> str:
    return subfeed_prefix(channel, feed_id, subfeed_hash) + "/head"


def subfeed_segment_path(channel: str, feed_id: str, subfeed_hash: str, index: int) -> str:
    if index < 0:
        raise ValueError("segment index must be >= 0")
    return subfeed_prefix(channel, feed_id, subfeed_hash) + f"/segments/{index}"


def task_result_path(channel: str, task_hash: str) -> str:
    return f"{channel}/task_results/{pathify(task_hash)}"

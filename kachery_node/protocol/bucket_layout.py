"""Where things live in a channel's bucket (spec/bucket.md). Every path starts ``<channel>/``.

* files and chunks: ``<channel>/sha1/aa/bb/cc/<sha1>`` (the original's layout: raw bytes);
* subfeeds: ``<channel>/feeds/<p(feedId)>/subfeeds/<p(subfeedHash)>/`` holding
  ``head`` (mutable: count and the messages after the last full segment),
  ``segments/<index>`` (immutable: exactly ``SEGMENT_SIZE`` messages), ``checkpoint`` (the
  newest witnessed checkpoint) and ``fork`` (a fork proof; spec/witness.md);
* task results: ``<channel>/task_results/<p(taskHash)>``.

``p(h) = h[0:2]/h[2:4]/h[4:6]/h`` spreads objects over prefixes as the original did.

These shapes are the only objects a channel's bucket holds: :func:`upload_prefix` checks a path
a node asks to write against them (the hub signs nothing else), so that no one can plant an
object whose key is a directory of another's (``feeds/ab`` above ``feeds/ab/…/head``). No valid
path is a prefix of another valid path.
"""

from __future__ import annotations

import re

from ..errors import InvalidPathError

SEGMENT_SIZE = 1000
_HEX = re.compile(r"[0-9a-f]+")


def _p(name: str, length: int) -> str:
    """A regex matching exactly ``p(h)`` for a ``length``-hex hash ``h`` (the three directory
    levels must be the hash's own first characters); ``name`` keeps group names unique."""
    return (rf"(?P<{name}1>[0-9a-f]{{2}})/(?P<{name}2>[0-9a-f]{{2}})/(?P<{name}3>[0-9a-f]{{2}})"
            rf"/(?P={name}1)(?P={name}2)(?P={name}3)[0-9a-f]{{{length - 6}}}")


# The writable shapes, relative to the channel's prefix, by top-level prefix. Segment indexes
# are decimal without leading zeros, below 10**15 (10**18 messages).
_SHAPES: dict[str, re.Pattern[str]] = {
    "sha1": re.compile(rf"sha1/{_p('s', 40)}"),
    "feeds": re.compile(rf"feeds/{_p('f', 64)}/subfeeds/{_p('s', 40)}"
                        r"/(?:head|checkpoint|fork|segments/(?:0|[1-9][0-9]{0,14}))"),
    "task_results": re.compile(rf"task_results/{_p('t', 64)}"),
}
_SHAPE_TEXT = ("sha1/<p(sha1)>; feeds/<p(feedId)>/subfeeds/<p(subfeedHash)>/head, …/checkpoint, …/fork "
               "or …/segments/<i>; "
               "task_results/<p(taskHash)>")


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


def subfeed_checkpoint_path(channel: str, feed_id: str, subfeed_hash: str) -> str:
    """The subfeed's newest witnessed checkpoint (spec/witness.md §3), beside its head."""
    return subfeed_prefix(channel, feed_id, subfeed_hash) + "/checkpoint"


def subfeed_fork_path(channel: str, feed_id: str, subfeed_hash: str) -> str:
    """A proof that the subfeed forked (spec/witness.md §5), beside its head."""
    return subfeed_prefix(channel, feed_id, subfeed_hash) + "/fork"


def subfeed_segment_path(channel: str, feed_id: str, subfeed_hash: str, index: int) -> str:
    if index < 0:
        raise ValueError("segment index must be >= 0")
    return subfeed_prefix(channel, feed_id, subfeed_hash) + f"/segments/{index}"


def task_result_path(channel: str, task_hash: str) -> str:
    return f"{channel}/task_results/{pathify(task_hash)}"


def upload_prefix(path: object) -> str:
    """The top-level prefix (``sha1``, ``feeds`` or ``task_results``) of ``path``, a path
    relative to the channel's prefix, if it has one of the shapes of spec/bucket.md §1; else
    raise :class:`~kachery_node.errors.InvalidPathError` naming the shapes.

    ``p(h)`` must be the hash's own first three byte pairs, hashes have their exact lengths
    (SHA-1 40 hex; feed IDs and task hashes 64), segment indexes are decimal without leading
    zeros.

    >>> upload_prefix("sha1/aa/bb/cc/aabbcc" + "0" * 34)
    'sha1'
    """
    if not isinstance(path, str):
        raise InvalidPathError("an object path must be a string")
    top = path.split("/", 1)[0]
    shape = _SHAPES.get(top)
    if shape is None or not shape.fullmatch(path):
        raise InvalidPathError(f"{path[:200]!r} is not an object of the bucket layout (spec/bucket.md "
                               f"§1: {_SHAPE_TEXT}; p(h) = h[0:2]/h[2:4]/h[4:6]/h, lowercase hex)")
    return top

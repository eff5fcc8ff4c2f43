"""Fork-safe restore of a feed's key on a new machine (spec/feeds.md §8).

:func:`restore_from_backup` takes the key into the store, *restoring*: the store refuses
appends. :func:`catch_up` asks the daemon which subfeeds of the feed its channels know and how
far each goes (``POST /api/feeds/catch-up``; the daemon follows them all), waits until the
store holds at least that much of each, and only then ends the restore. Restoring an old backup
therefore cannot fork the feed: by the time this machine appends, it has what the old machine
published after the backup, and its appends chain after it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import kachery_feeds as kf

from .errors import DaemonNotRunningError, RestoreNotCaughtUpError
from .storage.node_storage import Storage

DEFAULT_TIMEOUT_SECONDS = 120.0


@dataclass
class CatchUpResult:
    """What a finished catch-up found: ``known`` subfeed hash -> newest known count (the
    store now holds at least that), ``channels`` asked."""

    feed_id: str
    known: dict[str, int] = field(default_factory=dict)
    channels: list[str] = field(default_factory=list)


def restore_from_backup(storage: Storage, backup_path: str | os.PathLike) -> kf.Feed:
    """Take a feed's key from a backup file into ``storage``; the feed is restoring."""
    return storage.feeds.restore_key(Path(backup_path).read_bytes())


def catch_up(storage: Storage, feed_id: str, *, channel: str | None = None,
             timeout: float = DEFAULT_TIMEOUT_SECONDS) -> CatchUpResult:
    """Bring a restoring feed up to the newest known head of each of its subfeeds through the
    daemon, then end the restore. Raises :class:`RestoreNotCaughtUpError` (the feed stays
    restoring) when that cannot be done within ``timeout`` seconds."""
    from .daemon_client import DaemonClient

    store = storage.feeds
    feed_id = kf.normalize_feed_id(feed_id)
    client = DaemonClient(storage.directory)
    if not client.is_running():
        raise RestoreNotCaughtUpError(
            f"feed {feed_id} stays restoring (appends refused): no kachery daemon runs for "
            f"{storage.directory}, so the newest messages of the feed cannot be fetched. Start it "
            f"(`kachery node start`) and run `kachery feed restore --resume {feed_id}`")
    body = {"feed": feed_id, **({"channel": channel} if channel else {})}
    try:
        answer = client.request("POST", "/api/feeds/catch-up", json_body=body)
    except DaemonNotRunningError as exc:
        raise RestoreNotCaughtUpError(f"feed {feed_id} stays restoring: {exc}") from exc
    if not answer["channels"]:
        raise RestoreNotCaughtUpError(
            f"feed {feed_id} stays restoring: this node has joined no channel to fetch its messages "
            "from (`kachery node join CHANNEL`)")
    if answer["unreachable"]:
        why = "; ".join(f"{c}: {reason}" for c, reason in answer["unreachable"].items())
        raise RestoreNotCaughtUpError(
            f"feed {feed_id} stays restoring: these channels could not be asked what they hold of it: "
            f"{why}. Retry with `kachery feed restore --resume {feed_id}` (add --channel to use only "
            "some channels)")
    known: dict[str, int] = {}
    for head in answer["heads"]:
        known[head["subfeed_hash"]] = max(known.get(head["subfeed_hash"], 0), head["count"])
    deadline = time.monotonic() + timeout
    with store.watcher() as watcher:
        while True:
            try:
                store.finish_restore(feed_id, known)
                return CatchUpResult(feed_id, known, answer["channels"])
            except kf.RestoreIncompleteError as exc:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RestoreNotCaughtUpError(
                        f"{exc} (waited {timeout:g} s; rerun `kachery feed restore --resume {feed_id}`)"
                    ) from exc
                watcher.wait(min(remaining, 1.0))

"""The Python API's way to the network: ask the local daemon, which reaches the channels.

Scripts keep calling ``kn.load_file``, ``kn.load_subfeed`` and friends; when content is not in
local storage and a daemon serves this storage directory, these functions ask it to fetch the
content from the node's channels (every joined channel, unless ``channel=`` narrows it). The
daemon writes verified content into the same storage, so the caller then reads it locally.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .daemon_client import DaemonClient
from .errors import DaemonError, NotFoundError

FETCH_READ_TIMEOUT = 120.0  # a stalled stream fails; a long one does not

_ERRORS: dict[str, type[Exception]] = {"NotFoundError": NotFoundError}


def daemon_for(storage_dir: str | os.PathLike) -> DaemonClient | None:
    """The running daemon of this storage directory, or None."""
    client = DaemonClient(Path(storage_dir))
    return client if client.is_running() else None


def fetch_file(storage_dir: str | os.PathLike, uri: str, *, channel: str | None = None,
               progress: Callable[[int, int], None] | None = None, start: int | None = None,
               end: int | None = None) -> str:
    """Have the daemon fetch ``uri`` from its channels into the storage; returns the local path.

    With ``start``/``end`` (a large file's byte range), only the chunks covering bytes
    ``[start, end)`` are fetched, into the file's partial copy
    (:func:`~kachery_node.storage.partial_files.read_partial_range` reads them); the path
    returned is then that copy's, or the stored file's if it is complete.

    Raises :class:`~kachery_node.NotFoundError` when no channel delivers it (the message says
    which channels were tried and why), and DaemonNotRunningError if no daemon runs.
    """
    client = DaemonClient(Path(storage_dir))
    body: dict = {"uri": uri, **({"channel": channel} if channel else {})}
    if start is not None or end is not None:
        body["range"] = {"start": start or 0, "end": end}
    try:
        with client.stream("POST", "/api/files/fetch", json_body=body,
                           read_timeout=FETCH_READ_TIMEOUT) as events:
            for event in events:
                if event["type"] == "progress" and progress:
                    progress(event["done"], event["total"])
                elif event["type"] == "finished":
                    return event["path"]
                elif event["type"] == "error":
                    kind = _ERRORS.get(event.get("kind", ""), DaemonError)
                    raise kind(event["error"], uri=uri) if kind is NotFoundError else kind(event["error"])
    except DaemonError as exc:
        if exc.status == 404:  # refused before streaming: content or channel not there
            raise NotFoundError(exc.reason or str(exc), uri=uri) from None
        raise
    raise DaemonError(f"the daemon stopped answering while fetching {uri}")


def follow_subfeed(storage_dir: str | os.PathLike, uri: str, channel: str | None = None) -> list[str]:
    """Ask the daemon to follow a remote subfeed (it keeps doing so, also after restarts)."""
    body = {"uri": uri, **({"channel": channel} if channel else {})}
    return DaemonClient(Path(storage_dir)).request("POST", "/api/feeds/follow", json_body=body)["following"]


def unfollow_subfeed(storage_dir: str | os.PathLike, uri: str) -> bool:
    """Ask the daemon to stop following a remote subfeed; False if it did not follow it."""
    answer = DaemonClient(Path(storage_dir)).request("POST", "/api/feeds/unfollow", json_body={"uri": uri})
    return answer["unfollowed"]


def upload_file(storage_dir: str | os.PathLike, uri: str, channel: str) -> dict:
    """Ask the daemon to push stored content to ``channel``'s bucket."""
    return DaemonClient(Path(storage_dir)).request(
        "POST", "/api/files/upload", json_body={"uri": uri, "channel": channel}, timeout=3600)

"""What the daemon's exchanges need from one joined channel: :class:`ChannelLink`.

The file, feed and task exchanges are written against this small interface; the channel
runtime implements it over the hub's API, the pub-sub backend and the bucket backend. Keeping
the exchanges away from transports (as h11 keeps HTTP away from sockets) lets a backend change
without touching them.

Bands are named by the role that publishes on them: ``request-files`` carries file requests
(published by nodes with the request-files role, heard by providers), ``provide-files`` carries
providers' status messages (heard by requesters), and likewise for feeds and tasks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from ..identity import Keypair
from ..protocol.node_messages import Envelope

ROLES = (
    "request-files", "provide-files",
    "request-feeds", "provide-feeds",
    "request-tasks", "provide-tasks",
)
#: The band a role publishes on is named after the role; it listens on its partner's band.
PARTNER_BAND = {
    "request-files": "provide-files", "provide-files": "request-files",
    "request-feeds": "provide-feeds", "provide-feeds": "request-feeds",
    "request-tasks": "provide-tasks", "provide-tasks": "request-tasks",
}

ProgressCallback = Callable[[int, int], None]  # (bytes done, bytes total)


class BucketObjectMissing(Exception):
    """The bucket has no object at that path."""


class ChannelLink(Protocol):
    """One joined channel, as the exchanges see it."""

    channel: str
    node_id: str
    keypair: Keypair
    #: Effective roles of this node on the channel (granted ∩ requested).
    roles: frozenset[str]

    async def publish(self, band: str, body: dict[str, Any]) -> None:
        """Seal ``body`` (adds channel, band, time, nonce, signature) and publish it on ``band``.

        Raises PermissionError if this node may not publish there."""

    def may(self, node_id: str, role: str) -> bool:
        """Whether ``node_id`` holds ``role`` on this channel per the verified membership feed."""

    async def bucket_head(self, path: str) -> int | None:
        """Size of the object at ``path``, or None if there is none."""

    async def bucket_get(self, path: str, start: int | None = None, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of the object (all of it by default); raises BucketObjectMissing."""

    async def bucket_download(self, path: str, dest: Path, progress: ProgressCallback | None = None) -> int:
        """Stream the whole object into ``dest``; returns its size. ``dest`` is a path for a new
        file, or path-like with an async ``write_piece(bytes)`` and a blocking
        ``write_blocking(bytes)`` for worker threads (files_partial.ChunkSink: a chunk written to
        its range of the file being fetched and hashed as it streams), which a link should feed
        the body to instead; one that only writes files may use its path."""

    async def upload(self, path: str, data: bytes | Path, *,
                     progress: ProgressCallback | None = None) -> None:
        """Put ``data`` (bytes, or a file's whole content) at ``path`` through a signed upload URL
        from the hub. Raises PermissionError without the matching provide role."""

    async def upload_many(self, items: list[tuple[str, bytes]]) -> None:
        """Put several small objects (path, bytes) at once (one request for their URLs)."""


#: Handlers receive verified envelopes: signature, channel/band binding, freshness and replay
#: have been checked, and the sender holds the role that publishes on the band.
MessageHandler = Callable[[ChannelLink, str, Envelope], Awaitable[None]]

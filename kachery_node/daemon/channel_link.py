"""What the daemon's exchanges need from one joined channel: :class:`ChannelLink`.

The file, feed and task exchanges are written against this small interface; the channel
runtime implements it over the hub's API, the pub-sub backend and the bucket backend. Keeping
the exchanges away from transports (as h11 keeps HTTP away from sockets) lets a backend change
without touching them.

Bands are named by the role that publishes on them: ``request-files`` carries file requests
(published by nodes with the request-files role, heard by providers), ``provide-files`` carries
providers' status messages (heard by requesters), and likewise for feeds and tasks. The table of
roles and bands is :mod:`kachery_node.protocol.roles`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from ..errors import NotFoundError
from ..identity import Keypair
from ..protocol.node_messages import Envelope
from ..transport.bucket.bucket_interface import ByteSink, Destination, ProgressCallback, UploadData

__all__ = ["BucketObjectMissing", "ByteSink", "ChannelLink", "Destination", "InlineHandler",
           "MessageHandler", "ProgressCallback", "refresh_if_lacking"]


class BucketObjectMissing(NotFoundError):
    """The bucket has no object at that path."""


class ChannelLink(Protocol):
    """One joined channel, as the exchanges see it."""

    channel: str
    node_id: str
    keypair: Keypair
    #: Effective roles of this node on the channel (granted ∩ requested).
    roles: frozenset[str]
    #: The channel's hub ID, which is also its witness key (spec/witness.md §4.1).
    hub_id: str

    async def publish(self, band: str, body: dict[str, Any], *, attachment: bytes | None = None,
                      signed: bool = True) -> None:
        """Seal ``body`` (adds channel, band, time, nonce, signature), with ``attachment`` (bytes
        signed with it and carried as they are, e.g. wire lines), and publish it on ``band``.
        ``signed=False``: an unsigned push instead (``newSubfeedMessages`` only,
        :func:`~kachery_node.protocol.node_messages.seal_unsigned_push`).

        Raises PermissionError if this node may not publish there."""

    def may(self, node_id: str, role: str) -> bool:
        """Whether ``node_id`` holds ``role`` on this channel per the verified membership feed."""

    async def refresh_roles(self) -> frozenset[str]:
        """Re-read the membership now (rate-limited) and return this node's effective roles; a
        role granted a moment ago then counts (the link reconnects for it)."""

    async def bucket_head(self, path: str) -> int | None:
        """Size of the object at ``path``, or None if there is none."""

    async def bucket_get(self, path: str, start: int | None = None, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of the object (all of it by default); raises BucketObjectMissing."""

    async def bucket_download(self, path: str, dest: Destination, progress: ProgressCallback | None = None,
                              *, start: int | None = None, end: int | None = None) -> int:
        """Stream the object at ``path`` (or its bytes ``[start, end)``) into ``dest``; returns how
        many bytes came; raises BucketObjectMissing. ``dest`` is the path of a new file, or a
        :class:`ByteSink` (``write_blocking(piece)``, called from a worker thread: e.g. a sink that
        hashes as it writes), which then gets every byte instead of a file. ``progress(done,
        total)`` is called as bytes arrive."""

    async def upload(self, path: str, data: UploadData, *,
                     progress: ProgressCallback | None = None) -> None:
        """Put ``data`` (bytes, a file's whole content, or a range of a file) at ``path`` through
        a signed upload URL from the hub. Raises PermissionError without the matching provide
        role."""

    async def upload_many(self, items: list[tuple[str, bytes]], *,
                          then: tuple[str, bytes] | None = None) -> None:
        """Put several small objects (path, bytes) at once (one request for their URLs), then
        ``then`` (path, bytes) once all of them are in (its URL asked for in the same request)."""

    async def witness_request(self, type_: str, **fields: Any) -> dict[str, Any]:
        """A request to the channel's hub as witness (spec/witness.md §4), ``channel`` added;
        raises HubRequestError (``WitnessRefusedError``'s ``details`` in ``.details``)."""


async def refresh_if_lacking(links: Sequence[ChannelLink], role: str) -> None:
    """Before a request: re-read the membership of each link where this node lacks ``role``, so
    that a grant made just before the request counts."""
    for link in links:
        if role not in link.roles:
            await link.refresh_roles()


#: Handlers receive verified envelopes: signature, channel/band binding, freshness and replay
#: have been checked, and the sender holds the role that publishes on the band.
MessageHandler = Callable[[ChannelLink, str, Envelope], Awaitable[None]]

#: A flow's fast path for the messages it can take at once (a live push is verified and stored
#: without waiting for anything): called by the channel's receiving task itself, it returns True
#: when it took the message, False to have it go to the flow's MessageHandler in a task of its own
#: (which costs a task switch). It must not block.
InlineHandler = Callable[[ChannelLink, str, Envelope], bool]

"""An in-memory :class:`~kachery_node.daemon.channel_link.ChannelLink` for unit tests of the exchanges.

This exists to test the exchange logic (who asks, who answers, backoff, takeover, verification,
resume) quickly and deterministically, inside one trio run and without sockets. End-to-end tests
with the real hub, pub-sub relay and bucket, as separate processes, live elsewhere (the lead
writes them); nothing here stands in for those.

What is real: envelopes are sealed with the node's key and opened (signature, channel/band
binding, freshness, replay) with :mod:`kachery_node.protocol.node_messages` for every receiver, so
the signing path is exercised. What is simulated:

* :class:`MemoryChannel` is one channel: a dict as the bucket (``path -> bytes``; an upload
  lands atomically when complete, like an object store), a dict as the signed membership feed
  (``node_id -> roles``, behind :meth:`MemoryLink.may`), and a broadcast of each published
  envelope to every attached link's handler, the sender included (as Ably echoes).
* With ``runtime_checks=True`` (the default) delivery behaves as the daemon's channel runtime
  is specified to: a link only hears the bands its roles subscribe to, and only from senders
  whom the membership gives the role that publishes on that band. With ``runtime_checks=False``
  every link hears everything, so a test can show that the exchange's own guards hold even if
  the runtime let something through.
* Handlers run inline, one after the other, in publishing order (deterministic), unless
  ``spawn_handlers_in`` holds a task group: then each delivery runs as its own task, as the
  daemon's channel runtime does, so their order is up to the scheduler.
* ``bucket_download`` streams into a destination that has ``write_blocking`` (a ByteSink, as
  the channel runtime takes) or ``write_piece`` (a chunk's sink), as the channel runtime does,
  unless ``stream_downloads`` is False (for ``write_piece``).
* ``upload_hook(link, path)`` is awaited before an upload's bytes are written: block in it to
  simulate a slow or killed provider, raise in it to simulate a failing one.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from kachery_node.daemon.channel_link import BucketObjectMissing, MessageHandler
from kachery_node.errors import LinkedFileChangedError
from kachery_node.identity import Keypair
from kachery_node.protocol.node_messages import ReplayGuard, open_envelope, seal, seal_unsigned_push
from kachery_node.protocol.roles import partner_role
from kachery_node.transport.bucket.bucket_interface import FileRange, UploadData

log = logging.getLogger("tests.memory_link")

_BLOCK = 1 << 20


class MemoryChannel:
    """One channel: bucket, membership and pub-sub in memory (see the module docstring)."""

    def __init__(self, name: str, *, runtime_checks: bool = True) -> None:
        self.name = name
        self.runtime_checks = runtime_checks
        #: Whether downloads use a destination's ``write_piece`` when it has one (as the
        #: daemon's channel runtime does); False: always write a new file, as a plain link would.
        self.stream_downloads = True
        self.bucket: dict[str, bytes] = {}
        self.membership: dict[str, frozenset[str]] = {}
        self.links: list[MemoryLink] = []
        #: Every published message, in order: (sender node ID, band, body as sealed).
        self.published: list[tuple[str, str, dict[str, Any]]] = []
        #: The attachment of each published message (None: none), in the same order.
        self.published_attachments: list[bytes | None] = []
        #: Whether each published message had an envelope signature (False: an unsigned push).
        self.published_signed: list[bool] = []
        #: Completed uploads: (node ID, path). And downloads: (node ID, path).
        self.uploads: list[tuple[str, str]] = []
        self.downloads: list[tuple[str, str]] = []
        self.upload_hook: Callable[[MemoryLink, str], Awaitable[None]] | None = None
        self.uploads_in_flight = 0
        self.max_uploads_in_flight = 0
        #: Exceptions raised by handlers (a handler should never raise; tests assert this is empty).
        self.handler_errors: list[BaseException] = []
        #: When set, each handler call runs as a task of this group (see the module docstring).
        self.spawn_handlers_in: anyio.abc.TaskGroup | None = None

    def join(self, keypair: Keypair, roles: Iterable[str], handler: MessageHandler | None = None,
             *, member: bool = True) -> MemoryLink:
        """Attach a node. ``member=False`` keeps it out of the membership (it still holds
        ``roles`` locally, as a node with a stale or forged idea of its grants would)."""
        link = MemoryLink(self, keypair, frozenset(roles), handler)
        if member:
            self.membership[keypair.public_hex] = frozenset(roles)
        self.links.append(link)
        return link

    def requests(self) -> list[dict[str, Any]]:
        """Bodies of the ``requestFile`` messages published so far."""
        return [b for _s, band, b in self.published
                if band == "request-files" and b["type"] == "requestFile"]

    def statuses(self, status: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """(sender, body) of the ``uploadStatus`` messages, optionally of one status."""
        return [(s, b) for s, band, b in self.published
                if band == "provide-files" and b["type"] == "uploadStatus"
                and (status is None or b["status"] == status)]

    async def _deliver(self, raw: bytes, band: str, publisher: str) -> None:
        """Deliver ``raw`` to every link that hears it; ``publisher``: who published it, as a
        pub-sub service that authenticates publishers (all of kachery's) names them."""
        for link in list(self.links):
            if link.handler is None or not link.attached:
                continue
            try:
                now_ms = int(time.time() * 1000)
                env = open_envelope(raw, channel=self.name, band=band, now_ms=now_ms,
                                    publisher=publisher)
                link.replay_guard.check(env, now_ms=now_ms)
            except Exception as exc:  # a forged or replayed message: what a runtime would drop
                self.handler_errors.append(exc)
                continue
            if self.runtime_checks:
                if not any(partner_role(r) == band for r in link.roles):
                    continue  # not subscribed to that band
                if band not in self.membership.get(env.sender, frozenset()):
                    continue  # the sender may not publish there
            if self.spawn_handlers_in is not None:
                self.spawn_handlers_in.start_soon(self._call, link, band, env)
            else:
                await self._call(link, band, env)

    async def _call(self, link: MemoryLink, band: str, env: Any) -> None:
        assert link.handler is not None
        try:
            await link.handler(link, band, env)
        except Exception as exc:
            log.exception("handler of %s failed", link.node_id[:12])
            self.handler_errors.append(exc)


class MemoryLink:
    """One node's view of a :class:`MemoryChannel`; implements ChannelLink."""

    def __init__(self, channel: MemoryChannel, keypair: Keypair, roles: frozenset[str],
                 handler: MessageHandler | None) -> None:
        self.hub = channel
        self.channel = channel.name
        self.keypair = keypair
        self.node_id = keypair.public_hex
        self.roles = roles
        self.hub_id = "0" * 64  # no hub: nothing here is witnessed by one
        self.handler = handler
        self.attached = True
        self.replay_guard = ReplayGuard()

    def detach(self) -> None:
        """The node went away: it hears nothing more and cannot publish or upload."""
        self.attached = False

    def _check_attached(self) -> None:
        if not self.attached:
            raise ConnectionError(f"node {self.node_id[:12]} is detached from {self.channel}")

    async def publish(self, band: str, body: dict[str, Any], *, attachment: bytes | None = None,
                      signed: bool = True) -> None:
        self._check_attached()
        if band not in self.roles:  # a band is named after the role that publishes on it
            raise PermissionError(f"this node may not publish on {self.channel}/{band}")
        now_ms = int(time.time() * 1000)
        if signed:
            raw = seal(self.keypair, channel=self.channel, band=band, body=body, now_ms=now_ms,
                       attachment=attachment)
        else:
            raw = seal_unsigned_push(band=band, body=body, attachment=attachment or b"")
        sealed = open_envelope(raw, channel=self.channel, band=band, now_ms=now_ms,
                               publisher=self.node_id)
        self.hub.published.append((self.node_id, band, sealed.body))
        self.hub.published_attachments.append(sealed.attachment)
        self.hub.published_signed.append(sealed.signed)
        await self.hub._deliver(raw, band, self.node_id)

    def may(self, node_id: str, role: str) -> bool:
        return role in self.hub.membership.get(node_id, frozenset())

    async def refresh_roles(self) -> frozenset[str]:
        await anyio.lowlevel.checkpoint()
        return self.roles  # its roles are what it joined with

    async def bucket_head(self, path: str) -> int | None:
        await anyio.lowlevel.checkpoint()
        data = self.hub.bucket.get(path)
        return None if data is None else len(data)

    async def bucket_get(self, path: str, start: int | None = None, end: int | None = None) -> bytes:
        await anyio.lowlevel.checkpoint()
        try:
            data = self.hub.bucket[path]
        except KeyError:
            raise BucketObjectMissing(path) from None
        return data[start or 0 : len(data) if end is None else end]

    async def bucket_download(self, path: str, dest: Path,
                              progress: Callable[[int, int], None] | None = None) -> int:
        try:
            data = self.hub.bucket[path]
        except KeyError:
            raise BucketObjectMissing(path) from None
        write_piece = getattr(dest, "write_piece", None) if self.hub.stream_downloads else None
        write_blocking = getattr(dest, "write_blocking", None)
        if write_blocking is not None:  # a ByteSink (e.g. a segment gathered in memory)
            for pos in range(0, len(data), _BLOCK):
                write_blocking(data[pos : pos + _BLOCK])
                if progress:
                    progress(min(pos + _BLOCK, len(data)), len(data))
                await anyio.lowlevel.checkpoint()
        elif write_piece is not None:  # as the channel runtime does for a chunk's sink
            for pos in range(0, len(data), _BLOCK):
                await write_piece(data[pos : pos + _BLOCK])
                if progress:
                    progress(min(pos + _BLOCK, len(data)), len(data))
                await anyio.lowlevel.checkpoint()
        else:
            with open(dest, "xb") as f:
                for pos in range(0, len(data), _BLOCK):
                    f.write(data[pos : pos + _BLOCK])
                    if progress:
                        progress(min(pos + _BLOCK, len(data)), len(data))
                    await anyio.lowlevel.checkpoint()
        self.hub.downloads.append((self.node_id, path))
        return len(data)

    async def witness_request(self, type_: str, **fields: Any) -> dict[str, Any]:
        raise ConnectionError("the in-memory channel has no hub to witness")

    async def upload(self, path: str, data: UploadData, *,
                     progress: Callable[[int, int], None] | None = None) -> None:
        self._check_attached()
        if "provide-files" not in self.roles or not self.may(self.node_id, "provide-files"):
            raise PermissionError(f"no upload URL: {self.node_id[:12]} lacks provide-files")
        if not path.startswith(f"{self.channel}/sha1/"):
            raise PermissionError(f"no upload URL for {path} on channel {self.channel}")
        if isinstance(data, FileRange):  # as the HTTP upload streams it, the file checked around
            content = await anyio.to_thread.run_sync(_read_range, data)
        else:
            content = data.read_bytes() if isinstance(data, Path) else bytes(data)
        self.hub.uploads_in_flight += 1
        self.hub.max_uploads_in_flight = max(self.hub.max_uploads_in_flight,
                                             self.hub.uploads_in_flight)
        try:
            if self.hub.upload_hook is not None:
                await self.hub.upload_hook(self, path)
            for pos in range(0, len(content), _BLOCK):
                if progress:
                    progress(min(pos + _BLOCK, len(content)), len(content))
                await anyio.lowlevel.checkpoint()
            self._check_attached()
            self.hub.bucket[path] = content
            self.hub.uploads.append((self.node_id, path))
        finally:
            self.hub.uploads_in_flight -= 1


def _read_range(source: FileRange) -> bytes:
    """A file range's bytes, with the checks the HTTP upload makes around its reads."""
    with open(source.path, "rb") as f:
        if source.unchanged is not None and not source.unchanged(os.fstat(f.fileno())):
            raise LinkedFileChangedError(f"{source.path} changed")
        f.seek(source.start)
        content = f.read(source.size)
        if len(content) != source.size or (
                source.unchanged is not None and not source.unchanged(os.fstat(f.fileno()))):
            raise LinkedFileChangedError(f"{source.path} changed")
    return content

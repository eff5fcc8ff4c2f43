"""Obtaining one object over the joined channels: the driver of
:class:`~kachery_node.protocol.file_requester.FileRequester`.

:class:`ObjectFetch` performs what the core asks with each channel's
:class:`~.channel_link.ChannelLink` (HEADs, downloads, ``requestFile`` messages) and feeds it
the results, the statuses the exchange routes here, and the time. Downloads go to a fresh
destination per attempt, made by the caller's ``new_sink`` (a whole file's
:class:`~kachery_node.storage.partial_files.IncomingFile`, a chunk's
:class:`~kachery_node.storage.partial_files.ChunkSink`) which hashes the bytes as they are
written; a destination that fails verification is discarded, the one that passes is handed back.

Links call progress callbacks in the event loop's thread (the channel runtime hops back from its
download thread; the local API's callback needs that too), so they read the loop's clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import anyio

from ..errors import NotFoundError
from ..protocol.file_messages import (
    CancelTransfer,
    DownloadObject,
    DownloadOutcome,
    Failed,
    GiveUp,
    HeadObject,
    Missing,
    Obtained,
    Publish,
    Rejected,
    RequesterAction,
    UploadStatus,
    Verified,
    new_request_id,
)
from ..protocol.file_requester import FileRequester, RequesterChannel, Target
from ..protocol.file_timeouts import FileTimeouts
from .action_loop import ActionLoop, now
from .channel_link import BucketObjectMissing, ChannelLink, ProgressCallback

log = logging.getLogger("kachery.daemon.files")


class DownloadSink(Protocol):
    """Where one download goes (path-like for links that write files; ``write_piece`` /
    ``write_blocking`` for links that stream), checked by :meth:`commit`."""

    def __fspath__(self) -> str: ...

    async def write_piece(self, data: bytes) -> None: ...

    def write_blocking(self, data: bytes | memoryview) -> None: ...

    def commit(self) -> str | None:
        """None if the bytes are the object (kept), else why not. Blocking."""

    def discard(self) -> None: ...


class ObjectFetch:
    """One object obtained through ``links`` (in that order): :meth:`run` returns the link it
    came through, with the verified destination in :attr:`sink`; raises NotFoundError naming
    every channel and why it could not deliver."""

    def __init__(self, links: Sequence[ChannelLink], target: Target, timeouts: FileTimeouts,
                 new_sink: Callable[[], DownloadSink], progress: ProgressCallback | None,
                 uri: str) -> None:
        self._links = {link.channel: link for link in links}
        channels = [RequesterChannel(link.channel, "request-files" in link.roles) for link in links]
        self.core = FileRequester(target, channels, timeouts, new_request_id)
        self._loop = ActionLoop(self.core)
        self._new_sink = new_sink
        self._progress = progress
        self._uri = uri
        #: The verified download, once :meth:`run` returned.
        self.sink: DownloadSink | None = None

    def on_status(self, channel: str, sender: str, status: UploadStatus) -> None:
        """A provider's status about this object's SHA-1 on ``channel`` (from the exchange)."""
        self._loop.feed(self.core.status_received(now(), channel, sender, status))

    async def run(self) -> ChannelLink:
        self._loop.feed(self.core.start(now()))
        end = await self._loop.run(self._perform)
        if isinstance(end, GiveUp):
            raise NotFoundError(end.message, uri=self._uri)
        return self._links[end.channel]

    async def _perform(self, action: RequesterAction) -> Obtained | GiveUp | None:
        if isinstance(action, Publish):
            link = self._links[action.channel]
            try:
                await link.publish(action.message.BAND, action.message.to_body())
            except Exception as exc:
                request_id = getattr(action.message, "request_id", "")
                self._loop.feed(self.core.publish_failed(now(), request_id, _why(exc)))
        elif isinstance(action, HeadObject):
            self._loop.start_transfer(action.transfer, lambda: self._head(action))
        elif isinstance(action, DownloadObject):
            self._loop.start_transfer(action.transfer, lambda: self._download(action))
        elif isinstance(action, CancelTransfer):
            self._loop.cancel_transfer(action.transfer)
        else:  # Obtained or GiveUp: the end
            return action
        return None

    async def _head(self, action: HeadObject) -> None:
        try:
            size = await self._links[action.channel].bucket_head(action.path)
        except Exception as exc:
            log.warning("bucket HEAD %s on %s failed: %r", action.path, action.channel, exc)
            self._loop.feed(self.core.head_failed(now(), action.transfer, _why(exc)))
            return
        if size is not None and self.core.target.size not in (None, size):
            log.warning("rejected bucket object %s: %d bytes, expected %d", action.path, size,
                        self.core.target.size)
        self._loop.feed(self.core.head_result(now(), action.transfer, size))

    async def _download(self, action: DownloadObject) -> None:
        link = self._links[action.channel]

        def on_progress(done: int, total: int) -> None:
            self._loop.feed(self.core.download_progress(now(), action.transfer, done))
            if self._progress is not None:
                self._progress(done, total)

        sink = self._new_sink()
        kept = False
        try:
            outcome: DownloadOutcome
            try:
                await link.bucket_download(action.path, sink, on_progress)  # type: ignore[arg-type]
            except BucketObjectMissing:
                outcome = Missing()
            except Exception as exc:
                log.warning("download of %s from %s failed: %r", action.path, link.channel, exc)
                outcome = Failed(_why(exc))
            else:
                why = await anyio.to_thread.run_sync(sink.commit)
                if why is None:
                    outcome = Verified()
                else:
                    log.warning("rejected bucket object %s on %s: %s", action.path, link.channel, why)
                    outcome = Rejected(why)
            actions = self.core.download_result(now(), action.transfer, outcome)
            if any(isinstance(a, Obtained) for a in actions):
                self.sink, kept = sink, True
            self._loop.feed(actions)
        finally:
            if not kept:
                sink.discard()


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"

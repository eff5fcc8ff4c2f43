"""Answering one ``requestFile``: the driver of
:class:`~kachery_node.protocol.file_provider.FileProvider`.

:class:`ProviderConversation` performs what the core asks (look the content up in the storage,
HEAD the bucket object, publish statuses, upload through the channel's
:class:`~.channel_link.ChannelLink`) and feeds it the results, other providers' statuses and the
time. What it uploads is read from the verified storage: a chunk is a byte range of the stored
parent file, checked against the requested SHA-1 before a byte leaves (by the parent's recorded
manifest while the parent is unchanged since it was verified, else by hashing it).

:class:`RecentlyInBucket` (one per exchange) remembers the objects this node put in (or found in)
a bucket in the last :data:`IN_BUCKET_MEMORY_S`: a request that comes right after an upload
finished (its requester's own HEAD raced the upload) is answered ``finished`` without asking the
hub again, which under load saves a slow HEAD and, since a provider's HEAD may wait only half of
the requester's answer window, a second upload.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import anyio

from ..errors import LinkedFileChangedError, NotFoundError
from ..protocol.file_messages import (
    CancelTransfer,
    FileRequest,
    FindSource,
    HeadObject,
    ProviderAction,
    ProviderDone,
    Publish,
    StopListening,
    Upload,
    UploadStatus,
)
from ..protocol.file_provider import FileProvider, RecentFailures, Uniform
from ..protocol.file_timeouts import FileTimeouts
from ..storage.file_uris import build_uri
from ..storage.node_storage import Storage
from ..transport.bucket.bucket_interface import FileRange, UploadData
from .action_loop import ActionLoop, now
from .channel_link import ChannelLink

log = logging.getLogger("kachery.daemon.files")

#: How long a put (or found) bucket object is taken to be there without a HEAD. Short: a request
#: racing an upload comes within a HEAD's time of its end, and an object the hub evicted since
#: (it evicts the least recently used first) is only believed there this long.
IN_BUCKET_MEMORY_S = 15.0


class RecentlyInBucket:
    """(channel, sha1) -> size of the objects this node put in or found in a bucket within
    :data:`IN_BUCKET_MEMORY_S` (bounded: older entries are dropped as new ones come)."""

    def __init__(self, memory_s: float = IN_BUCKET_MEMORY_S) -> None:
        self.memory_s = memory_s
        self._at: dict[tuple[str, str], tuple[int, float]] = {}

    def note(self, key: tuple[str, str], size: int, at: float) -> None:
        for old in [k for k, (_size, t) in self._at.items() if at - t > self.memory_s]:
            del self._at[old]
        self._at[key] = (size, at)

    def size(self, key: tuple[str, str], at: float) -> int | None:
        """The object's size if it was put or found within the memory, else None."""
        entry = self._at.get(key)
        return entry[0] if entry is not None and at - entry[1] <= self.memory_s else None


#: Called when a conversation stops listening: (the conversation, a request to serve next).
OnStop = Callable[["ProviderConversation", FileRequest | None], None]


class ProviderConversation:
    """This node providing ``request``'s object on ``link``'s channel (one per (channel, sha1)).

    The exchange routes other providers' statuses (:meth:`on_status`) and duplicate requests
    (:meth:`on_request`) here while :attr:`listening`; ``on_stop`` tells it when to stop."""

    def __init__(self, storage: Storage, link: ChannelLink, request: FileRequest, *,
                 timeouts: FileTimeouts, rng: Uniform, failures: RecentFailures,
                 upload_slots: anyio.CapacityLimiter, on_stop: OnStop,
                 in_bucket: RecentlyInBucket | None = None) -> None:
        self.storage = storage
        self._in_bucket = in_bucket if in_bucket is not None else RecentlyInBucket()
        self.link = link
        self.core = FileProvider(link.channel, request, timeouts, rng, failures)
        self._loop = ActionLoop(self.core)
        self._slots = upload_slots
        self._on_stop = on_stop

    @property
    def listening(self) -> bool:
        return self.core.listening

    def on_status(self, sender: str, status: UploadStatus) -> None:
        self._loop.feed(self.core.status_received(now(), sender, status))

    def on_request(self, request: FileRequest) -> None:
        self._loop.feed(self.core.request_received(request))

    async def run(self) -> None:
        """Carry the conversation to its end (logging, never raising: it runs unobserved in the
        exchange's task group)."""
        request = self.core.request
        try:
            self._loop.feed(self.core.start(now()))
            done = await self._loop.run(self._perform)
            log.debug("providing %s on %s: %s", request.sha1, self.link.channel, done.outcome.value)
        except Exception:
            log.exception("providing %s on %s failed", request.sha1, self.link.channel)
        finally:
            self._on_stop(self, None)  # whatever happened, stop routing to this conversation

    async def _perform(self, action: ProviderAction) -> ProviderDone | None:
        if isinstance(action, FindSource):
            size = await anyio.to_thread.run_sync(self._source_size)
            if size is not None and self.core.request.bad_object:
                log.info("%s reports the bucket object %s as bad: uploading it again",
                         self.core.request.request_id, self.core.path)
            self._loop.feed(self.core.source_missing(now()) if size is None
                            else self.core.source_found(now(), size))
        elif isinstance(action, HeadObject):
            self._loop.start_transfer(action.transfer, lambda: self._head(action))
        elif isinstance(action, Upload):
            self._loop.start_transfer(action.transfer, lambda: self._upload(action))
        elif isinstance(action, CancelTransfer):
            self._loop.cancel_transfer(action.transfer)
        elif isinstance(action, StopListening):
            self._on_stop(self, action.then_serve)
        elif isinstance(action, Publish):
            try:
                await self.link.publish(action.message.BAND, action.message.to_body())
            except Exception as exc:
                log.warning("could not publish %s about %s on %s: %s",
                            getattr(action.message, "status", "?"), self.core.request.sha1,
                            self.link.channel, exc)
        else:  # ProviderDone
            return action
        return None

    async def _head(self, action: HeadObject) -> None:
        size = self._in_bucket.size(self.core.key, now())
        if size is not None:  # put or found there a moment ago: no need to ask the hub
            self._loop.feed(self.core.head_result(now(), action.transfer, size))
            return
        try:
            size = await self.link.bucket_head(action.path)
        except Exception as exc:
            log.warning("bucket HEAD %s on %s failed: %s", action.path, self.link.channel, exc)
            size = None
        if size is not None and size != self.core.size:
            log.info("bucket object %s has %d bytes, not %d: uploading it again",
                     action.path, size, self.core.size)
        elif size is not None:
            self._in_bucket.note(self.core.key, size, now())
        self._loop.feed(self.core.head_result(now(), action.transfer, size))

    async def _upload(self, action: Upload) -> None:
        request, channel = self.core.request, self.link.channel

        def on_progress(done: int, _total: int) -> None:
            self._loop.feed(self.core.upload_progress(now(), action.transfer, done))

        try:
            async with self._slots:  # a chunk that must be hashed first is held (up to 20 MB)
                log.info("uploading %s (%d bytes) to %s", request.sha1, action.size, channel)
                data = await anyio.to_thread.run_sync(self._read_source)
                self._loop.feed(self.core.upload_began(now(), action.transfer))
                await self.link.upload(action.path, data, progress=on_progress)
        except Exception as exc:
            log.warning("upload of %s to %s failed: %s", request.sha1, channel, exc)
            self._loop.feed(self.core.upload_failed(now(), action.transfer,
                                                    f"{type(exc).__name__}: {exc}"))
            return
        log.info("uploaded %s (%d bytes) to %s", request.sha1, action.size, channel)
        self._in_bucket.note(self.core.key, action.size, now())
        self._loop.feed(self.core.upload_finished(now(), action.transfer))

    # -- the content (blocking: run in a worker thread) ---------------------------------------------
    def _source_size(self) -> int | None:
        """Size of what we would upload, if we have it (stat only)."""
        request = self.core.request
        try:
            if request.chunk_of is not None:
                c = request.chunk_of
                try:
                    parent = self.storage.locate(build_uri(c.sha1))
                    return c.end - c.start if c.end <= parent.size else None
                except (NotFoundError, LinkedFileChangedError):
                    pass  # maybe the chunk itself is stored as a file
            return self.storage.locate(build_uri(request.sha1)).size
        except (NotFoundError, LinkedFileChangedError):
            return None

    def _read_source(self) -> UploadData:
        """The verified content to upload: a byte range of the parent, streamed from its file
        when the parent's recorded manifest vouches for it (:meth:`Storage.vouched_chunk`), else
        read and hashed against the requested SHA-1 (:meth:`Storage.load_chunk`); or the stored
        file."""
        request = self.core.request
        if request.chunk_of is not None and self.storage.has_file(build_uri(request.chunk_of.sha1)):
            c = request.chunk_of
            vouched = self.storage.vouched_chunk(build_uri(c.sha1), c.start, c.end, request.sha1)
            if vouched is not None:  # no buffer of the chunk's size, no hashing
                return FileRange(vouched.path, c.start, c.end, vouched.unchanged)
            return self.storage.load_chunk(build_uri(c.sha1), c.start, c.end, request.sha1)
        return Path(self.storage.load_file(build_uri(request.sha1)))

"""Files across nodes: fetch from a channel's bucket, or request them and let a provider upload.

Theory of operation
-------------------
Nodes never talk to each other; a channel's bucket carries the bytes and its pub-sub bands carry
coordination (kachery-doc/node.md "Communications"). To *fetch* ``sha1://<h>`` a node:

1. uses its local storage if the content is there;
2. asks every joined channel's bucket for the object ``<channel>/sha1/aa/bb/cc/<h>`` (a HEAD
   each, cheap) and downloads the first one present;
3. otherwise publishes ``requestFile`` on each channel's ``request-files`` band in turn and
   listens on ``provide-files`` for ``uploadStatus`` messages about ``<h>``: ``started``,
   ``progress``, then ``finished`` (download now) or ``failed``;
4. verifies every download by SHA-1 (and size when known) before keeping a byte of it. A
   tampered bucket object is rejected, reported in the error, and re-requested with
   ``bad_object: true`` so that a provider overwrites it.

Files with a manifest (``?manifest=<m>``; larger than 20 MB) move as chunks: the manifest is
fetched like any small file, then up to five chunks at a time, each an ordinary bucket object
named by its own SHA-1 and requested with ``chunk_of`` so a provider can cut it from its stored
copy of the whole file. Chunks are taken in file order; each is written straight to its place in
one file under ``<storage>/tmp/partial/<h>/`` and hashed as it streams in; verified chunks are
marked there so an interrupted fetch resumes where it stopped. The whole-file hash follows the
verified prefix, so the complete file is checked and renamed into the storage as soon as the
last chunk is verified (:mod:`.files_partial`).

A *provider* (a node with the provide-files role) hears ``requestFile``; if the requester holds
request-files in the channel's signed membership and the content (or the chunk's parent) is
stored here, it answers ``finished`` at once when the bucket already holds a correct-sized
object; otherwise it backs off a random 0–300 ms while listening for another provider's
``started``. If none came it uploads (``started``, ``progress`` at most every 0.5 s,
``finished`` or ``failed``); if one did, it stands by and takes over should that provider fail
or go silent for the stall timeout. So one provider uploads, and a killed one is replaced.

Rules
-----
1. Every wait has a deadline (:class:`FileTimeouts`); every download and upload is abandoned
   after a stall (no progress) rather than a fixed time, so big files on slow links still work.
2. Nothing reaches the storage unverified: bucket objects are hashed before they are kept.
3. This module speaks only to :class:`~.link.ChannelLink` (pub-sub, bucket, upload); message
   bodies live in :mod:`.files_messages`, partial chunks in :mod:`.files_partial`.
4. ``on_message`` never blocks: provider work runs in :meth:`FileExchange.run`'s task group.

The message formats, timeouts and rules are specified in spec/node-protocol.md §Files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..errors import (
    ConfigError,
    CorruptedFileError,
    InvalidUriError,
    KacheryError,
    LinkedFileChangedError,
    NotFoundError,
)
from ..protocol.bucket_layout import file_path
from ..protocol.file_messages import (
    REQUEST_BAND,
    REQUEST_FILE,
    STATUS_BAND,
    UPLOAD_STATUS,
    ChunkRef,
    FileRequest,
    MalformedFileMessage,
    UploadStatus,
    new_request_id,
    parse_request,
    parse_status,
)
from ..protocol.node_messages import Envelope
from ..storage.file_uris import FileUri, build_uri, parse_uri
from ..storage.manifest import Chunk, parse_manifest
from ..storage.node_storage import Storage
from ..storage.partial_files import ChunkSink, PartialFile, commit_verified, remove_stale_partials, temp_path
from .channel_link import BucketObjectMissing, ChannelLink, ProgressCallback

log = logging.getLogger("kachery.daemon.files")

T = TypeVar("T")
#: What a waiting fetch or a standing-by provider receives: (sender node ID, status).
_Routed = tuple[str, UploadStatus]
#: How long a provider remembers that its upload of an object failed (it then lets others go first).
RECENT_FAILURE_S = 60.0


@dataclass(frozen=True)
class FileTimeouts:
    """How long the exchange waits for each thing (seconds). The defaults follow the original
    (3 s without an answer, 30 s without progress, original-protocol.md §4.4); tests shrink them."""

    #: After publishing ``requestFile``: how long to wait for any provider's status.
    answer: float = 3.0
    #: Once a provider answered, or during a download or upload: time without progress after
    #: which the transfer counts as stalled (re-request / take over / abort).
    stall: float = 30.0
    #: A provider waits a random delay in ``[0, backoff_max]`` before uploading.
    backoff_max: float = 0.05  # a lone provider (the usual case) should not wait long per chunk
    #: Minimum interval between a provider's ``progress`` messages.
    progress_interval: float = 0.5
    #: While its upload runs, a provider publishes ``progress`` at least this often, even
    #: without new bytes, so that requesters and standby providers know it is alive.
    heartbeat: float = 5.0
    #: A link that reports no progress until an upload is done gets ``stall + size / rate``
    #: seconds before the provider gives the upload up (bytes per second).
    min_upload_rate: float = 100_000.0
    #: A bucket HEAD.
    bucket_head: float = 10.0
    #: Longest a provider stands by for another provider's upload, however busy it looks.
    standby_max: float = 600.0
    #: ``requestFile`` messages per object per channel (the first one plus re-requests).
    max_requests: int = 3

    def __post_init__(self) -> None:
        # A provider that just failed backs off up to 2 x backoff_max (see _back_off); its
        # answer must still come before the requester gives up.
        if self.answer <= 2 * self.backoff_max:
            raise ValueError("FileTimeouts: answer must exceed 2 x backoff_max")


def file_timeouts_from_settings(settings: dict[str, Any]) -> FileTimeouts:
    """:class:`FileTimeouts` from the ``[daemon.files]`` table of a node's config.toml, e.g.
    for a fast local network where a dead provider should be replaced sooner::

        [daemon.files]
        stall = 10       # seconds without progress or heartbeat before giving up or taking over
        heartbeat = 2    # keep below stall

    Raises ConfigError for an unknown name or a value that is not a positive number."""
    table = settings.get("daemon", {}).get("files", {})
    defaults = FileTimeouts()
    if not isinstance(table, dict):
        raise ConfigError("[daemon.files] in config.toml must be a table")
    for name, value in table.items():
        if not hasattr(defaults, name):
            known = ", ".join(f.name for f in dataclasses.fields(FileTimeouts))
            raise ConfigError(f"unknown setting [daemon.files] {name} in config.toml (known: {known})")
        kind = type(getattr(defaults, name))
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0 or (
            kind is int and not isinstance(value, int)
        ):
            raise ConfigError(f"[daemon.files] {name} in config.toml must be a positive "
                              f"{'integer' if kind is int else 'number'}, not {value!r}")
    try:
        return FileTimeouts(**table)
    except ValueError as exc:
        raise ConfigError(f"[daemon.files] in config.toml: {exc}") from exc


@dataclass(frozen=True)
class _InPartial:
    """Where a chunk's download goes: its byte range in a :class:`PartialFile`."""

    partial: PartialFile
    chunk: Chunk


#: Where :meth:`FileExchange._obtain` puts an object: a file path, or a chunk's range.
_Dest = Path | _InPartial


@dataclass(frozen=True)
class _Target:
    """One bucket object to obtain: a whole file, a manifest, or one chunk of a large file."""

    sha1: str
    label: str
    size: int | None = None
    chunk_of: ChunkRef | None = None


class _ChannelFailure:
    """Why each channel could not deliver an object, for the final error message."""

    def __init__(self) -> None:
        self.reasons: list[tuple[str, str]] = []

    def add(self, channel: str, reason: str) -> None:
        self.reasons.append((channel, reason))

    def error(self, target: _Target, uri: str) -> NotFoundError:
        if not self.reasons:
            return NotFoundError(f"{target.label} is not in the local storage and this node has "
                                 "joined no channel to fetch it from", uri=uri)
        why = "; ".join(f"channel {ch!r}: {reason}" for ch, reason in self.reasons)
        return NotFoundError(f"{target.label} could not be fetched: {why}", uri=uri)


class _ProgressSum:
    """Adds the progress of several concurrent chunk downloads into one (done, total)."""

    def __init__(self, total: int, done: int, callback: ProgressCallback | None) -> None:
        self.total, self.done, self._callback = total, done, callback
        self._in_flight: dict[str, int] = {}

    def for_chunk(self, chunk: Chunk) -> ProgressCallback:
        def update(done: int, _total: int) -> None:
            self._in_flight[chunk.sha1] = done
            self.report()
        return update

    def chunk_done(self, chunk: Chunk) -> None:
        self._in_flight.pop(chunk.sha1, None)
        self.done += chunk.end - chunk.start
        self.report()

    def report(self) -> None:
        if self._callback is not None:
            self._callback(min(self.total, self.done + sum(self._in_flight.values())), self.total)


def _short(node_id: str) -> str:
    return node_id[:12] + "…"


class FileExchange:
    """The node's file exchange: one per daemon, over all joined channels.

    The daemon runs :meth:`run` in its root nursery (``await nursery.start(fx.run)``), hands
    every verified envelope from a channel's ``request-files`` and ``provide-files`` bands to
    :meth:`on_message`, and calls :meth:`fetch` when a local client asks for a file that is not
    stored here::

        fx = FileExchange(storage)
        await nursery.start(fx.run)
        path = await fx.fetch(links, "sha1://…/x.npy", progress=lambda done, total: ...)
    """

    def __init__(
        self,
        storage: Storage,
        *,
        timeouts: FileTimeouts | None = None,
        max_parallel_chunks: int = 5,
        max_parallel_uploads: int = 4,
        rng: random.Random | None = None,
    ) -> None:
        self.storage = storage
        self.timeouts = timeouts or FileTimeouts()
        self._max_parallel_chunks = max_parallel_chunks
        # Each upload of a chunk holds up to 20 MB in memory: bound how many run at once.
        self._upload_slots = anyio.CapacityLimiter(max_parallel_uploads)
        self._rng = rng or random.Random()
        self._tg: TaskGroup | None = None
        # (channel, sha1) -> streams of fetches waiting for providers' statuses.
        self._waiters: dict[tuple[str, str], set[MemoryObjectSendStream[_Routed]]] = {}
        # (channel, sha1) -> inbox of this node's provider task for that object.
        self._providing: dict[tuple[str, str], MemoryObjectSendStream[_Routed]] = {}
        # (channel, sha1) -> a bad_object request that arrived while a provider task was busy.
        self._bad_object_reports: dict[tuple[str, str], tuple[ChannelLink, FileRequest]] = {}
        self._fetch_locks: dict[str, anyio.Lock] = {}
        # (channel, sha1) -> when our upload of it last failed (see _back_off).
        self._recent_failures: dict[tuple[str, str], float] = {}

    # -- lifecycle -------------------------------------------------------------------------------
    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Own the provider tasks until cancelled (start with ``await nursery.start(fx.run)``)."""
        await anyio.to_thread.run_sync(remove_stale_partials, self.storage.directory)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._tg = None

    # -- incoming messages -------------------------------------------------------------------------
    async def on_message(self, link: ChannelLink, band: str, env: Envelope) -> None:
        """Handle one verified envelope from ``link``'s pub-sub. Returns at once."""
        if env.sender == link.node_id:
            return  # our own message echoed back by the pub-sub service
        kind = env.body.get("type")
        if band == REQUEST_BAND and kind == REQUEST_FILE:
            self._on_request(link, env)
        elif band == STATUS_BAND and kind == UPLOAD_STATUS:
            self._on_status(link, env)

    def _on_status(self, link: ChannelLink, env: Envelope) -> None:
        try:
            status = parse_status(env.body)
        except MalformedFileMessage as exc:
            log.warning("dropping a malformed uploadStatus from %s on %s: %s",
                        _short(env.sender), link.channel, exc)
            return
        if not link.may(env.sender, "provide-files"):
            log.warning("ignoring an uploadStatus from %s on %s: not a member with provide-files",
                        _short(env.sender), link.channel)
            return
        key = (link.channel, status.sha1)
        targets = list(self._waiters.get(key, ()))
        if key in self._providing:
            targets.append(self._providing[key])
        for stream in targets:
            try:
                stream.send_nowait((env.sender, status))
            except anyio.WouldBlock:
                pass  # a listener that far behind only misses progress chatter
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass  # it just finished

    def _on_request(self, link: ChannelLink, env: Envelope) -> None:
        who = _short(env.sender)
        if "provide-files" not in link.roles:
            log.debug("not answering a requestFile from %s on %s: this node does not provide "
                      "files there", who, link.channel)
            return
        if not link.may(env.sender, "request-files"):
            log.warning("refusing a requestFile from %s on %s: the channel's membership does not "
                        "give it the request-files role", who, link.channel)
            return
        try:
            request = parse_request(env.body)
        except MalformedFileMessage as exc:
            log.warning("dropping a malformed requestFile from %s on %s: %s", who, link.channel, exc)
            return
        key = (link.channel, request.sha1)
        if key in self._providing:
            # Already providing (or standing by for) this object here. A report of a bad
            # bucket object may concern what that task just announced: serve it afterwards.
            if request.bad_object:
                self._bad_object_reports[key] = (link, request)
            return
        self._start_providing(link, request)

    def _start_providing(self, link: ChannelLink, request: FileRequest) -> None:
        if self._tg is None:
            log.error("FileExchange.run is not running: cannot answer requestFile for %s",
                      request.sha1)
            return
        send, receive = anyio.create_memory_object_stream[_Routed](64)
        key = (link.channel, request.sha1)
        self._providing[key] = send
        self._tg.start_soon(self._provide, link, request, key, send, receive)

    # -- provider ------------------------------------------------------------------------------------
    def _source_size(self, request: FileRequest) -> int | None:
        """Size of what we would upload, if we have it (stat only; blocking)."""
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

    def _read_source(self, request: FileRequest) -> bytes | Path:
        """The verified content to upload: a byte range of the parent, or the stored file."""
        if request.chunk_of is not None and self.storage.has_file(build_uri(request.chunk_of.sha1)):
            c = request.chunk_of
            data = self.storage.load_bytes(build_uri(c.sha1), c.start, c.end)
            actual = hashlib.sha1(data).hexdigest()
            if actual != request.sha1:
                raise KacheryError(f"bytes [{c.start}, {c.end}) of sha1://{c.sha1} hash to "
                                   f"{actual}, not the requested {request.sha1}")
            return data
        return Path(self.storage.load_file(build_uri(request.sha1)))

    async def _provide(self, link: ChannelLink, request: FileRequest, key: tuple[str, str],
                       send: MemoryObjectSendStream[_Routed],
                       inbox: MemoryObjectReceiveStream[_Routed]) -> None:
        def release() -> None:
            """Stop routing to this task. Called before its last status goes out, so that a
            request provoked by that status (a re-request after 'failed', a bad_object report
            after 'finished') starts a fresh task instead of being taken for a duplicate."""
            if self._providing.get(key) is send:
                del self._providing[key]
                queued = self._bad_object_reports.pop(key, None)
                if queued is not None:
                    self._start_providing(*queued)

        try:
            with send, inbox:
                size = await anyio.to_thread.run_sync(self._source_size, request)
                if size is None:
                    return
                path = file_path(link.channel, request.sha1)
                if not request.bad_object:
                    existing = await self._head_or_none(link, path)
                    if existing == size:
                        release()
                        await self._status(link, request, "finished", size=size)
                        return
                    if existing is not None:
                        log.info("bucket object %s has %d bytes, not %d: uploading it again",
                                 path, existing, size)
                else:
                    log.info("%s reports the bucket object %s as bad: uploading it again",
                             request.request_id, path)
                # Back off; stand by while another provider uploads; take over if it fails.
                for _round in range(self.timeouts.max_requests):
                    other = await self._back_off(inbox, key)
                    if other is None:
                        break
                    if other.status == "finished" or await self._stand_by(inbox) == "finished":
                        return
                await self._upload(link, request, path, size, release)
        except Exception:
            log.exception("providing %s on %s failed", request.sha1, link.channel)
        finally:
            release()

    async def _back_off(self, inbox: MemoryObjectReceiveStream[_Routed],
                        key: tuple[str, str]) -> UploadStatus | None:
        """Wait a random delay; return another provider's status if one is already at work.

        A provider whose upload of this object failed recently waits one more ``backoff_max``
        first, so that a healthy provider wins the next round instead of the same failure."""
        delay = self._rng.uniform(0.0, self.timeouts.backoff_max)
        failed_at = self._recent_failures.get(key)
        if failed_at is not None and time.monotonic() - failed_at < RECENT_FAILURE_S:
            delay += self.timeouts.backoff_max
        with anyio.move_on_after(delay):
            while True:
                _sender, status = await inbox.receive()
                if status.status != "failed":
                    return status
        return None

    async def _stand_by(self, inbox: MemoryObjectReceiveStream[_Routed]) -> str:
        """Follow another provider's upload: 'finished', or 'failed'/'stalled' (take over).
        The uploader is alive while its statuses keep coming (heartbeats included)."""
        t = self.timeouts
        give_up_at = time.monotonic() + t.standby_max
        last_heard = time.monotonic()
        while True:
            remaining = min(last_heard + t.stall, give_up_at) - time.monotonic()
            if remaining <= 0:
                log.info("the other provider's upload went silent: taking over")
                return "stalled"
            with anyio.move_on_after(remaining):
                _sender, status = await inbox.receive()
                if status.status in ("finished", "failed"):
                    return status.status
                last_heard = time.monotonic()

    async def _upload(self, link: ChannelLink, request: FileRequest, path: str, size: int,
                      release: Callable[[], None]) -> None:
        await self._status(link, request, "started", size=size)
        try:
            async with self._upload_slots:
                log.info("uploading %s (%d bytes) to %s", request.sha1, size, link.channel)
                data = await anyio.to_thread.run_sync(self._read_source, request)
                await self._upload_with_progress(link, request, path, data, size)
        except Exception as exc:
            log.warning("upload of %s to %s failed: %s", request.sha1, link.channel, exc)
            now = time.monotonic()
            for old in [k for k, t in self._recent_failures.items() if now - t > RECENT_FAILURE_S]:
                del self._recent_failures[old]
            self._recent_failures[(link.channel, request.sha1)] = now
            release()
            try:
                await self._status(link, request, "failed", error=f"{type(exc).__name__}: {exc}")
            except Exception as exc2:
                log.warning("could not report the failure on %s: %s", link.channel, exc2)
            return
        log.info("uploaded %s (%d bytes) to %s", request.sha1, size, link.channel)
        release()
        await self._status(link, request, "finished", size=size)

    async def _upload_with_progress(self, link: ChannelLink, request: FileRequest, path: str,
                                    data: bytes | Path, size: int) -> None:
        """Upload while publishing throttled progress and heartbeats; abort after a stall
        (no new bytes for ``stall`` s; before any progress was reported, for
        ``stall + size / min_upload_rate`` s, as some links only report at the end)."""
        t = self.timeouts
        started = time.monotonic()
        state = {"done": 0, "published": 0, "last_advance": started, "last_sent": started}
        reported = False
        stalled = False
        error: Exception | None = None

        def on_progress(done: int, _total: int) -> None:
            nonlocal reported
            reported = True
            if done > state["done"]:
                state["done"] = done
                state["last_advance"] = time.monotonic()

        async def publish_progress(tg: TaskGroup) -> None:
            nonlocal stalled
            while True:
                await anyio.sleep(t.progress_interval)
                now = time.monotonic()
                allowance = t.stall if reported else t.stall + size / t.min_upload_rate
                if now - state["last_advance"] > allowance:
                    stalled = True
                    tg.cancel_scope.cancel()
                    return
                if state["done"] > state["published"] or now - state["last_sent"] >= t.heartbeat:
                    state["published"] = state["done"]
                    state["last_sent"] = now
                    try:
                        await self._status(link, request, "progress", size=size,
                                           bytes_done=state["done"])
                    except Exception as exc:
                        log.debug("could not publish progress on %s: %s", link.channel, exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(publish_progress, tg)
            try:
                await link.upload(path, data, progress=on_progress)
            except Exception as exc:
                error = exc
            tg.cancel_scope.cancel()
        if stalled:
            raise TimeoutError(f"the upload made no progress for "
                               f"{time.monotonic() - state['last_advance']:.3g} s")
        if error is not None:
            raise error

    async def _status(self, link: ChannelLink, request: FileRequest, status: str, *,
                      size: int | None = None, bytes_done: int | None = None,
                      error: str | None = None) -> None:
        body = UploadStatus(request.sha1, status, request.request_id, size, bytes_done, error)
        await link.publish(STATUS_BAND, body.to_body())

    async def _head_or_none(self, link: ChannelLink, path: str) -> int | None:
        try:
            with anyio.fail_after(self.timeouts.bucket_head):
                return await link.bucket_head(path)
        except Exception as exc:
            log.warning("bucket HEAD %s on %s failed: %s", path, link.channel, exc)
            return None

    # -- requester ------------------------------------------------------------------------------------
    async def fetch(self, links: Sequence[ChannelLink], uri: str,
                    progress: ProgressCallback | None = None) -> str:
        """Make ``uri`` available in the local storage and return its local path.

        Tries the local storage, then each channel's bucket, then a request on each channel
        (in the order of ``links``). Raises :class:`NotFoundError` naming every channel tried
        and why it could not deliver; :class:`InvalidUriError` for a malformed URI;
        :class:`CorruptedFileError` if a (hash-verified) manifest does not describe the file.
        ``progress(done, total)`` reports bytes downloaded.
        """
        key = parse_uri(uri)
        if key.chunk_of is not None:
            raise InvalidUriError(f"{uri} names a chunk of sha1://{key.chunk_of.file_sha1}; "
                                  "fetch the file itself (with its ?manifest=)")
        lock = self._fetch_locks.setdefault(key.sha1, anyio.Lock())
        try:
            async with lock:  # one fetch per file at a time: the others then find it local
                local = await anyio.to_thread.run_sync(self._local_path, key)
                if local is not None:
                    return local
                if key.manifest_sha1 is not None:
                    return await self._fetch_chunked(list(links), key, uri, progress)
                return await self._fetch_whole(list(links), key, uri, progress)
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._fetch_locks.pop(key.sha1, None)

    def _local_path(self, key: FileUri) -> str | None:
        try:
            return self.storage.load_file(key)
        except (NotFoundError, CorruptedFileError, LinkedFileChangedError):
            return None  # a corrupted copy was deleted by load_file: fetch a good one

    async def _fetch_whole(self, links: list[ChannelLink], key: FileUri, uri: str,
                           progress: ProgressCallback | None) -> str:
        target = _Target(key.sha1, f"sha1://{key.sha1}")
        # In <storage>/tmp/ itself, so that the storage's own sweep removes it after a crash.
        dest = temp_path(self.storage.directory / "tmp", f"fetch.{key.sha1}")
        try:
            await self._obtain(links, target, dest, uri, progress)

            def store() -> str:
                with open(dest, "rb", buffering=0) as f:
                    self.storage.store_stream(f, fetchable=True, expected_sha1=key.sha1)
                return str(self.storage.path_for(key.sha1))

            return await anyio.to_thread.run_sync(store)
        finally:
            dest.unlink(missing_ok=True)

    async def _fetch_chunked(self, links: list[ChannelLink], key: FileUri, uri: str,
                             progress: ProgressCallback | None) -> str:
        assert key.manifest_sha1 is not None
        manifest_sha1 = key.manifest_sha1
        manifest_path = await self.fetch(links, build_uri(manifest_sha1))
        data = await anyio.to_thread.run_sync(Path(manifest_path).read_bytes)
        manifest = parse_manifest(data, expected_sha1=key.sha1)
        partial = PartialFile(self.storage.directory, manifest)
        started = time.monotonic()
        try:
            missing = await anyio.to_thread.run_sync(partial.open)
            await self._fetch_chunks(links, key, uri, progress, partial, missing)
        finally:
            partial.close()
        chunks_done = time.monotonic()

        def assemble() -> str:
            try:
                read_sha1 = partial.whole_sha1()
                self.storage.store_assembled(
                    partial.content_path, expected_sha1=key.sha1, manifest_sha1=manifest_sha1,
                    fetchable=True, read_sha1=read_sha1)
                log.info("stored sha1://%s (%d bytes, %d chunks) in %.2f s: chunks verified at "
                         "%.2f s, then %s and moved in %.2f s", key.sha1, manifest.size,
                         len(manifest.chunks), time.monotonic() - started, chunks_done - started,
                         "already hashed" if read_sha1 else "hashed whole", time.monotonic() - chunks_done)
            except CorruptedFileError as exc:
                partial.remove()  # each chunk matched the manifest, so the manifest lies
                raise CorruptedFileError(
                    f"the chunks listed by manifest sha1://{key.manifest_sha1} do not make up "
                    f"sha1://{key.sha1}: {exc}") from exc
            partial.remove()
            return str(self.storage.path_for(key.sha1))

        return await anyio.to_thread.run_sync(assemble)

    async def _fetch_chunks(self, links: list[ChannelLink], key: FileUri, uri: str,
                            progress: ProgressCallback | None, partial: PartialFile,
                            missing: list[Chunk]) -> None:
        """Download the ``missing`` chunks into ``partial``, up to max_parallel_chunks at once."""
        manifest = partial.manifest
        have = manifest.size - sum(c.end - c.start for c in missing)
        if missing:
            log.info("fetching %d of %d chunks of sha1://%s", len(missing), len(manifest.chunks),
                     key.sha1)
        tracker = _ProgressSum(manifest.size, have, progress)
        tracker.report()
        preferred: list[ChannelLink] = list(links)
        failures: list[Exception] = []
        n = len(manifest.chunks)
        # Taken in file order by a fixed set of workers (tasks racing for a limiter start in
        # any order): the chunks then complete roughly in order, and the whole-file hash
        # (PartialFile.whole_sha1) keeps up with them instead of running after the last one.
        queue = sorted(missing, key=lambda c: c.start)

        async def worker(tg: TaskGroup) -> None:
            while queue:
                chunk = queue.pop(0)
                index = manifest.chunks.index(chunk)
                target = _Target(chunk.sha1, f"chunk {index + 1}/{n} of sha1://{key.sha1}",
                                 chunk.end - chunk.start, ChunkRef(key.sha1, chunk.start, chunk.end))
                try:
                    via = await self._obtain(list(preferred), target, _InPartial(partial, chunk),
                                             uri, tracker.for_chunk(chunk))
                except Exception as exc:
                    failures.append(exc)
                    tg.cancel_scope.cancel()
                    return
                tracker.chunk_done(chunk)
                if via is not None and preferred[0] is not via:  # next chunks: that channel first
                    preferred.remove(via)
                    preferred.insert(0, via)

        async with anyio.create_task_group() as tg:
            for _ in range(min(self._max_parallel_chunks, len(queue))):
                tg.start_soon(worker, tg)
        if failures:
            raise failures[0]  # the verified chunks stay in tmp/partial for the next attempt

    async def _obtain(self, links: list[ChannelLink], target: _Target, dest: _Dest, uri: str,
                      progress: ProgressCallback | None) -> ChannelLink | None:
        """Put the verified object at ``dest``: buckets first, then requests. Returns the link
        it came through; raises NotFoundError with every channel's reason."""
        failure = _ChannelFailure()
        bad_on: set[str] = set()
        for link in links:
            kind, why = await self._from_bucket(link, target, dest, progress)
            if kind == "ok":
                return link
            if why is not None:
                failure.add(link.channel, why)
            if kind == "bad":
                bad_on.add(link.channel)
        for link in links:
            if "request-files" not in link.roles:
                failure.add(link.channel, "not in its bucket, and this node does not have the "
                                          "request-files role there, so it cannot ask for it")
                continue
            why = await self._request(link, target, dest, progress, link.channel in bad_on)
            if why is None:
                return link
            failure.add(link.channel, why)
        raise failure.error(target, uri)

    async def _from_bucket(self, link: ChannelLink, target: _Target, dest: _Dest,
                           progress: ProgressCallback | None) -> tuple[str, str | None]:
        """('ok', None) when ``dest`` now holds the object, ('absent', None), or
        ('bad' | 'error', why)."""
        path = file_path(link.channel, target.sha1)
        try:
            with anyio.fail_after(self.timeouts.bucket_head):
                size = await link.bucket_head(path)
        except Exception as exc:
            log.warning("bucket HEAD %s on %s failed: %r", path, link.channel, exc)
            return "error", f"its bucket could not be reached ({type(exc).__name__}: {exc})"
        if size is None:
            return "absent", None
        if target.size is not None and size != target.size:
            log.warning("rejected bucket object %s: %d bytes, expected %d", path, size, target.size)
            return "bad", (f"the bucket object {path} has {size} bytes, not {target.size} "
                           "(rejected, nothing stored)")
        return await self._download(link, path, target, dest, progress)

    async def _download(self, link: ChannelLink, path: str, target: _Target, dest: _Dest,
                        progress: ProgressCallback | None) -> tuple[str, str | None]:
        """Download and verify into ``dest``: ('ok', None), ('absent', None), or
        ('bad' | 'error', why). A chunk streams into its range of the partial file, hashed as
        it arrives (:class:`ChunkSink`); anything else goes to a temporary file, hashed after."""
        out: Path | ChunkSink
        verify: Callable[[], str | None]
        if isinstance(dest, _InPartial):
            sink = out = dest.partial.sink(dest.chunk)
            verify = sink.commit
            cleanup = sink.discard
        else:
            tmp = out = temp_path(dest.parent, dest.name)

            def verify() -> str | None:
                return commit_verified(tmp, dest, target.sha1, target.size)

            def cleanup() -> None:
                tmp.unlink(missing_ok=True)
        try:
            try:
                await self._stall_guarded(
                    lambda cb: link.bucket_download(path, out, cb), progress,  # type: ignore[arg-type]
                    f"the download of {path}")
            except BucketObjectMissing:
                return "absent", None
            except Exception as exc:
                log.warning("download of %s from %s failed: %r", path, link.channel, exc)
                return "error", f"the download of {path} failed ({type(exc).__name__}: {exc})"
            why = await anyio.to_thread.run_sync(verify)
        finally:
            cleanup()
        if why is not None:
            log.warning("rejected bucket object %s on %s: %s", path, link.channel, why)
            return "bad", f"the bucket object {path} is corrupted: {why} (rejected, nothing stored)"
        return "ok", None

    async def _stall_guarded(self, run: Callable[[ProgressCallback], Awaitable[T]],
                             progress: ProgressCallback | None, what: str) -> T:
        """Run a transfer, cancelling it when its progress callback is silent for the stall
        timeout (the callback may be called from a worker thread: only a timestamp is shared)."""
        stall = self.timeouts.stall
        last = time.monotonic()
        stalled = False
        error: Exception | None = None
        result: Any = None

        def on_progress(done: int, total: int) -> None:
            nonlocal last
            last = time.monotonic()
            if progress is not None:
                progress(done, total)

        async def watch(tg: TaskGroup) -> None:
            nonlocal stalled
            while time.monotonic() - last <= stall:
                await anyio.sleep(min(1.0, stall / 4))
            stalled = True
            tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch, tg)
            try:
                result = await run(on_progress)
            except Exception as exc:
                error = exc
            tg.cancel_scope.cancel()
        if stalled:
            raise TimeoutError(f"{what} made no progress for {stall:g} s")
        if error is not None:
            raise error
        return result

    async def _request(self, link: ChannelLink, target: _Target, dest: _Dest,
                       progress: ProgressCallback | None, bad_object: bool) -> str | None:
        """Ask providers on one channel; None when ``dest`` holds the object, else why not."""
        key = (link.channel, target.sha1)
        send, receive = anyio.create_memory_object_stream[_Routed](256)
        self._waiters.setdefault(key, set()).add(send)
        history: list[str] = []
        sent: list[str] = []  # IDs of our requests, in order
        stale: set[str] = set()  # IDs whose 'finished' would point at a bad object
        try:
            for attempt in range(1, self.timeouts.max_requests + 1):
                while True:  # statuses left over from the previous round are stale
                    try:
                        receive.receive_nowait()
                    except anyio.WouldBlock:
                        break
                request = FileRequest(target.sha1, new_request_id(), target.size,
                                      target.chunk_of, bad_object)
                sent.append(request.request_id)
                try:
                    await link.publish(REQUEST_BAND, request.to_body())
                except Exception as exc:
                    history.append(f"could not publish the request ({type(exc).__name__}: {exc})")
                    break
                outcome, detail = await self._await_upload(receive, stale)
                if outcome == "finished":
                    path = file_path(link.channel, target.sha1)
                    kind, why = await self._download(link, path, target, dest, progress)
                    if kind == "ok":
                        return None
                    if kind == "absent":
                        why = f"{detail} reported the upload finished, but {path} is missing"
                    elif kind == "bad":
                        # Ask providers to overwrite it, and ignore the 'finished' answers to
                        # the requests so far: they are about the bad object.
                        bad_object = True
                        stale.update(sent)
                    history.append(why or kind)
                    continue
                if outcome == "no_answer":
                    history.append(f"no provider answered within {self.timeouts.answer:g} s"
                                   + (" after a re-request" if attempt > 1 else ""))
                    break
                history.append(detail)
            else:
                history.append(f"gave up after {self.timeouts.max_requests} requests")
            return "; then ".join(history)
        finally:
            waiting = self._waiters.get(key)
            if waiting is not None:
                waiting.discard(send)
                if not waiting:
                    del self._waiters[key]
            send.close()
            receive.close()

    async def _await_upload(self, receive: MemoryObjectReceiveStream[_Routed],
                            stale: set[str]) -> tuple[str, str]:
        """Follow providers' statuses until one finishes: ('finished', provider),
        ('failed', why), ('stalled', why) or ('no_answer', ''). Uploaders are alive while their
        statuses keep coming (heartbeats included); however busy they look, one round lasts at
        most ``standby_max``."""
        t = self.timeouts
        give_up_at = time.monotonic() + t.standby_max
        answered = False
        uploaders: set[str] = set()
        last_heard = time.monotonic()
        while True:
            limit = last_heard + (t.stall if answered else t.answer)
            remaining = min(limit, give_up_at) - time.monotonic()
            if remaining <= 0:
                if not answered:
                    return "no_answer", ""
                who = ", ".join(_short(s) for s in uploaders) or "the provider"
                return "stalled", f"the upload by {who} stalled (silent for {t.stall:g} s)"
            with anyio.move_on_after(remaining):
                sender, status = await receive.receive()
                if status.status == "finished":
                    if status.request_id in stale:
                        continue
                    return "finished", f"provider {_short(sender)}"
                answered = True
                last_heard = time.monotonic()
                if status.status == "failed":
                    uploaders.discard(sender)
                    if not uploaders:
                        return "failed", f"provider {_short(sender)} failed: {status.error or '?'}"
                else:
                    uploaders.add(sender)

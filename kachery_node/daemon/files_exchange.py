"""Files across nodes: the daemon's file exchange, one per node over all joined channels.

Nodes never talk to each other; a channel's bucket carries the bytes and its pub-sub bands carry
coordination (spec/node-protocol.md §Files). The rules (buckets first, requests and re-requests,
waiting for statuses, providers' back-off, standing by and taking over, heartbeats, stalls) live
in the protocol cores, without I/O: :mod:`kachery_node.protocol.file_requester` and
:mod:`kachery_node.protocol.file_provider`. This module is their face to the daemon:

* :meth:`FileExchange.on_message` screens each verified envelope of the ``request-files`` and
  ``provide-files`` bands and routes it: a ``requestFile`` to this node's provider conversation
  for that (channel, object), started if there is none
  (:mod:`.file_provider_driver`); an ``uploadStatus`` to the fetches waiting for that object
  (:mod:`.file_requester_driver`) and to the provider conversation standing by for it.
* :meth:`FileExchange.fetch` makes a ``sha1://`` URI local: from the storage, else obtained over
  the channels. A whole file streams into an :class:`~kachery_node.storage.partial_files
  .IncomingFile` (hashed as written) and is renamed into the storage once verified; a large file
  goes chunk by chunk (:mod:`.chunked_fetch`).

Rules
-----
1. Nothing reaches the storage unverified; every download is written once and hashed as it is.
2. ``on_message`` never blocks: provider conversations run in :meth:`FileExchange.run`'s task
   group.
3. One fetch per file at a time; concurrent callers wait, then find the file local.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from ..errors import ConfigError, CorruptedFileError, InvalidUriError, LinkedFileChangedError, NotFoundError
from ..protocol.file_messages import (
    REQUEST_BAND,
    REQUEST_FILE,
    STATUS_BAND,
    UPLOAD_STATUS,
    ChunkRef,
    FileRequest,
    Ignored,
)
from ..protocol.file_provider import RecentFailures, admit_request
from ..protocol.file_requester import Target, admit_status, short
from ..protocol.file_timeouts import PARALLEL_CHUNKS, FileTimeouts
from ..protocol.node_messages import Envelope
from ..storage.file_uris import FileUri, build_uri, parse_uri
from ..storage.manifest import CHUNK_SIZE, check_range, parse_manifest
from ..storage.node_storage import Storage
from ..storage.partial_files import IncomingFile, PartialFile, remove_stale_partials
from .channel_link import ChannelLink, ProgressCallback, refresh_if_lacking
from .chunked_fetch import fetch_chunks, fetch_large_file
from .file_provider_driver import ProviderConversation, RecentlyInBucket
from .file_requester_driver import DownloadSink, ObjectFetch

log = logging.getLogger("kachery.daemon.files")


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
        max_parallel_chunks: int = PARALLEL_CHUNKS,
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
        self._fetching: dict[str, set[ObjectFetch]] = {}  # object sha1 -> fetches waiting
        self._providing: dict[tuple[str, str], ProviderConversation] = {}  # (channel, sha1)
        self._recent_failures = RecentFailures()
        self._in_bucket = RecentlyInBucket()  # objects put or found there a moment ago
        self._fetch_locks: dict[str, anyio.Lock] = {}

    # -- lifecycle -------------------------------------------------------------------------------
    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Own the provider conversations until cancelled (``await nursery.start(fx.run)``)."""
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
            request = admit_request(env.body, we_provide="provide-files" in link.roles,
                                    sender_may_request=link.may(env.sender, "request-files"))
            if isinstance(request, Ignored):
                _log_ignored(request, env.sender, link)
            else:
                self._admit(link, request)
        elif band == STATUS_BAND and kind == UPLOAD_STATUS:
            status = admit_status(env.body, sender_may_provide=link.may(env.sender, "provide-files"))
            if isinstance(status, Ignored):
                _log_ignored(status, env.sender, link)
                return
            for fetch in list(self._fetching.get(status.sha1, ())):
                fetch.on_status(link.channel, env.sender, status)
            provider = self._providing.get((link.channel, status.sha1))
            if provider is not None:
                provider.on_status(env.sender, status)

    def _admit(self, link: ChannelLink, request: FileRequest) -> None:
        """Hand ``request`` to the conversation about its object, or start one."""
        key = (link.channel, request.sha1)
        current = self._providing.get(key)
        if current is not None and current.listening:
            current.on_request(request)  # a duplicate (kept if it reports a bad object)
            return
        if self._tg is None:
            log.error("FileExchange.run is not running: cannot answer requestFile for %s",
                      request.sha1)
            return
        conversation = ProviderConversation(
            self.storage, link, request, timeouts=self.timeouts, rng=self._rng,
            failures=self._recent_failures, upload_slots=self._upload_slots, on_stop=self._stopped,
            in_bucket=self._in_bucket)
        self._providing[key] = conversation
        self._tg.start_soon(conversation.run)

    def _stopped(self, conversation: ProviderConversation, then_serve: FileRequest | None) -> None:
        key = conversation.core.key
        if self._providing.get(key) is conversation:
            del self._providing[key]
        if then_serve is not None:
            self._admit(conversation.link, then_serve)

    # -- fetching ------------------------------------------------------------------------------------
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
        async with self._file_lock(key.sha1):  # one fetch per file at a time: the others then find it local
            local = await anyio.to_thread.run_sync(self._local_path, key)
            if local is not None:
                return local
            await refresh_if_lacking(links, "request-files")  # granted a moment ago?
            if key.chunk_of is not None:  # a chunk of a large file, named by its own SHA-1
                return await self._fetch_chunk_of(links, key, uri, progress)
            if key.manifest_sha1 is not None:
                return await fetch_large_file(
                    self.storage, links, key, uri, progress, fetch_file=self.fetch,
                    obtain=self._obtain, max_parallel=self._max_parallel_chunks)
            return await self._fetch_whole(links, key, uri, progress)

    async def fetch_range(self, links: Sequence[ChannelLink], uri: str, start: int, end: int | None,
                          progress: ProgressCallback | None = None) -> str:
        """Make bytes ``[start, end)`` of the large file ``uri`` (with ``?manifest=``) available
        here: its manifest, then only the chunks covering them that are not verified yet, into
        the file's partial copy (:func:`~kachery_node.storage.partial_files.read_partial_range`
        reads them). Returns the stored file's path if the file is here whole, else the partial
        copy's. A URI without a manifest is fetched whole (it is one chunk at most). Raises as
        :meth:`fetch`, and InvalidDataError for a range outside the file."""
        key = parse_uri(uri)
        if key.manifest_sha1 is None or key.chunk_of is not None:
            return await self.fetch(links, uri, progress)
        manifest_path = await self.fetch(links, build_uri(key.manifest_sha1))
        data = await anyio.to_thread.run_sync(Path(manifest_path).read_bytes)
        manifest = parse_manifest(data, expected_sha1=key.sha1)
        stop = check_range(manifest, start, end)
        async with self._file_lock(key.sha1):
            local = await anyio.to_thread.run_sync(self._local_path, key)
            if local is not None:
                return local
            partial = PartialFile(self.storage.directory, manifest)
            if stop == start:
                return str(partial.content_path)
            try:
                missing = await anyio.to_thread.run_sync(partial.open_chunks,
                                                         manifest.covering(start, stop))
                await fetch_chunks(links, key, uri, progress, partial, missing, self._obtain,
                                   self._max_parallel_chunks)
            finally:
                partial.close()
            return str(partial.content_path)

    @contextlib.asynccontextmanager
    async def _file_lock(self, sha1: str) -> AsyncIterator[None]:
        lock = self._fetch_locks.setdefault(sha1, anyio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._fetch_locks.pop(sha1, None)

    async def _fetch_chunk_of(self, links: Sequence[ChannelLink], key: FileUri, uri: str,
                              progress: ProgressCallback | None) -> str:
        """A ``?chunkOf=<file>~<start>~<end>`` URI: the chunk's own object from a bucket, or from a
        provider holding the file (a chunk request, as a large file's fetch makes), verified by
        the chunk's SHA-1 and stored as a file of its own."""
        assert key.chunk_of is not None
        c = key.chunk_of
        if c.end - c.start > CHUNK_SIZE or c.end == c.start:
            raise InvalidUriError(f"{uri}: a chunk is 1 to {CHUNK_SIZE} bytes, not {c.end - c.start}")
        target = Target(key.sha1, f"bytes {c.start}-{c.end} of sha1://{c.file_sha1}", c.end - c.start,
                        ChunkRef(c.file_sha1, c.start, c.end))
        return await self._fetch_into_storage(links, key.sha1, target, c.end - c.start, uri, progress)

    def _local_path(self, key: FileUri) -> str | None:
        try:
            return self.storage.load_file(key)
        except (NotFoundError, CorruptedFileError, LinkedFileChangedError):
            return None  # a corrupted copy was deleted by load_file: fetch a good one

    async def _fetch_whole(self, links: Sequence[ChannelLink], key: FileUri, uri: str,
                           progress: ProgressCallback | None) -> str:
        """Obtain a file into a temporary file hashed as it is written, then rename it into the
        storage (its SHA-1 is not computed again)."""
        return await self._fetch_into_storage(links, key.sha1, Target(key.sha1, f"sha1://{key.sha1}"),
                                              None, uri, progress)

    async def _fetch_into_storage(self, links: Sequence[ChannelLink], sha1: str, target: Target,
                                  size: int | None, uri: str, progress: ProgressCallback | None) -> str:
        """Fetch ``target`` (content ``sha1``, of ``size`` bytes if known) into a temporary file
        hashed as it is written, then move it into the storage; returns its path there."""
        tmp = self.storage.directory / "tmp"
        fetch = ObjectFetch(links, target, self.timeouts, lambda: IncomingFile(tmp, sha1, size),
                            progress, uri)
        await self._run(fetch)
        incoming = fetch.sink
        assert isinstance(incoming, IncomingFile)
        try:
            await anyio.to_thread.run_sync(lambda: self.storage.adopt_verified(
                incoming.path, sha1=sha1, fetchable=True))
        finally:
            incoming.discard()  # if it could not be adopted (else it is gone already)
        return str(self.storage.path_for(sha1))

    async def _obtain(self, links: Sequence[ChannelLink], target: Target,
                      new_sink: Callable[[], DownloadSink], uri: str,
                      progress: ProgressCallback | None) -> ChannelLink:
        """Put the verified object into a sink from ``new_sink``: buckets first, then requests.
        Returns the link it came through; raises NotFoundError with every channel's reason."""
        return await self._run(ObjectFetch(links, target, self.timeouts, new_sink, progress, uri))

    async def _run(self, fetch: ObjectFetch) -> ChannelLink:
        """Run ``fetch`` with the statuses about its object routed to it."""
        sha1 = fetch.core.target.sha1
        waiting = self._fetching.setdefault(sha1, set())
        waiting.add(fetch)
        try:
            return await fetch.run()
        finally:
            waiting.discard(fetch)
            if not waiting and self._fetching.get(sha1) is waiting:
                del self._fetching[sha1]


def _log_ignored(ignored: Ignored, sender: str, link: ChannelLink) -> None:
    log.log(logging.DEBUG if ignored.quiet else logging.WARNING, "ignoring %s (from %s on %s)",
            ignored.reason, short(sender), link.channel)


__all__ = ["FileExchange", "FileTimeouts", "file_timeouts_from_settings"]

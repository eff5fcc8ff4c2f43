"""Fetching a large file (``?manifest=<m>``): its manifest, then its chunks, then one rename.

The manifest is fetched like any small file and validated against the file's SHA-1. The chunks
still missing from ``<storage>/tmp/partial/<h>/`` (:class:`~kachery_node.storage.partial_files
.PartialFile`) are obtained by up to ``max_parallel`` workers, in the order and over the channels
:class:`~kachery_node.protocol.file_chunks.ChunkSchedule` says; each streams into its range of
the partial file. The chunks' own SHA-1 checks are deferred: the whole-file hash follows the
written prefix, so the complete file is checked, every byte at once, and renamed into the storage
as soon as the last chunk is in. Only if that hash is wrong are the chunks checked one by one
(:meth:`~kachery_node.storage.partial_files.PartialFile.recheck`) and the bad ones fetched again,
each checked as it arrives. If a chunk cannot be obtained the fetch fails; the chunks received so
far stay for the next attempt (which checks each of them first).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import anyio
from anyio.abc import TaskGroup

from ..errors import CorruptedFileError
from ..protocol.file_chunks import ChunkProgress, ChunkSchedule
from ..protocol.file_requester import Target
from ..storage.file_uris import FileUri, build_uri
from ..storage.manifest import Chunk, parse_manifest
from ..storage.node_storage import Storage
from ..storage.partial_files import PartialFile
from .action_loop import now
from .channel_link import ChannelLink, ProgressCallback
from .file_requester_driver import DownloadSink

log = logging.getLogger("kachery.daemon.files")

#: Obtains one object: (links, target, new_sink, uri, progress) -> the link it came through.
Obtain = Callable[[Sequence[ChannelLink], Target, Callable[[], DownloadSink], str,
                   ProgressCallback | None], Awaitable[ChannelLink]]
#: Fetches a small file by URI over the links into the storage; returns its local path.
FetchFile = Callable[[Sequence[ChannelLink], str], Awaitable[str]]


async def fetch_large_file(storage: Storage, links: Sequence[ChannelLink], key: FileUri, uri: str,
                           progress: ProgressCallback | None, *, fetch_file: FetchFile,
                           obtain: Obtain, max_parallel: int) -> str:
    """Make the large file ``key`` local (see the module docstring); returns its path. Raises
    NotFoundError if a chunk (or the manifest) cannot be obtained, CorruptedFileError if the
    verified manifest does not describe the file its chunks make up."""
    assert key.manifest_sha1 is not None
    manifest_sha1 = key.manifest_sha1
    manifest_path = await fetch_file(links, build_uri(manifest_sha1))
    data = await anyio.to_thread.run_sync(Path(manifest_path).read_bytes)
    manifest = parse_manifest(data, expected_sha1=key.sha1)
    # The chunks' own checks wait for the whole file's SHA-1 (one pass over the bytes, not two).
    partial = PartialFile(storage.directory, manifest, check_chunks=False)
    started = now()
    try:
        missing = await anyio.to_thread.run_sync(partial.open)
        await fetch_chunks(links, key, uri, progress, partial, missing, obtain, max_parallel)
        read_sha1 = partial.whole_sha1()
        if read_sha1 is not None and read_sha1 != key.sha1:
            bad = await anyio.to_thread.run_sync(partial.recheck)
            log.warning("sha1://%s: the chunks make up sha1://%s; %d chunk(s) do not match the "
                        "manifest, fetching them again", key.sha1, read_sha1, len(bad))
            await fetch_chunks(links, key, uri, progress, partial, bad, obtain, max_parallel)
            read_sha1 = None  # the file is hashed whole when stored
    finally:
        partial.close()
    chunks_done = now()

    def assemble() -> None:
        try:
            storage.store_assembled(partial.content_path, expected_sha1=key.sha1,
                                    manifest_sha1=manifest_sha1, fetchable=True, read_sha1=read_sha1)
        except CorruptedFileError as exc:
            partial.remove()  # each chunk matched the manifest, so the manifest lies
            raise CorruptedFileError(
                f"the chunks listed by manifest sha1://{manifest_sha1} do not make up "
                f"sha1://{key.sha1}: {exc}") from exc
        partial.remove()

    await anyio.to_thread.run_sync(assemble)
    log.info("stored sha1://%s (%d bytes, %d chunks) in %.2f s: chunks verified at %.2f s, then "
             "%s and moved in %.2f s", key.sha1, manifest.size, len(manifest.chunks),
             now() - started, chunks_done - started,
             "already hashed" if read_sha1 else "hashed whole", now() - chunks_done)
    return str(storage.path_for(key.sha1))


async def fetch_chunks(links: Sequence[ChannelLink], key: FileUri, uri: str,
                       progress: ProgressCallback | None, partial: PartialFile,
                       missing: list[Chunk], obtain: Obtain, max_parallel: int) -> None:
    """Download the ``missing`` chunks into ``partial`` (open), up to ``max_parallel`` at once:
    all the chunks still missing of a file, or those covering a byte range."""
    manifest = partial.manifest
    if missing:
        log.info("fetching %d of %d chunks of sha1://%s", len(missing), len(manifest.chunks),
                 key.sha1)
    schedule = ChunkSchedule(key.sha1, manifest.chunks, missing, [link.channel for link in links])
    by_name = {link.channel: link for link in links}
    tracker = ChunkProgress(manifest.size, manifest.size - sum(c.end - c.start for c in missing))

    def report(done_total: tuple[int, int]) -> None:
        if progress is not None:
            progress(*done_total)

    report(tracker.current())
    failures: list[Exception] = []

    async def worker(tg: TaskGroup) -> None:
        # A fixed set of workers taking chunks in file order (tasks racing for a limiter would
        # start in any order), so that the whole-file hash keeps up with the chunks.
        while (chunk := schedule.next_chunk()) is not None:
            def on_progress(done: int, _total: int, chunk: Chunk = chunk) -> None:
                report(tracker.update(chunk, done))

            ordered = [by_name[name] for name in schedule.channel_order()]
            try:
                via = await obtain(ordered, schedule.target(chunk),
                                   functools.partial(partial.sink, chunk), uri, on_progress)
            except Exception as exc:
                failures.append(exc)
                tg.cancel_scope.cancel()
                return
            report(tracker.chunk_done(chunk))
            schedule.delivered(via.channel)

    async with anyio.create_task_group() as tg:
        for _ in range(min(max_parallel, len(schedule))):
            tg.start_soon(worker, tg)
    if failures:
        raise failures[0]  # the verified chunks stay in tmp/partial for the next attempt

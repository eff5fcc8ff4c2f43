"""Files read straight from the channels' buckets, by a process with no daemon.

A channel's bucket is public and every file in it is named by its SHA-1 (spec/bucket.md §2), so a
script can fetch a file there itself: :func:`fetch_from_buckets` tries ``channel=``, or each
joined channel in turn (:func:`~kachery_node.channel_buckets.channel_bucket_readers`), and
stores what it gets only once it is verified:

* a file without a manifest streams into an :class:`~.storage.partial_files.IncomingFile`,
  hashed as it is written, and is renamed into the storage if its SHA-1 is the one asked for;
* a large file (``?manifest=<m>``): the manifest first (a small file, verified against ``m``,
  and it must describe the file asked for), then the chunks still missing from
  ``<storage>/tmp/partial/<sha1>/`` (:class:`~.storage.partial_files.PartialFile`), a few at a
  time in worker threads, each streamed into its range; an interrupted fetch resumes with the
  chunks already there, each checked by its own SHA-1 first. Once all are in, the file's whole
  hash (which followed the written prefix) is checked and the file is renamed into place; if
  it is wrong, the chunks are checked one by one and those that do not match the manifest are
  fetched again, each checked as it arrives. A byte range's chunks are each checked as they
  arrive.

Bytes that do not hash to what was asked for raise :class:`~kachery_node.errors.TamperedDataError`
(when no other channel delivered) and are never stored. A file in no bucket raises
:class:`~kachery_node.errors.NotFoundError` saying what each channel answered.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from .channel_buckets import ChannelBucket, channel_bucket_readers
from .errors import (
    ConfigError,
    CorruptedFileError,
    HubRequestError,
    LinkedFileChangedError,
    NotFoundError,
    TamperedDataError,
)
from .protocol.bucket_layout import file_path
from .storage.file_uris import FileUri, build_uri, parse_uri
from .storage.manifest import Chunk, Manifest, check_range, parse_manifest
from .storage.node_storage import Storage
from .storage.partial_files import IncomingFile, PartialFile
from .storage.private_files import make_private_dirs

log = logging.getLogger("kachery.bucket_reads")

#: Chunks downloaded at once (each a worker thread streaming into its range of the file).
PARALLEL_CHUNKS = 3

T = TypeVar("T")

#: ``progress(done, total)``: bytes of the file (all of it, or the chunks fetched) so far.
Progress = Callable[[int, int], None]


def fetch_from_buckets(storage: Storage, uri: str, channel: str | None = None, *,
                       progress: Progress | None = None,
                       max_parallel: int = PARALLEL_CHUNKS) -> str:
    """Fetch the file ``uri`` from ``channel``'s bucket, or each joined channel's in turn, into
    ``storage``; return its local path (see the module docstring). Raises NotFoundError (in no
    bucket; the message says what each channel answered), TamperedDataError (only bad copies
    found), ChannelNotJoinedError (``channel`` not joined), InvalidUriError."""
    key = parse_uri(uri)
    if key.chunk_of is not None:  # a chunk is an object of its own in the buckets
        key = FileUri(key.sha1)

    def attempt(bucket: ChannelBucket) -> str:
        if key.manifest_sha1 is not None:
            return _fetch_large(storage, bucket, key, progress, max_parallel)
        return _fetch_whole(storage, bucket, key.sha1, progress)

    return _from_each_bucket(storage, uri, channel, attempt, uri)


def fetch_range_from_buckets(storage: Storage, uri: str, start: int, end: int | None,
                             channel: str | None = None, *, progress: Progress | None = None,
                             max_parallel: int = PARALLEL_CHUNKS) -> bytes:
    """Bytes ``[start, end)`` (``end=None``: to the end) of the large file ``uri`` (it must
    have ``?manifest=``): its manifest, then only the chunks covering the range that are not
    verified here yet, from ``channel``'s bucket or each joined channel's in turn, into the
    file's partial copy (where later reads find them; once every chunk is there the file is
    stored whole). Raises as :func:`fetch_from_buckets`, and InvalidDataError for a range
    outside the file."""
    key = parse_uri(uri)
    if key.manifest_sha1 is None:
        raise ValueError(f"{uri} has no ?manifest=: fetch the whole file")
    return _from_each_bucket(
        storage, uri, channel,
        lambda bucket: _fetch_range(storage, bucket, key, start, end, progress, max_parallel),
        f"bytes [{start}, {end}) of {uri}")


def _from_each_bucket(storage: Storage, uri: str, channel: str | None,
                      attempt: Callable[[ChannelBucket], T], what: str) -> T:
    """``attempt(bucket)`` on ``channel``'s bucket, or each joined channel's in turn, until one
    succeeds; else NotFoundError (or TamperedDataError if a bucket had a bad copy) saying what
    each channel answered. Errors of the caller's (a range outside the file) go through."""
    buckets = channel_bucket_readers(storage.directory, channel)
    if not buckets:
        raise NotFoundError(f"{what}: this node has joined no channel, so no bucket was read "
                            "(`kachery node join CHANNEL`)", uri=uri)
    reasons: list[str] = []
    tampered: list[str] = []
    for bucket in buckets:
        try:
            return attempt(bucket)
        except TamperedDataError as exc:
            tampered.append(f"{bucket.channel}: {exc}")
        except (NotFoundError, HubRequestError, ConfigError, OSError) as exc:
            reasons.append(f"{bucket.channel}: {exc}")  # absent, unreachable, refused, cut short
    tried = "; ".join(tampered + reasons)
    if tampered:
        raise TamperedDataError(f"{what}: no channel's bucket had a good copy ({tried}); "
                                "nothing was stored")
    raise NotFoundError(f"{what} could not be read from the bucket of any channel tried ({tried})",
                        uri=uri)


def _fetch_range(storage: Storage, bucket: ChannelBucket, key: FileUri, start: int, end: int | None,
                 progress: Progress | None, max_parallel: int) -> bytes:
    manifest = fetch_manifest(storage, bucket, key)
    end = check_range(manifest, start, end)
    if end == start:
        return b""
    with partial_file_lock(storage, key.sha1):
        if storage.has_file(key):  # stored whole meanwhile
            return storage.load_bytes(key, start, end)
        partial = PartialFile(storage.directory, manifest)
        try:
            missing = partial.open_chunks(manifest.covering(start, end))
            fetch_chunks(bucket, partial, missing, progress=progress, max_parallel=max_parallel)
            data = partial.read(start, end)
            complete = partial.all_marked()
        finally:
            partial.close()
    if complete:  # the range reads fetched every chunk: store the file whole
        _fetch_large(storage, bucket, key, None, max_parallel)
    return data


def _local(storage: Storage, sha1: str) -> str | None:
    try:
        return storage.load_file(build_uri(sha1))
    except (NotFoundError, CorruptedFileError, LinkedFileChangedError):
        return None


def _fetch_whole(storage: Storage, bucket: ChannelBucket, sha1: str,
                 progress: Progress | None) -> str:
    """Stream one object into a temporary file hashed as it is written; rename it into the
    storage if it is ``sha1``."""
    key = file_path(bucket.channel, sha1)
    incoming = IncomingFile(storage.directory / "tmp", sha1)
    try:
        bucket.download(key, incoming, progress=progress)
        why = incoming.commit()
        if why is not None:
            raise TamperedDataError(f"the object {bucket.url(key)} is not sha1://{sha1}: {why}")
        storage.adopt_verified(incoming.path, sha1=sha1, fetchable=True)
    finally:
        incoming.discard()  # if it was not adopted (else it is gone already)
    return str(storage.path_for(sha1))


def fetch_manifest(storage: Storage, bucket: ChannelBucket, key: FileUri) -> Manifest:
    """The manifest of the large file ``key``: stored here, else fetched from ``bucket`` and
    stored; verified against ``?manifest=`` and checked to describe ``key``'s file."""
    assert key.manifest_sha1 is not None
    path = _local(storage, key.manifest_sha1) or _fetch_whole(storage, bucket, key.manifest_sha1, None)
    try:
        return parse_manifest(Path(path).read_bytes(), expected_sha1=key.sha1)
    except CorruptedFileError as exc:
        raise TamperedDataError(f"sha1://{key.manifest_sha1} is not the manifest of "
                                f"sha1://{key.sha1}: {exc}") from exc


@contextlib.contextmanager
def partial_file_lock(storage: Storage, sha1: str) -> Iterator[None]:
    """Hold the lock of the partial fetch of ``sha1`` (one process assembling it at a time;
    another waits, then finds what the first verified)."""
    tmp = storage.directory / "tmp"
    make_private_dirs(tmp)
    fd = os.open(tmp / f"partial.{sha1}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def fetch_chunks(bucket: ChannelBucket, partial: PartialFile, chunks: list[Chunk], *,
                 progress: Progress | None = None, max_parallel: int = PARALLEL_CHUNKS) -> None:
    """Download ``chunks`` of the open ``partial`` from ``bucket``, up to ``max_parallel`` at
    once in worker threads, each verified by its SHA-1 before its range is marked (unless the
    partial file defers that to the whole file's SHA-1: ``check_chunks=False``). Raises the
    first failure (NotFoundError, TamperedDataError, HubRequestError) after the other workers
    stop; the chunks verified so far stay for the next attempt."""
    total = sum(c.end - c.start for c in chunks)
    lock = threading.Lock()
    pending = list(reversed(chunks))  # popped in file order: the whole hash keeps up
    done_by_chunk: dict[int, int] = {}
    failures: list[BaseException] = []

    def report() -> None:
        if progress is not None:
            progress(sum(done_by_chunk.values()), total)

    def worker() -> None:
        while True:
            with lock:
                if failures or not pending:
                    return
                chunk = pending.pop()
            sink = partial.sink(chunk)

            def on_progress(done: int, _total: int, chunk: Chunk = chunk) -> None:
                with lock:
                    done_by_chunk[chunk.start] = done
                    report()

            try:
                key = file_path(bucket.channel, chunk.sha1)
                try:
                    bucket.download(key, sink, progress=on_progress)
                    why = sink.commit()
                finally:
                    sink.discard()
                if why is not None:
                    raise TamperedDataError(f"the object {bucket.url(key)} is not chunk "
                                            f"{chunk.start}-{chunk.end} (sha1 {chunk.sha1}): {why}")
            except BaseException as exc:
                with lock:
                    failures.append(exc)
                return

    threads = [threading.Thread(target=worker, name=f"kachery-chunk-{i}", daemon=True)
               for i in range(max(1, min(max_parallel, len(chunks))))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]


def _fetch_large(storage: Storage, bucket: ChannelBucket, key: FileUri, progress: Progress | None,
                 max_parallel: int) -> str:
    """Manifest, then the missing chunks into the partial file, then one rename."""
    manifest = fetch_manifest(storage, bucket, key)
    assert key.manifest_sha1 is not None
    with partial_file_lock(storage, key.sha1):
        local = _local(storage, key.sha1)
        if local is not None:  # another process finished it meanwhile
            return local
        # The chunks' own checks wait for the whole file's SHA-1 (partial_files.py).
        partial = PartialFile(storage.directory, manifest, check_chunks=False)
        try:
            missing = partial.open()
            if missing:
                log.info("fetching %d of %d chunks of sha1://%s from the bucket of %s",
                         len(missing), len(manifest.chunks), key.sha1, bucket.channel)
            fetch_chunks(bucket, partial, missing, progress=progress, max_parallel=max_parallel)
            read_sha1 = partial.whole_sha1()
            if read_sha1 is not None and read_sha1 != key.sha1:
                bad = partial.recheck()
                log.warning("sha1://%s: the chunks make up sha1://%s; %d chunk(s) do not match "
                            "the manifest, fetching them again", key.sha1, read_sha1, len(bad))
                fetch_chunks(bucket, partial, bad, progress=progress, max_parallel=max_parallel)
                read_sha1 = None  # hashed whole when stored
        finally:
            partial.close()
        try:
            storage.store_assembled(partial.content_path, expected_sha1=key.sha1,
                                    manifest_sha1=key.manifest_sha1, fetchable=True,
                                    read_sha1=read_sha1)
        except CorruptedFileError as exc:
            partial.remove()  # each chunk matched the manifest, so the manifest lies
            raise TamperedDataError(f"the chunks listed by manifest sha1://{key.manifest_sha1} do "
                                    f"not make up sha1://{key.sha1}: {exc}") from exc
        partial.remove()
    return str(storage.path_for(key.sha1))


__all__ = ["fetch_chunks", "fetch_from_buckets", "fetch_manifest", "fetch_range_from_buckets",
           "partial_file_lock"]

"""Hashing while copying, and the index of what this storage holds (``files.db``).

Theory of operation
-------------------
Storing a file reads it once. Each block is hashed (whole-file SHA-1, and per-20 MB-chunk SHA-1
when the file is large enough to need a manifest) and written to a temporary file in
``<storage>/tmp/``; at the end the temporary file is renamed into ``sha1/aa/bb/cc/<sha1>``,
which is atomic, so a reader never sees half a file. Copying and the two hashes run in parallel
threads (hashlib and file I/O release the GIL), so storing costs about as much as ``sha1sum``
plus ``cp``, not two passes.

Large files from a path are copied inside the kernel (``copy_file_range``, as ``cp`` does;
about 1.5x faster than read+write on our VMs) and the hash is computed over the bytes read back
from the copy, so what is hashed is exactly what is stored even if the source is modified
meanwhile (hashing the source instead could file a copy under the hash of other bytes, and it
would then be served as verified). Elsewhere (streams, old kernels) the bytes are read into our
buffer, hashed and written from that same buffer.

We do not fsync: a copy torn by a power loss is caught by verification on load (the stat
signature recorded at store time no longer matches, so the content is rehashed), and fsync of a
large file would cost more than the copy itself.

The index (SQLite, WAL, safe for several processes) remembers:

* ``files``: each stored file's size, manifest, last access (for LRU eviction), whether it can be
  fetched again from elsewhere (only those may be evicted), and the stat signature at its last
  verification (so unchanged files are not rehashed on every load);
* ``links``: files registered in place by ``link_file`` with their stat signature;
* ``path_hashes``: the SHA-1 of source paths already hashed, keyed by their stat signature, so
  storing or linking an unchanged big file again does not rehash it.

The index is an accelerator, not the source of truth for stored files: a file found under
``sha1/`` without an index row (copied from an original kachery storage, for example) is
verified on first load and then indexed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .manifest import CHUNK_SIZE, Chunk, Manifest, needs_manifest
from .private_files import create_private_file, make_private_dirs

BLOCK_SIZE = 4 * 1024 * 1024  # large enough to amortize per-call overhead, small enough to stream
_THREADED_MIN_SIZE = 16 * 1024 * 1024  # below this a worker thread costs more than it saves

# copy_file_range is missing or refused (old kernels across filesystems, some filesystems)
_NO_COPY_FILE_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM}

Progress = Callable[[int], None]  # called with the number of bytes just processed


def stat_signature(st: os.stat_result) -> str:
    """What we compare to decide a file is unchanged. ctime cannot be set back by a user."""
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}:{st.st_dev}"


@dataclass(frozen=True)
class Digest:
    """The result of hashing some content."""

    sha1: str
    size: int
    manifest: Manifest | None


class ContentHasher:
    """Computes the whole SHA-1 and, when asked, the 20 MB chunk SHA-1s, as data streams by.

    Optionally writes the same bytes to a temporary file (``sink``). Feed it with
    :meth:`write` (any size) or :meth:`pump` (reads a file object, overlapping work in a thread).
    """

    def __init__(self, *, chunked: bool, sink: BinaryIO | None = None,
                 progress: Progress | None = None) -> None:
        self._sha1 = hashlib.sha1()
        self._chunked = chunked
        self._chunk_hash = hashlib.sha1()
        self._chunk_start = 0
        # Bytes of the current chunk hashed so far. Its own counter, not derived from
        # self.size: chunk hashing may run in a worker thread while self.size moves on.
        self._chunk_filled = 0
        self._chunks: list[Chunk] = []
        self._sink = sink
        self._progress = progress
        self.size = 0

    def _update_chunks(self, view: memoryview) -> None:
        pos = 0
        n = len(view)
        while pos < n:
            room = CHUNK_SIZE - self._chunk_filled
            take = min(room, n - pos)
            self._chunk_hash.update(view[pos : pos + take])
            pos += take
            self._chunk_filled += take
            if take == room:
                end = self._chunk_start + CHUNK_SIZE
                self._chunks.append(Chunk(self._chunk_start, end, self._chunk_hash.hexdigest()))
                self._chunk_start = end
                self._chunk_filled = 0
                self._chunk_hash = hashlib.sha1()

    def _hash_and_sink(self, view: memoryview) -> None:
        self._sha1.update(view)
        if self._sink is not None:
            # An unbuffered write may be short (signals, near-full disks): write it all.
            while view:
                n = self._sink.write(view)
                view = view[n:]

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Add bytes (file-like interface, so ``np.save`` can write here directly)."""
        view = memoryview(data).cast("B")
        if self._chunked:
            self._update_chunks(view)
        self._hash_and_sink(view)
        self.size += len(view)
        if self._progress:
            self._progress(len(view))
        return len(view)

    def pump(self, src: BinaryIO, *, threaded: bool = True) -> None:
        """Read ``src`` to its end in blocks, overlapping the whole-file hash and the write
        (worker thread) with reading and chunk hashing (this thread)."""
        if not hasattr(src, "readinto"):  # iterators of bytes, objects with read() only
            while block := src.read(BLOCK_SIZE):
                self.write(block)
            return
        if not threaded:
            buf = bytearray(BLOCK_SIZE)
            while n := src.readinto(buf):
                self.write(memoryview(buf)[:n])
            return
        # Two buffers: the worker consumes one while we fill the other.
        bufs = [bytearray(BLOCK_SIZE), bytearray(BLOCK_SIZE)]
        pending = None
        from concurrent.futures import ThreadPoolExecutor  # (here: `kachery --help` skips it)

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kachery-hash") as pool:
            i = 0
            try:
                while True:
                    buf = bufs[i & 1]
                    n = src.readinto(buf)
                    if not n:
                        break
                    view = memoryview(buf)[:n]
                    if self._chunked:
                        self._update_chunks(view)
                    if pending is not None:
                        pending.result()
                    pending = pool.submit(self._hash_and_sink, view)
                    self.size += n
                    if self._progress:
                        self._progress(n)
                    i += 1
            finally:
                if pending is not None:
                    pending.result()

    def copy_from_file(self, src_fd: int) -> bool:
        """Copy a regular file into the sink inside the kernel (``copy_file_range``, as ``cp``
        does), appending at the sink's current end (so files can be concatenated), and hash the
        bytes read back from the sink, so that what is hashed is exactly what is stored even if
        the source changes meanwhile. Returns False, having copied nothing, where the kernel or
        filesystem cannot do it (then use :meth:`pump`)."""
        if self._sink is None or not hasattr(os, "copy_file_range"):
            return False
        dst = self._sink.fileno()
        bufs = [bytearray(BLOCK_SIZE), bytearray(BLOCK_SIZE)]
        pending: list = []
        offset = 0
        base = self.size
        # This thread copies and reads back; one worker hashes the whole file, another the
        # chunks: the three overlap on two cores.
        from concurrent.futures import ThreadPoolExecutor  # (here: `kachery --help` skips it)

        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="kachery-hash") as pool:
            try:
                i = 0
                while True:
                    try:
                        n = os.copy_file_range(src_fd, dst, BLOCK_SIZE, offset, base + offset)
                    except OSError as exc:
                        if offset == 0 and exc.errno in _NO_COPY_FILE_RANGE:
                            return False
                        raise
                    if not n:
                        break
                    view = memoryview(bufs[i & 1])[:n]
                    got = 0
                    while got < n:
                        read = os.preadv(dst, [view[got:]], base + offset + got)
                        if not read:
                            raise OSError(f"could not read back what was copied at {offset}")
                        got += read
                    for fut in pending:
                        fut.result()  # done with the other buffer, and hashes stay in order
                    pending = [pool.submit(self._sha1.update, view)]
                    if self._chunked:
                        pending.append(pool.submit(self._update_chunks, view))
                    offset += n
                    self.size += n
                    if self._progress:
                        self._progress(n)
                    i += 1
            finally:
                for fut in pending:
                    fut.result()
        return True

    def finish(self) -> Digest:
        sha1 = self._sha1.hexdigest()
        manifest = None
        if self._chunked and needs_manifest(self.size):
            chunks = list(self._chunks)
            if self.size > self._chunk_start:
                chunks.append(Chunk(self._chunk_start, self.size, self._chunk_hash.hexdigest()))
            manifest = Manifest(self.size, sha1, tuple(chunks))
        return Digest(sha1, self.size, manifest)


def hash_file(path: Path, *, chunked: bool = True, progress: Progress | None = None) -> Digest:
    """Hash a file in place (used by ``link_file`` and verification)."""
    size = os.stat(path).st_size
    hasher = ContentHasher(chunked=chunked and needs_manifest(size), progress=progress)
    with open(path, "rb", buffering=0) as f:
        hasher.pump(f, threaded=size >= _THREADED_MIN_SIZE)
    return hasher.finish()


def sha1_of_range(path: Path, start: int, end: int) -> str:
    h = hashlib.sha1()
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        remaining = end - start
        while remaining > 0:
            block = f.read(min(BLOCK_SIZE, remaining))
            if not block:
                break
            h.update(block)
            remaining -= len(block)
    return h.hexdigest()


class TempFile:
    """A temporary file in the storage's tmp dir (same filesystem, so the final rename is atomic)."""

    def __init__(self, tmp_dir: Path) -> None:
        make_private_dirs(tmp_dir)
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="store.", suffix=".tmp")  # mode 0600
        self.path = Path(name)
        self.file: BinaryIO = os.fdopen(fd, "wb", buffering=0)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    sha1 TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    manifest_sha1 TEXT,
    stored_at REAL NOT NULL,
    last_access REAL NOT NULL,
    fetchable INTEGER NOT NULL DEFAULT 0,
    verified_stat TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS files_evictable ON files(fetchable, last_access);
CREATE TABLE IF NOT EXISTS links (
    sha1 TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    manifest_sha1 TEXT,
    stat TEXT NOT NULL,
    linked_at REAL NOT NULL,
    PRIMARY KEY (sha1, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS path_hashes (
    path TEXT PRIMARY KEY,
    stat TEXT NOT NULL,
    sha1 TEXT NOT NULL,
    size INTEGER NOT NULL,
    manifest_sha1 TEXT
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class FileRecord:
    sha1: str
    size: int
    manifest_sha1: str | None
    last_access: float
    fetchable: bool
    verified_stat: str | None


@dataclass(frozen=True)
class LinkRecord:
    sha1: str
    path: str
    size: int
    manifest_sha1: str | None
    stat: str


class FileIndex:
    """The ``files.db`` index. Thread-safe; several processes may share one file."""

    def __init__(self, db_path: Path) -> None:
        create_private_file(db_path)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            db_path, timeout=30, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        with self._lock:
            self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    # -- stored files ------------------------------------------------------------------------
    def get_file(self, sha1: str) -> FileRecord | None:
        rows = self._query(
            "SELECT sha1, size, manifest_sha1, last_access, fetchable, verified_stat "
            "FROM files WHERE sha1 = ?", (sha1,))
        if not rows:
            return None
        r = rows[0]
        return FileRecord(r[0], r[1], r[2], r[3], bool(r[4]), r[5])

    def put_file(self, sha1: str, size: int, manifest_sha1: str | None, verified_stat: str,
                 *, fetchable: bool) -> None:
        """Record a stored file. Storing by the user pins it (``fetchable=False`` wins)."""
        now = time.time()
        with self._tx() as c:
            c.execute(
                "INSERT INTO files (sha1, size, manifest_sha1, stored_at, last_access, fetchable,"
                " verified_stat) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(sha1) DO UPDATE SET"
                " size = excluded.size,"
                " manifest_sha1 = coalesce(excluded.manifest_sha1, files.manifest_sha1),"
                " last_access = excluded.last_access,"
                " fetchable = files.fetchable AND excluded.fetchable,"
                " verified_stat = excluded.verified_stat",
                (sha1, size, manifest_sha1, now, now, int(fetchable), verified_stat),
            )

    def set_verified(self, sha1: str, verified_stat: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE files SET verified_stat = ? WHERE sha1 = ?", (verified_stat, sha1))

    def touch(self, sha1: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE files SET last_access = ? WHERE sha1 = ?", (time.time(), sha1))

    def mark_fetchable(self, sha1: str, fetchable: bool = True) -> bool:
        with self._tx() as c:
            cur = c.execute("UPDATE files SET fetchable = ? WHERE sha1 = ?", (int(fetchable), sha1))
            return cur.rowcount > 0

    def delete_file(self, sha1: str) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM files WHERE sha1 = ?", (sha1,))

    def total_stored_bytes(self) -> tuple[int, int]:
        (row,) = self._query("SELECT count(*), coalesce(sum(size), 0) FROM files")
        return row[0], row[1]

    def eviction_candidates(self) -> list[tuple[str, int, str | None]]:
        """Files that can be fetched again, least recently used first, as (sha1, size,
        manifest_sha1). Manifests of files still here are not candidates: they go with their
        file."""
        return [(r[0], r[1], r[2]) for r in self._query(
            "SELECT sha1, size, manifest_sha1 FROM files WHERE fetchable = 1 AND sha1 NOT IN"
            " (SELECT manifest_sha1 FROM files WHERE manifest_sha1 IS NOT NULL"
            "  UNION SELECT manifest_sha1 FROM links WHERE manifest_sha1 IS NOT NULL)"
            " ORDER BY last_access, sha1")]

    def manifest_in_use(self, manifest_sha1: str) -> bool:
        """True if a stored or linked file still refers to this manifest."""
        return bool(self._query(
            "SELECT 1 FROM files WHERE manifest_sha1 = ? UNION ALL "
            "SELECT 1 FROM links WHERE manifest_sha1 = ? LIMIT 1", (manifest_sha1, manifest_sha1)))

    # -- links -------------------------------------------------------------------------------
    def links_for(self, sha1: str) -> list[LinkRecord]:
        return [LinkRecord(*r) for r in self._query(
            "SELECT sha1, path, size, manifest_sha1, stat FROM links WHERE sha1 = ? "
            "ORDER BY linked_at DESC", (sha1,))]

    def put_link(self, sha1: str, path: str, size: int, manifest_sha1: str | None,
                 stat: str) -> None:
        with self._tx() as c:
            # A path holds one content at a time: re-linking changed content replaces the record.
            c.execute("DELETE FROM links WHERE path = ? AND sha1 != ?", (path, sha1))
            c.execute(
                "INSERT OR REPLACE INTO links (sha1, path, size, manifest_sha1, stat, linked_at)"
                " VALUES (?, ?, ?, ?, ?, ?)", (sha1, path, size, manifest_sha1, stat, time.time()))

    def delete_link(self, sha1: str, path: str) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM links WHERE sha1 = ? AND path = ?", (sha1, path))

    def link_totals(self) -> tuple[int, int]:
        (row,) = self._query("SELECT count(*), coalesce(sum(size), 0) FROM links")
        return row[0], row[1]

    # -- hashes of source paths ----------------------------------------------------------------
    def cached_path_hash(self, path: str, stat: str) -> tuple[str, int, str | None] | None:
        rows = self._query(
            "SELECT sha1, size, manifest_sha1 FROM path_hashes WHERE path = ? AND stat = ?",
            (path, stat))
        return rows[0] if rows else None

    def put_path_hash(self, path: str, stat: str, digest: Digest,
                      manifest_sha1: str | None) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO path_hashes (path, stat, sha1, size, manifest_sha1)"
                " VALUES (?, ?, ?, ?, ?)", (path, stat, digest.sha1, digest.size, manifest_sha1))

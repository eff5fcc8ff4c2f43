"""Files being fetched: each download is written once, hashed as it is written, and moved into
the storage by a rename.

A whole file (anything fetched without a manifest: small files, manifests) goes to an
:class:`IncomingFile`, ``<storage>/tmp/fetch.<sha1>.<random>.part``; once its SHA-1 and size
check out it is moved into place by
:meth:`~kachery_node.storage.node_storage.Storage.adopt_verified` without being read again.

The chunks of a large file go to a :class:`PartialFile`, kept on disk so an interrupted fetch
resumes. Layout of ``<storage>/tmp/partial/<file sha1>/``:

* ``content``: the file being assembled, created at its full size (sparse); each chunk is
  written straight to its own byte range as it downloads, so the bytes are written once;
* ``<start>-<end>.<chunk sha1>.ok``: an empty marker, created once the bytes in that range were
  written whole and verified (SHA-1 and size, hashed from the bytes as they streamed in), or,
  when the fetch defers the chunks' checks (below), only written whole;
* ``<chunk sha1>.<random>.part``: a download by a link that can only write whole files (it is
  copied into ``content`` and verified on the way, then deleted; never trusted);
* ``<chunk sha1>``: a verified chunk file left by an earlier version of the daemon (adopted into
  ``content`` after it is verified again, then deleted).

A marked range is trusted only after its SHA-1 is checked again when a fetch resumes (the disk
may have been touched meanwhile). A download that fails verification leaves its range unmarked
(its bytes are never used). A byte range of a large file is fetched the same way, only the chunks
covering it (:meth:`PartialFile.open_chunks`); later range reads take them from here
(:func:`read_partial_range`). As soon as the chunks from the start of the file are verified, they
are read back and fed to a whole-file SHA-1 (:meth:`PartialFile.whole_sha1`), so that when the
last chunk is marked the file's hash is known without reading it whole again (that took about
0.5 s a GiB, after the last byte had arrived). ``content`` is then moved into the storage by
:meth:`~kachery_node.storage.node_storage.Storage.store_assembled`, which checks that hash against the
file's SHA-1, and the directory is removed.

A fetch of the whole file may defer the chunks' own checks (``PartialFile(...,
check_chunks=False)``): each chunk is then only counted as it streams in, and marked once it has
its size; the whole-file SHA-1 follows the written prefix the same way, and, if it is the file's,
every byte is verified at once (one SHA-1 pass over the file instead of two: ~0.55 CPU-s a GiB
less for the receiving process). If it is not, :meth:`PartialFile.recheck` hashes each deferred
chunk against the manifest, drops the markers of those that do not match and returns them; they
are fetched again, each checked as it arrives, and the file is hashed whole once more when it is
stored. A range read always checks its chunks (it never sees the whole file).

Blocking (file I/O and hashing): the exchange calls these from a worker thread, except
``write_piece`` (of :class:`IncomingFile` and :class:`ChunkSink`), which is async and moves its
work to a worker thread itself (``write_blocking`` is the same for a caller already in one).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import anyio

from .manifest import Chunk, Manifest
from .private_files import make_private_dirs

_BLOCK = 1 << 20
STALE_AFTER_S = 7 * 24 * 3600  # a partial fetch untouched for a week is abandoned
CONTENT_NAME = "content"


def sha1_and_size(path: Path) -> tuple[str, int]:
    """SHA-1 (hex) and size of a file's content."""
    h = hashlib.sha1()
    size = 0
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(_BLOCK)
        while n := f.readinto(buf):
            h.update(memoryview(buf)[:n])
            size += n
    return h.hexdigest(), size


def temp_path(directory: Path, stem: str) -> Path:
    """A fresh ``<stem>.<random>.part`` path in ``directory`` (created if needed)."""
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{stem}.{secrets.token_hex(4)}.part"


class IncomingFile(os.PathLike):
    """The destination of a whole file's download: a new file in ``<storage>/tmp/`` (the storage's
    own sweep removes it should the process die), hashed as it is written.

    A link that streams awaits :meth:`write_piece` for each piece of the body (or calls
    :meth:`write_blocking` from a worker thread); a link that can only write a new file
    (``open(dest, "xb")``) writes to ``os.fspath(incoming)``, and :meth:`commit` then hashes that
    file (one read, no copy). :meth:`commit` checks the SHA-1 (and the size, when known) and
    keeps the file for :meth:`Storage.adopt_verified
    <kachery_node.storage.node_storage.Storage.adopt_verified>`, or deletes it and says why;
    :meth:`discard` deletes it whatever happened.
    """

    def __init__(self, tmp_dir: Path, sha1: str, size: int | None = None) -> None:
        make_private_dirs(tmp_dir)
        self.path = tmp_dir / f"fetch.{sha1}.{secrets.token_hex(4)}.part"
        self.sha1 = sha1
        self.expected_size = size
        #: Bytes received so far (after :meth:`commit`: the file's size).
        self.size = 0
        self._hash = hashlib.sha1()
        self._fd: int | None = None
        self._streamed = False

    def __fspath__(self) -> str:
        return str(self.path)

    async def write_piece(self, data: bytes) -> None:
        await anyio.to_thread.run_sync(self.write_blocking, data)

    def write_blocking(self, data: bytes | memoryview) -> None:
        """:meth:`write_piece` for a caller in a worker thread (``data`` may be a view of a
        buffer the caller reuses: it is written and hashed before this returns)."""
        if self._fd is None:
            self._streamed = True
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        view = memoryview(data).cast("B")
        _pwrite_all(self._fd, view, self.size)
        self._hash.update(view)
        self.size += len(view)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def commit(self) -> str | None:
        """Check what was received: None if it has the SHA-1 (and size) and is kept at
        :attr:`path`, else why not (the file is then deleted). Blocking."""
        self._close()
        if self._streamed:
            actual = self._hash.hexdigest()
        else:
            try:
                actual, self.size = sha1_and_size(self.path)
            except FileNotFoundError:  # an empty body streamed as no piece at all
                self.path.touch(mode=0o600)
                actual = self._hash.hexdigest()
        why = None
        if self.expected_size is not None and self.size != self.expected_size:
            why = f"it has {self.size} bytes, not {self.expected_size}"
        elif actual != self.sha1:
            why = f"its content hashes to {actual}, not {self.sha1}"
        if why is not None:
            self.discard()
        return why

    def discard(self) -> None:
        self._close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


class PartialFile:
    """One large file being fetched (see the module docstring). :meth:`open` it (it returns the
    chunks still missing), give each download a :meth:`sink`, :meth:`close` it, and once every
    chunk is verified store :attr:`content_path`."""

    def __init__(self, storage_dir: Path, manifest: Manifest, *, check_chunks: bool = True) -> None:
        self.manifest = manifest
        self.directory = Path(storage_dir) / "tmp" / "partial" / manifest.sha1
        self.content_path = self.directory / CONTENT_NAME
        #: Whether each sink checks its chunk's SHA-1 (False: the whole file's SHA-1 will, see
        #: the module docstring; :meth:`recheck` turns it back on).
        self.check_chunks = check_chunks
        self._fd: int | None = None
        # The whole-file SHA-1 of content[0:_hashed_to], read back from the disk after each
        # chunk in that prefix was marked; commits in several threads advance it in turn.
        self._whole = hashlib.sha1()
        self._hashed_to = 0
        self._verified: set[int] = set()  # starts of the chunks marked since open()
        self._unchecked: set[int] = set()  # of those, the ones marked without their own check
        self._chunk_at = {c.start: c for c in manifest.chunks}
        self._prefix_lock = threading.Lock()

    @property
    def fd(self) -> int:
        if self._fd is None:
            raise RuntimeError(f"{self.directory} is not open")
        return self._fd

    def _marker(self, chunk: Chunk) -> Path:
        return self.directory / f"{chunk.start}-{chunk.end}.{chunk.sha1}.ok"

    def open(self) -> list[Chunk]:
        """Open (or create) ``content``; return the chunks not yet here, after re-verifying
        those marked as verified (a bad one loses its marker) and adopting verified chunk files
        left by an earlier version."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._fd is None:
            self._fd = os.open(self.content_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if os.fstat(self._fd).st_size != self.manifest.size:
            os.ftruncate(self._fd, self.manifest.size)
        missing = []
        for chunk in self.manifest.chunks:
            marker = self._marker(chunk)
            if marker.exists():
                if self._range_sha1(chunk) == chunk.sha1:
                    self._chunk_marked(chunk)
                    continue
                marker.unlink()
            legacy = self.directory / chunk.sha1
            if legacy.is_file():
                sink = ChunkSink(self, chunk, check=True)
                if sink.commit(legacy) is None:  # marks it verified
                    continue
            missing.append(chunk)
        os.utime(self.directory)  # still in use: keep remove_stale_partials away
        return missing

    def open_chunks(self, chunks: list[Chunk], *, create: bool = True) -> list[Chunk]:
        """Open (or, if ``create``, create, sparse, at the file's full size) ``content`` for a
        byte range: return those of ``chunks`` not verified here yet, re-verifying only those
        marked (not the whole file, as :meth:`open` does). For fetching and reading part of a
        large file. FileNotFoundError if there is no ``content`` and not ``create``."""
        if create:
            self.directory.mkdir(parents=True, exist_ok=True)
        if self._fd is None:
            flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
            self._fd = os.open(self.content_path, flags, 0o600)
        if os.fstat(self._fd).st_size != self.manifest.size:
            os.ftruncate(self._fd, self.manifest.size)
        missing = []
        for chunk in chunks:
            marker = self._marker(chunk)
            if marker.exists():
                if self._range_sha1(chunk) == chunk.sha1:
                    continue
                marker.unlink()
            missing.append(chunk)
        os.utime(self.directory)  # still in use: keep remove_stale_partials away
        return missing

    def all_marked(self) -> bool:
        """Whether every chunk has its verified marker (then :meth:`open` and assemble)."""
        return all(self._marker(c).exists() for c in self.manifest.chunks)

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of ``content`` (the caller checked that the chunks covering
        them are verified: :meth:`open_chunks` returned none of them)."""
        data = os.pread(self.fd, end - start, start)
        if len(data) != end - start:
            raise OSError(f"{self.content_path} is shorter than expected; was it truncated?")
        return data

    def _range_sha1(self, chunk: Chunk) -> str:
        h = hashlib.sha1()
        self._hash_range_into(h, chunk)
        return h.hexdigest()

    def _hash_range_into(self, h: Any, chunk: Chunk) -> None:
        buf = bytearray(_BLOCK)
        pos = chunk.start
        while pos < chunk.end:
            view = memoryview(buf)[: min(_BLOCK, chunk.end - pos)]
            n = os.preadv(self.fd, [view], pos)
            if not n:
                break
            h.update(view[:n])
            pos += n

    def _chunk_marked(self, chunk: Chunk, *, checked: bool = True) -> None:
        """``chunk``'s range holds its bytes (verified, unless not ``checked``: the whole-file
        hash will tell): extend the whole-file hash over every marked chunk that now follows the
        hashed prefix (reading them back: the hash is of what is on disk)."""
        with self._prefix_lock:
            self._verified.add(chunk.start)
            if not checked:
                self._unchecked.add(chunk.start)
            while (nxt := self._chunk_at.get(self._hashed_to)) is not None and nxt.start in self._verified:
                self._hash_range_into(self._whole, nxt)
                self._hashed_to = nxt.end

    def whole_sha1(self) -> str | None:
        """The SHA-1 of the whole ``content``, once every chunk is marked (else None)."""
        with self._prefix_lock:
            return self._whole.hexdigest() if self._hashed_to == self.manifest.size else None

    def recheck(self) -> list[Chunk]:
        """After the whole-file SHA-1 of a fetch with deferred checks came out wrong: hash each
        chunk marked without its own check, drop the marker of each that does not match the
        manifest and return those (to be fetched again). From now on every sink checks its chunk,
        and :meth:`whole_sha1` is None (the file is hashed whole when stored). Blocking."""
        with self._prefix_lock:
            self.check_chunks = True
            unchecked = sorted(self._unchecked)
            self._unchecked.clear()
            self._whole, self._hashed_to = hashlib.sha1(), -1  # never the file's size again
        bad = []
        for start in unchecked:
            chunk = self._chunk_at[start]
            if self._range_sha1(chunk) != chunk.sha1:
                self._marker(chunk).unlink(missing_ok=True)
                with self._prefix_lock:
                    self._verified.discard(start)
                bad.append(chunk)
        return bad

    def sink(self, chunk: Chunk) -> ChunkSink:
        """Where a download of ``chunk`` goes (see :class:`ChunkSink`)."""
        return ChunkSink(self, chunk)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class ChunkSink(os.PathLike):
    """The destination of one chunk's download.

    A link that can stream (the daemon's channel runtime) awaits :meth:`write_piece` for each
    piece of the body: the piece is written to the chunk's range of ``content`` and hashed, in a
    worker thread. Bytes past the chunk's size are hashed and counted but never written (a too
    long object must not overwrite the next chunk). A link that can only write a new file
    (``open(dest, "xb")``) gets a ``.part`` path from ``os.fspath(sink)``; :meth:`commit` then
    copies that file in, hashing it on the way. Either way :meth:`commit` checks the size and the
    SHA-1 and only then marks the range verified; :meth:`discard` removes the ``.part`` file. When
    the partial file defers the chunks' checks (``check_chunks=False``) the bytes are not hashed
    here, and :meth:`commit` checks only the size (the whole file's SHA-1 checks the rest).
    """

    def __init__(self, partial: PartialFile, chunk: Chunk, *, check: bool | None = None) -> None:
        self._partial = partial
        self.chunk = chunk
        self.size = chunk.end - chunk.start
        self._check = partial.check_chunks if check is None else check
        self._hash = hashlib.sha1()
        self._received = 0
        self._streamed = False
        self._fallback = temp_path(partial.directory, chunk.sha1)

    def __fspath__(self) -> str:
        return str(self._fallback)

    async def write_piece(self, data: bytes) -> None:
        self._streamed = True
        await anyio.to_thread.run_sync(self._write, data)

    def write_blocking(self, data: bytes | memoryview) -> None:
        """:meth:`write_piece` for a caller already in a worker thread (the bytes may be a view
        of a buffer the caller reuses: they are written and hashed before this returns)."""
        self._streamed = True
        self._write(data)

    def _write(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        keep = min(len(view), max(0, self.size - self._received))
        if keep:
            _pwrite_all(self._partial.fd, view[:keep], self.chunk.start + self._received)
        if self._check:
            self._hash.update(view)
        self._received += len(view)

    def _copy_in(self, path: Path) -> None:
        with open(path, "rb", buffering=0) as f:
            buf = bytearray(_BLOCK)
            while n := f.readinto(buf):
                self._write(memoryview(buf)[:n])

    def commit(self, path: Path | None = None) -> str | None:
        """Mark the chunk verified if what was received has its size and SHA-1. Returns None
        on success, else why it was rejected (the range then stays unmarked). ``path``: take the
        bytes from that file (default: the ``.part`` file, unless they were streamed). Blocking;
        the file taken from is deleted either way."""
        try:
            if not self._streamed:
                source = self._fallback if path is None else path
                if source.is_file():
                    self._copy_in(source)
            if self._received != self.size:
                return f"it has {self._received} bytes, not {self.size}"
            if self._check and (actual := self._hash.hexdigest()) != self.chunk.sha1:
                return f"its content hashes to {actual}, not {self.chunk.sha1}"
            self._partial._marker(self.chunk).touch()
            self._partial._chunk_marked(self.chunk, checked=self._check)
            return None
        finally:
            self.discard()
            if path is not None:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._fallback.unlink()


def read_partial_range(storage_dir: Path, manifest: Manifest, start: int, end: int) -> bytes | None:
    """Bytes ``[start, end)`` of the large file ``manifest`` describes, from its partial copy
    (``<storage>/tmp/partial/<sha1>/``) if every chunk covering them is verified there
    (re-hashing those chunks first), else None. Later range reads reuse what an earlier one
    fetched this way."""
    partial = PartialFile(storage_dir, manifest)
    try:
        st = os.stat(partial.content_path)
    except FileNotFoundError:
        return None
    # Chunks re-hashed since ``content`` last changed are not hashed again (a reader going through
    # a range in small blocks would otherwise hash its 20 MB chunk once per block).
    version = (str(partial.content_path), st.st_ino, st.st_mtime_ns, st.st_size)
    chunks = manifest.covering(start, end)
    with _recently_verified_lock:
        known = _recently_verified.get(version, set())
        unchecked = [c for c in chunks if c.start not in known]
    if not unchecked and all(partial._marker(c).exists() for c in chunks):
        try:
            with open(partial.content_path, "rb", buffering=0) as f:
                data = os.pread(f.fileno(), end - start, start)
            return data if len(data) == end - start else None
        except FileNotFoundError:
            return None
    try:
        if partial.open_chunks(unchecked, create=False):
            return None
        with _recently_verified_lock:
            if len(_recently_verified) > 64:
                _recently_verified.clear()
            _recently_verified.setdefault(version, set()).update(c.start for c in chunks)
        return partial.read(start, end) if end > start else b""
    except FileNotFoundError:  # removed meanwhile (assembled into the storage, or swept)
        return None
    finally:
        partial.close()


_recently_verified: dict[tuple[str, int, int, int], set[int]] = {}
_recently_verified_lock = threading.Lock()


def remove_stale_partials(storage_dir: Path, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Delete partial fetches nobody resumed for ``max_age_s``; returns what was removed."""
    root = Path(storage_dir) / "tmp" / "partial"
    removed = []
    now = time.time()
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(root):
            with contextlib.suppress(OSError):
                if entry.is_dir() and now - entry.stat().st_mtime > max_age_s:
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed.append(Path(entry.path))
    return removed

"""Verified chunks of a large file being fetched, kept on disk so an interrupted fetch resumes.

Layout: ``<storage>/tmp/partial/<file sha1>/<chunk sha1>`` holds one verified chunk;
``<chunk sha1>.<random>.part`` is a download in progress (never trusted, removed on failure).
A chunk file is trusted only after its SHA-1 and size were checked, both when it was written
and again when a later fetch resumes (the disk may have been touched meanwhile). When every
chunk is present the file is assembled by streaming the chunks, in order, into
``Storage.store_stream(expected_sha1=…)``, which verifies the whole-file SHA-1, and the
directory is removed.

Blocking (file I/O and hashing): the exchange calls these from a worker thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import time
from pathlib import Path

from ..manifest import Chunk, Manifest

_BLOCK = 1 << 20
STALE_AFTER_S = 7 * 24 * 3600  # a partial fetch untouched for a week is abandoned


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


def commit_verified(tmp: Path, dest: Path, sha1: str, size: int | None) -> str | None:
    """Move ``tmp`` to ``dest`` if its content has ``sha1`` (and ``size``, when given).

    Returns None on success, else why it was rejected (``tmp`` is deleted either way)."""
    try:
        actual, actual_size = sha1_and_size(tmp)
        if size is not None and actual_size != size:
            return f"it has {actual_size} bytes, not {size}"
        if actual != sha1:
            return f"its content hashes to {actual}, not {sha1}"
        os.replace(tmp, dest)
        return None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


class PartialFile:
    """The chunks of one large file fetched so far (see the module docstring)."""

    def __init__(self, storage_dir: Path, manifest: Manifest) -> None:
        self.manifest = manifest
        self.directory = Path(storage_dir) / "tmp" / "partial" / manifest.sha1

    def chunk_path(self, chunk: Chunk) -> Path:
        return self.directory / chunk.sha1

    def new_temp(self, chunk: Chunk) -> Path:
        return temp_path(self.directory, chunk.sha1)

    def missing_chunks(self) -> list[Chunk]:
        """Chunks not yet here, after re-verifying those that are (a bad one is deleted)."""
        missing = []
        for chunk in self.manifest.chunks:
            path = self.chunk_path(chunk)
            if path.is_file():
                actual, size = sha1_and_size(path)
                if actual == chunk.sha1 and size == chunk.end - chunk.start:
                    continue
                path.unlink()
            missing.append(chunk)
        if self.directory.is_dir():
            os.utime(self.directory)  # still in use: keep remove_stale_partials away
        return missing

    def reader(self) -> ChunkReader:
        """A binary stream of the chunks, in order (all must be present)."""
        return ChunkReader([self.chunk_path(c) for c in self.manifest.chunks])

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class ChunkReader:
    """Reads several files one after the other as one stream (``readinto``, for store_stream)."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths = list(paths)
        self._file = None

    def readinto(self, buf) -> int:
        while True:
            if self._file is None:
                if not self._paths:
                    return 0
                self._file = open(self._paths.pop(0), "rb", buffering=0)  # noqa: SIM115
            n = self._file.readinto(buf)
            if n:
                return n
            self._file.close()
            self._file = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ChunkReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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

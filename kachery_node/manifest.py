"""Manifests of large files: the original's format, byte for byte (spec/storage.md §Manifest).

A file larger than :data:`CHUNK_SIZE` bytes is described by a manifest listing its SHA-1 and
the SHA-1 of each 20,000,000-byte chunk (the last one shorter). The manifest is itself stored as
an ordinary file; its SHA-1 goes in the URI (``?manifest=``) so that another node can fetch and
verify the file chunk by chunk, and so that a range read verifies only the chunks it covers.
Chunks are never stored as separate copies: a chunk is a byte range of its parent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .errors import CorruptedFileError
from .uris import is_sha1_hex

CHUNK_SIZE = 20_000_000  # decimal, as the original (KacheryStorageManager.ts)


@dataclass(frozen=True)
class Chunk:
    start: int
    end: int
    sha1: str


@dataclass(frozen=True)
class Manifest:
    size: int
    sha1: str
    chunks: tuple[Chunk, ...]

    def to_bytes(self) -> bytes:
        """Serialize exactly as the original's ``JSON.stringify`` (key order size, sha1, chunks)."""
        doc = {
            "size": self.size,
            "sha1": self.sha1,
            "chunks": [{"start": c.start, "end": c.end, "sha1": c.sha1} for c in self.chunks],
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    def covering(self, start: int, end: int) -> list[Chunk]:
        """The chunks that overlap ``[start, end)``."""
        first = start // CHUNK_SIZE
        last = max(first, (end - 1) // CHUNK_SIZE)
        return list(self.chunks[first : last + 1])


def needs_manifest(size: int) -> bool:
    """The original makes a manifest only when there is more than one chunk."""
    return size > CHUNK_SIZE


def parse_manifest(data: bytes, *, expected_sha1: str | None = None) -> Manifest:
    """Parse and strictly validate a manifest (contiguous chunks covering the whole size)."""
    try:
        doc = json.loads(data)
        size, sha1, raw_chunks = doc["size"], doc["sha1"], doc["chunks"]
        chunks = tuple(Chunk(int(c["start"]), int(c["end"]), str(c["sha1"])) for c in raw_chunks)
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptedFileError(f"not a valid kachery manifest: {exc}") from exc
    pos = 0
    for i, c in enumerate(chunks):
        expected_end = min(pos + CHUNK_SIZE, size)
        if c.start != pos or c.end != expected_end or not is_sha1_hex(c.sha1):
            raise CorruptedFileError(f"manifest chunk {i} is malformed: {c}")
        pos = c.end
    if pos != size or not isinstance(size, int) or not is_sha1_hex(sha1):
        raise CorruptedFileError("manifest chunks do not cover the file")
    if expected_sha1 is not None and sha1 != expected_sha1:
        raise CorruptedFileError(
            f"manifest describes file {sha1}, not the requested {expected_sha1}"
        )
    return Manifest(size, sha1, chunks)

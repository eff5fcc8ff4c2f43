"""Manifests of large files: the original's format, byte for byte (spec/storage.md §Manifest).

A file larger than :data:`CHUNK_SIZE` bytes is described by a manifest listing its SHA-1 and
the SHA-1 of each 20,000,000-byte chunk (the last one shorter). The manifest is itself stored as
an ordinary file; its SHA-1 goes in the URI (``?manifest=``) so that another node can fetch and
verify the file chunk by chunk, and so that a range read verifies only the chunks it covers.
Chunks are stored as separate copies only when one is asked for by its own URI
(``?chunkOf=``); otherwise a chunk is a byte range of its parent (or of the parent's partial copy,
``tmp/partial/``, after a range read).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import orjson

from ..errors import CorruptedFileError, InvalidDataError, short_repr
from .file_uris import is_sha1_hex

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


def check_range(manifest: Manifest, start: int, end: int | None) -> int:
    """``end`` (None: the file's size) after checking ``[start, end)`` is inside the file."""
    end = manifest.size if end is None else end
    if not (0 <= start <= end <= manifest.size):
        raise InvalidDataError(f"byte range [{start}, {end}) is outside sha1://{manifest.sha1}, "
                               f"which has {manifest.size} bytes")
    return end


def needs_manifest(size: int) -> bool:
    """The original makes a manifest only when there is more than one chunk."""
    return size > CHUNK_SIZE


def parse_manifest(data: bytes, *, expected_sha1: str | None = None) -> Manifest:
    """Parse and strictly validate a manifest (contiguous chunks covering the whole size).

    Manifests come from other nodes: anything but the exact shape above (integers that are
    JSON integers, 40-hex hashes) raises :class:`CorruptedFileError`.
    """
    try:
        doc = orjson.loads(data)  # NaN/Infinity are not JSON; nesting is capped at 1024
    except orjson.JSONDecodeError as exc:
        raise CorruptedFileError(f"not a valid kachery manifest: {exc}") from exc
    if type(doc) is not dict:
        raise CorruptedFileError("not a valid kachery manifest: not a JSON object")
    size, sha1, raw_chunks = doc.get("size"), doc.get("sha1"), doc.get("chunks")
    if type(size) is not int or size < 0 or not is_sha1_hex(sha1) or type(raw_chunks) is not list:
        raise CorruptedFileError("not a valid kachery manifest: needs size, sha1 and chunks")
    chunks = []
    pos = 0
    for i, c in enumerate(raw_chunks):
        start, end, chunk_sha1 = (c.get("start"), c.get("end"), c.get("sha1")) if type(c) is dict \
            else (None, None, None)
        if (type(start) is not int or type(end) is not int or start != pos
                or end != min(pos + CHUNK_SIZE, size) or not is_sha1_hex(chunk_sha1)):
            raise CorruptedFileError(f"manifest chunk {i} is malformed: {short_repr(c)}")
        chunks.append(Chunk(start, end, chunk_sha1))
        pos = end
    if pos != size:
        raise CorruptedFileError("manifest chunks do not cover the file")
    if expected_sha1 is not None and sha1 != expected_sha1:
        raise CorruptedFileError(
            f"manifest describes file {sha1}, not the requested {expected_sha1}"
        )
    return Manifest(size, sha1, tuple(chunks))


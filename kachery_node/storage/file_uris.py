"""``sha1://`` content URIs: parsing and building (grammar in spec/storage.md).

    sha1://<sha1>[/<basename>][?manifest=<manifest sha1>]
    sha1://<chunk sha1>?chunkOf=<file sha1>~<start byte>~<end byte>     (the original's form)

The basename is cosmetic: it never changes what the URI means. Unknown query parameters are
ignored, as the original did, so URIs written by newer tools still load.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from ..errors import InvalidUriError

_HEX40 = re.compile(r"[0-9a-f]{40}")
# ASCII digits only (str.isdigit also accepts "²" and "٣"), and a value that fits a signed
# 64-bit integer: byte offsets go to SQLite and to HTTP Range headers.
_OFFSET = re.compile(r"[0-9]{1,19}")
MAX_OFFSET = 2**63 - 1


@dataclass(frozen=True)
class ChunkOf:
    """The byte range ``[start, end)`` of the file whose SHA-1 is ``file_sha1``."""

    file_sha1: str
    start: int
    end: int


@dataclass(frozen=True)
class FileUri:
    """A parsed ``sha1://`` URI."""

    sha1: str
    basename: str | None = None
    manifest_sha1: str | None = None
    chunk_of: ChunkOf | None = None

    def __str__(self) -> str:
        return build_uri(self.sha1, self.basename, self.manifest_sha1)


def is_sha1_hex(s: object) -> bool:
    """True if ``s`` is a string of 40 lowercase hex characters."""
    return isinstance(s, str) and bool(_HEX40.fullmatch(s))


def _check_hex(value: str, what: str, uri: str) -> str:
    if not is_sha1_hex(value):
        raise InvalidUriError(
            f"{uri!r}: {what} must be 40 lowercase hex characters (a SHA-1), got {value!r}"
        )
    return value


def parse_uri(uri: str) -> FileUri:
    """Parse a ``sha1://`` URI; raise :class:`InvalidUriError` with the reason if malformed."""
    if not isinstance(uri, str):
        raise InvalidUriError(f"a URI must be a string, got {type(uri).__name__}")
    if not uri.startswith("sha1://"):
        raise InvalidUriError(f"{uri!r} is not a sha1:// URI (expected sha1://<40 hex>/<name>)")
    rest = uri[len("sha1://") :]
    rest, _, query = rest.partition("?")
    sha1, _, basename = rest.partition("/")
    _check_hex(sha1, "the hash", uri)
    params = urllib.parse.parse_qs(query, keep_blank_values=True) if query else {}
    manifest_sha1 = None
    if "manifest" in params:
        (manifest_sha1,) = params["manifest"][-1:]
        _check_hex(manifest_sha1, "the manifest parameter", uri)
    chunk_of = None
    if "chunkOf" in params:
        parts = params["chunkOf"][-1].split("~")
        if len(parts) != 3 or not all(_OFFSET.fullmatch(p) for p in parts[1:]):
            raise InvalidUriError(
                f"{uri!r}: chunkOf must be <sha1>~<start>~<end> (decimal ASCII digits)")
        start, end = int(parts[1]), int(parts[2])
        if end > MAX_OFFSET:
            raise InvalidUriError(f"{uri!r}: chunkOf offsets must be below 2^63")
        if end < start:
            raise InvalidUriError(f"{uri!r}: chunkOf end is before start")
        chunk_of = ChunkOf(_check_hex(parts[0], "the chunkOf hash", uri), start, end)
    return FileUri(sha1, basename or None, manifest_sha1, chunk_of)


def build_uri(sha1: str, basename: str | None = None, manifest_sha1: str | None = None) -> str:
    """``sha1://<sha1>/<basename>[?manifest=<sha1>]``. The basename is quoted if needed."""
    uri = f"sha1://{sha1}"
    if basename:
        uri += "/" + urllib.parse.quote(basename, safe="/._-~+=,@")
    if manifest_sha1:
        uri += f"?manifest={manifest_sha1}"
    return uri

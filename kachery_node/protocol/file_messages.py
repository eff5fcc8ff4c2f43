"""The two pub-sub messages of the file exchange, as data: building and strictly parsing them.

Pure logic, no I/O (spec/node-protocol.md §Files). The envelope (channel, band, time, nonce,
signature) is added by :func:`kachery_node.protocol.node_messages.seal`; these are the bodies.

* ``requestFile`` on band ``request-files`` (published by a requester)::

      {"type": "requestFile", "sha1": <40 hex>, "request_id": <8-64 chars>,
       "size"?: int, "chunk_of"?: {"sha1": <40 hex>, "start": int, "end": int},
       "bad_object"?: true}

* ``uploadStatus`` on band ``provide-files`` (published by a provider)::

      {"type": "uploadStatus", "sha1": <40 hex>, "status": "started"|"progress"|"finished"|"failed",
       "request_id"?: str, "size"?: int, "bytes"?: int, "error"?: str (< 1000 chars)}

Parsing raises :class:`MalformedFileMessage` (the peer's fault) with the reason; the exchange
logs it and drops the message.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from ..storage.file_uris import is_sha1_hex
from ..storage.manifest import CHUNK_SIZE

REQUEST_BAND = "request-files"
STATUS_BAND = "provide-files"
REQUEST_FILE = "requestFile"
UPLOAD_STATUS = "uploadStatus"
STATUSES = ("started", "progress", "finished", "failed")
MAX_ERROR_CHARS = 999  # the original's ErrorMessage limit (< 1000)


class MalformedFileMessage(ValueError):
    """A ``requestFile`` or ``uploadStatus`` body does not follow spec/node-protocol.md §Files."""


@dataclass(frozen=True)
class ChunkRef:
    """Bytes ``[start, end)`` of the file whose SHA-1 is ``sha1`` (a manifest chunk)."""

    sha1: str
    start: int
    end: int


@dataclass(frozen=True)
class FileRequest:
    """A parsed ``requestFile``: upload the object ``sha1`` to the bucket."""

    sha1: str
    request_id: str
    size: int | None = None
    chunk_of: ChunkRef | None = None
    bad_object: bool = False

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": REQUEST_FILE, "sha1": self.sha1,
                                "request_id": self.request_id}
        if self.size is not None:
            body["size"] = self.size
        if self.chunk_of is not None:
            c = self.chunk_of
            body["chunk_of"] = {"sha1": c.sha1, "start": c.start, "end": c.end}
        if self.bad_object:
            body["bad_object"] = True
        return body


@dataclass(frozen=True)
class UploadStatus:
    """A parsed ``uploadStatus`` from a provider about the object ``sha1``."""

    sha1: str
    status: str
    request_id: str | None = None
    size: int | None = None
    bytes: int | None = None
    error: str | None = None

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": UPLOAD_STATUS, "sha1": self.sha1, "status": self.status}
        for name in ("request_id", "size", "bytes"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        if self.error is not None:
            body["error"] = self.error[:MAX_ERROR_CHARS]
        return body


def new_request_id() -> str:
    """16 random hex characters: enough to tell requests apart in logs."""
    return secrets.token_hex(8)


def _sha1(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not is_sha1_hex(value):
        raise MalformedFileMessage(f"{name!r} must be 40 lowercase hex characters, got {value!r}")
    return value


def _opt_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise MalformedFileMessage(f"{name!r} must be a non-negative integer, got {value!r}")
    return value


def parse_request(body: dict[str, Any]) -> FileRequest:
    """Validate a ``requestFile`` body. A chunk range must be non-empty and at most
    :data:`CHUNK_SIZE` bytes (so a provider never loads more than one chunk in memory)."""
    if body.get("type") != REQUEST_FILE:
        raise MalformedFileMessage(f"not a {REQUEST_FILE} message")
    sha1 = _sha1(body, "sha1")
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not 8 <= len(request_id) <= 64:
        raise MalformedFileMessage("'request_id' must be a string of 8 to 64 characters")
    size = _opt_int(body, "size")
    chunk_of = None
    raw = body.get("chunk_of")
    if raw is not None:
        if not isinstance(raw, dict):
            raise MalformedFileMessage("'chunk_of' must be an object {sha1, start, end}")
        parent = _sha1(raw, "sha1")
        start, end = _opt_int(raw, "start"), _opt_int(raw, "end")
        if start is None or end is None or not start < end or end - start > CHUNK_SIZE:
            raise MalformedFileMessage(
                f"'chunk_of' needs 0 <= start < end with end - start <= {CHUNK_SIZE}, got {raw!r}")
        if size is not None and size != end - start:
            raise MalformedFileMessage("'size' disagrees with the 'chunk_of' range")
        chunk_of = ChunkRef(parent, start, end)
    bad_object = body.get("bad_object", False)
    if type(bad_object) is not bool:
        raise MalformedFileMessage("'bad_object' must be true or false")
    return FileRequest(sha1, request_id, size, chunk_of, bad_object)


def parse_status(body: dict[str, Any]) -> UploadStatus:
    """Validate an ``uploadStatus`` body."""
    if body.get("type") != UPLOAD_STATUS:
        raise MalformedFileMessage(f"not an {UPLOAD_STATUS} message")
    sha1 = _sha1(body, "sha1")
    status = body.get("status")
    if status not in STATUSES:
        raise MalformedFileMessage(f"'status' must be one of {STATUSES}, got {status!r}")
    request_id = body.get("request_id")
    if request_id is not None and (not isinstance(request_id, str) or len(request_id) > 64):
        raise MalformedFileMessage("'request_id' must be a string of at most 64 characters")
    error = body.get("error")
    if error is not None and (not isinstance(error, str) or len(error) > MAX_ERROR_CHARS):
        raise MalformedFileMessage(f"'error' must be a string of at most {MAX_ERROR_CHARS} chars")
    return UploadStatus(sha1, status, request_id, _opt_int(body, "size"),
                        _opt_int(body, "bytes"), error)

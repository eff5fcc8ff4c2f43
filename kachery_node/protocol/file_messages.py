"""The file exchange as data: its two pub-sub messages, and the actions and outcomes its cores trade.

Pure logic, no I/O (spec/node-protocol.md §Files). The envelope (channel, band, time, nonce,
signature) is added by :func:`kachery_node.protocol.node_messages.seal`; these are the bodies.

* ``requestFile`` on band ``request-files`` (published by a requester)::

      {"type": "requestFile", "sha1": <40 hex>, "request_id": <8-64 chars>,
       "size"?: int, "chunk_of"?: {"sha1": <40 hex>, "start": int, "end": int},
       "bad_object"?: true}

* ``uploadStatus`` on band ``provide-files`` (published by a provider)::

      {"type": "uploadStatus", "sha1": <40 hex>, "status": "started"|"progress"|"finished"|"failed",
       "request_id"?: str, "size"?: int, "bytes"?: int, "error"?: str (< 1000 chars)}

:meth:`FileRequest.parse` and :meth:`UploadStatus.parse` are strict and raise
:class:`MalformedFileMessage` (the peer's fault); ``to_body`` is the only place the wire shape is
written. The *actions* below are what :class:`~.file_requester.FileRequester` and
:class:`~.file_provider.FileProvider` ask their driver to do; the *outcomes* are what the driver
tells them a download came to.
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import KacheryError, short_repr
from ..storage.file_uris import is_sha1_hex
from ..storage.manifest import CHUNK_SIZE

REQUEST_BAND = "request-files"
STATUS_BAND = "provide-files"
REQUEST_FILE = "requestFile"
UPLOAD_STATUS = "uploadStatus"
MAX_ERROR_CHARS = 999  # the original's ErrorMessage limit (< 1000)


class MalformedFileMessage(KacheryError, ValueError):
    """A ``requestFile`` or ``uploadStatus`` body does not follow spec/node-protocol.md §Files
    (the peer's fault: the exchange logs it and drops the message)."""


class FileCoreMisuse(KacheryError, RuntimeError):
    """A driver fed a file core an event it cannot take in its state (our fault, a bug)."""


class Status(enum.StrEnum):
    """The ``status`` of an ``uploadStatus``."""

    STARTED = "started"
    PROGRESS = "progress"
    FINISHED = "finished"
    FAILED = "failed"


STATUSES = tuple(s.value for s in Status)


@dataclass(frozen=True)
class ChunkRef:
    """Bytes ``[start, end)`` of the file whose SHA-1 is ``sha1`` (a manifest chunk)."""

    sha1: str
    start: int
    end: int


@dataclass(frozen=True)
class FileRequest:
    """A ``requestFile``: upload the object ``sha1`` to the bucket."""

    BAND: ClassVar[str] = REQUEST_BAND

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

    @classmethod
    def parse(cls, body: dict[str, Any]) -> FileRequest:
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
                    f"'chunk_of' needs 0 <= start < end with end - start <= {CHUNK_SIZE}, "
                    f"got {short_repr(raw)}")
            if size is not None and size != end - start:
                raise MalformedFileMessage("'size' disagrees with the 'chunk_of' range")
            chunk_of = ChunkRef(parent, start, end)
        bad_object = body.get("bad_object", False)
        if type(bad_object) is not bool:
            raise MalformedFileMessage("'bad_object' must be true or false")
        return cls(sha1, request_id, size, chunk_of, bad_object)


@dataclass(frozen=True)
class UploadStatus:
    """An ``uploadStatus`` from a provider about the object ``sha1``."""

    BAND: ClassVar[str] = STATUS_BAND

    sha1: str
    status: Status
    request_id: str | None = None
    size: int | None = None
    bytes: int | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))  # accept "started" as well

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": UPLOAD_STATUS, "sha1": self.sha1,
                                "status": self.status.value}
        for name in ("request_id", "size", "bytes"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        if self.error is not None:
            body["error"] = self.error[:MAX_ERROR_CHARS]
        return body

    @classmethod
    def parse(cls, body: dict[str, Any]) -> UploadStatus:
        """Validate an ``uploadStatus`` body."""
        if body.get("type") != UPLOAD_STATUS:
            raise MalformedFileMessage(f"not an {UPLOAD_STATUS} message")
        sha1 = _sha1(body, "sha1")
        status = body.get("status")
        if status not in STATUSES:
            raise MalformedFileMessage(f"'status' must be one of {STATUSES}, got {short_repr(status)}")
        request_id = body.get("request_id")
        if request_id is not None and (not isinstance(request_id, str) or len(request_id) > 64):
            raise MalformedFileMessage("'request_id' must be a string of at most 64 characters")
        error = body.get("error")
        if error is not None and (not isinstance(error, str) or len(error) > MAX_ERROR_CHARS):
            raise MalformedFileMessage(f"'error' must be a string of at most {MAX_ERROR_CHARS} chars")
        return cls(sha1, Status(status), request_id, _opt_int(body, "size"),
                   _opt_int(body, "bytes"), error)


def parse_request(body: dict[str, Any]) -> FileRequest:
    """:meth:`FileRequest.parse`."""
    return FileRequest.parse(body)


def parse_status(body: dict[str, Any]) -> UploadStatus:
    """:meth:`UploadStatus.parse`."""
    return UploadStatus.parse(body)


def new_request_id() -> str:
    """16 random hex characters: enough to tell requests apart in logs. Called by drivers,
    which hand the IDs to the requester core (it draws no random numbers itself)."""
    return secrets.token_hex(8)


def _sha1(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not is_sha1_hex(value):
        raise MalformedFileMessage(f"{name!r} must be 40 lowercase hex characters, got {short_repr(value)}")
    return value


def _opt_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise MalformedFileMessage(f"{name!r} must be a non-negative integer, got {short_repr(value)}")
    return value


@dataclass(frozen=True)
class Ignored:
    """An incoming message the exchange drops: ``reason`` for the log (``quiet``: debug level)."""

    reason: str
    quiet: bool = False


# -- what a download came to (the driver tells the requester core) --------------------------------


@dataclass(frozen=True)
class Verified:
    """The download has the object's SHA-1 (and size): it is kept."""


@dataclass(frozen=True)
class Missing:
    """The bucket has no such object (any more)."""


@dataclass(frozen=True)
class Rejected:
    """The bytes are not the object (``why``); nothing of them was kept."""

    why: str


@dataclass(frozen=True)
class Failed:
    """The download broke off (``why``: the exception, ``"Type: message"``)."""

    why: str


DownloadOutcome = Verified | Missing | Rejected | Failed


# -- actions (what a core asks its driver to do) ------------------------------------------------------


@dataclass(frozen=True)
class Publish:
    """Publish ``message`` on ``channel`` (on the band its class names: ``message.BAND``)."""

    channel: str
    message: FileRequest | UploadStatus


@dataclass(frozen=True)
class HeadObject:
    """HEAD the bucket object ``path``; answer with ``head_result`` (or ``head_failed``)
    quoting ``transfer``."""

    channel: str
    path: str
    transfer: int


@dataclass(frozen=True)
class DownloadObject:
    """Download ``path`` into a fresh destination that hashes the bytes as they arrive; report
    ``download_progress`` and then ``download_result`` quoting ``transfer``."""

    channel: str
    path: str
    transfer: int


@dataclass(frozen=True)
class FindSource:
    """Look up what the provider would upload (stat only); answer ``source_found(size)`` or
    ``source_missing()``."""


@dataclass(frozen=True)
class Upload:
    """Wait for an upload slot, read the content (a chunk: checking its SHA-1), then upload it to
    ``path``; report ``upload_began``, ``upload_progress``, then ``upload_finished`` or
    ``upload_failed`` quoting ``transfer``."""

    channel: str
    path: str
    size: int
    transfer: int


@dataclass(frozen=True)
class CancelTransfer:
    """Stop the head, download or upload ``transfer`` now (it stalled or took too long); its
    result, if any still comes, is ignored."""

    transfer: int


@dataclass(frozen=True)
class StopListening:
    """This provider conversation takes no more statuses or requests; a new ``requestFile`` for the
    object starts a new one. ``then_serve``: a ``bad_object`` request that arrived meanwhile, to
    be served by a new conversation now. Comes before the conversation's last status goes out,
    so that a request provoked by that status is not taken for a duplicate."""

    then_serve: FileRequest | None = None


@dataclass(frozen=True)
class Obtained:
    """The requester's object is verified and kept (the last download's destination);
    ``channel`` delivered it. The conversation is over."""

    channel: str


@dataclass(frozen=True)
class GiveUp:
    """No channel delivered ``label``; ``reasons``: (channel, why) for each channel tried, in
    order. The conversation is over."""

    label: str
    reasons: tuple[tuple[str, str], ...]

    @property
    def message(self) -> str:
        if not self.reasons:
            return (f"{self.label} is not in the local storage and this node has joined no "
                    "channel to fetch it from")
        why = "; ".join(f"channel {ch!r}: {reason}" for ch, reason in self.reasons)
        return f"{self.label} could not be fetched: {why}"


class ProviderOutcome(enum.Enum):
    """How a provider conversation ended."""

    SOURCE_MISSING = "the content is not stored here"
    ALREADY_IN_BUCKET = "the bucket already had it"
    OTHER_PROVIDER_FINISHED = "another provider uploaded it"
    UPLOADED = "uploaded"
    UPLOAD_FAILED = "the upload failed"


@dataclass(frozen=True)
class ProviderDone:
    """The provider conversation is over."""

    outcome: ProviderOutcome


RequesterAction = Publish | HeadObject | DownloadObject | CancelTransfer | Obtained | GiveUp
ProviderAction = (Publish | FindSource | HeadObject | Upload | CancelTransfer | StopListening
                  | ProviderDone)

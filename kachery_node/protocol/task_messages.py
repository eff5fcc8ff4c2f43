"""Tasks on the wire (spec/tasks.md): function IDs, task hashes, signed results, the pub-sub messages.

Pure logic, no I/O and no clock (a wall-clock time is passed in where one is written).

Theory of operation
-------------------
A task is named by a *function ID* and keyword arguments. Its **task hash** is
``SHA-256("kachery-task-v1\\n" + canonical_json({"function_id": id, "kwargs": kwargs}))``,
hex; canonical JSON (:mod:`.canonical_json`) is used **only to hash**; signatures cover exact
bytes and verifiers never re-serialize.

A **result object** is what a provider publishes (inline in its ``finished`` status, and in the
bucket at ``task_results/<p(task_hash)>`` for pure calculations and queries)::

    {"body": "<JSON text>", "signature": "<128 hex>"}

``body`` holds ``{"task_hash", "function_id", "result", "provider", "time_ms"}`` serialized once
by the provider; ``signature = Ed25519(provider node key, RESULT_CONTEXT || SHA-256(body bytes))``.
A requester accepts it only if the signature verifies under ``provider`` *and* the channel's
signed membership gives ``provider`` the provide-tasks role (checked by the caller).

The six **pub-sub messages** (spec/tasks.md §4) are frozen dataclasses below, each with
``parse(body)`` (strict: a malformed body raises :class:`MalformedTaskMessage`, the peer's
fault) and ``to_body()``, the only place their wire shape is written. The envelope (channel,
band, time, nonce, signature) is added by :mod:`.node_messages`; these are the bodies.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from kachery_feeds.jsontext import JsonTextError
from kachery_feeds.jsontext import loads as loads_json

from ..errors import KacheryError, short_repr
from ..identity import Keypair, verify_signature
from .canonical_json import (  # noqa: F401  (re-exported: the names callers know)
    MAX_SAFE_INTEGER,
    TaskArgumentError,
    canonical_json,
    format_number,
    to_json_value,
)

TASK_HASH_PREFIX = b"kachery-task-v1\n"
RESULT_CONTEXT = b"kachery-task-result-v1\x00"
FUNCTION_TYPES = ("pure-calculation", "query", "action")
_FUNCTION_ID = re.compile(r"[A-Za-z0-9@_-]+(\.[A-Za-z0-9@_-]+)*")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")
_RESULT_KEYS = frozenset({"body", "signature"})
_RESULT_BODY_KEYS = frozenset({"task_hash", "function_id", "result", "provider", "time_ms"})
MAX_FUNCTION_ID = 400

REQUEST_BAND, STATUS_BAND = "request-tasks", "provide-tasks"
INLINE_RESULT_MAX_BYTES = 30_000  # the embedded relay refuses messages over 64 KiB by default
MAX_KWARGS_BYTES = 40_000  # arguments ride in one pub-sub message
STATUSES = ("queued", "running", "finished", "error")
FINAL_STATUSES = ("finished", "error")


class InvalidTaskResultError(KacheryError):
    """A result object is malformed, its signature does not verify, or it answers another task."""


# ----------------------------------------------------------------------------- identity
def validate_function_id(function_id: Any) -> str:
    """``function_id`` if it is a valid function ID (spec/tasks.md §1); else TaskArgumentError."""
    if (not isinstance(function_id, str) or len(function_id) > MAX_FUNCTION_ID
            or not _FUNCTION_ID.fullmatch(function_id)):
        raise TaskArgumentError(
            f"invalid task function ID {short_repr(function_id)}: use '.'-separated segments of "
            f"letters, digits, '@', '_' and '-' (at most {MAX_FUNCTION_ID} characters)")
    return function_id


def validate_function_type(function_type: Any) -> str:
    """``function_type`` if it is one of :data:`FUNCTION_TYPES`; else TaskArgumentError."""
    if function_type not in FUNCTION_TYPES:
        raise TaskArgumentError(
            f"invalid task function type {short_repr(function_type)}; types are: {', '.join(FUNCTION_TYPES)}")
    return function_type


def task_hash(function_id: str, kwargs: dict[str, Any]) -> str:
    """SHA-256 hex of ``"kachery-task-v1\\n" + canonical_json({"function_id", "kwargs"})``;
    raises :class:`TaskArgumentError` for arguments canonical JSON cannot represent."""
    validate_function_id(function_id)
    if not isinstance(kwargs, dict):
        raise TaskArgumentError("task arguments must be a JSON object of keyword arguments")
    data = canonical_json({"function_id": function_id, "kwargs": kwargs})
    return hashlib.sha256(TASK_HASH_PREFIX + data).hexdigest()


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True)
class TaskResult:
    """A verified result object: who computed what, when, and the exact signed text."""

    task_hash: str
    function_id: str
    result: Any
    provider: str
    time_ms: int
    obj: dict[str, str]  # {"body", "signature"} exactly as received


def _result_signing_input(body: bytes) -> bytes:
    return RESULT_CONTEXT + hashlib.sha256(body).digest()


def sign_result(keypair: Keypair, *, task_hash: str, function_id: str, result: Any,
                now_ms: int) -> dict[str, str]:
    """The signed result object for ``result`` (serialized once, here); ``now_ms`` is the wall
    clock in milliseconds (``time_ms``: when it was computed)."""
    body = {
        "task_hash": task_hash,
        "function_id": function_id,
        "result": result,
        "provider": keypair.public_hex,
        "time_ms": now_ms,
    }
    try:
        raw = orjson.dumps(body, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)
    except TypeError as exc:
        raise TaskArgumentError(f"task result is not JSON-serializable: {exc}") from exc
    return {"body": raw.decode(), "signature": keypair.sign(_result_signing_input(raw)).hex()}


def verify_result(obj: Any, *, task_hash: str, function_id: str) -> TaskResult:
    """Check a result object's shape, signature and that it answers this task.

    The object has exactly ``body`` (JSON text) and ``signature`` (128 lowercase hex); the body
    has exactly ``task_hash``, ``function_id``, ``result``, ``provider`` and ``time_ms``
    (spec/tasks.md §5). Whether its provider may provide tasks on the channel is the caller's
    business (``link.may(result.provider, "provide-tasks")``)."""
    if (type(obj) is not dict or obj.keys() != _RESULT_KEYS or type(obj["body"]) is not str
            or type(obj["signature"]) is not str or not _HEX128.fullmatch(obj["signature"])):
        raise InvalidTaskResultError(
            "malformed result object (expected exactly {'body': <JSON text>, 'signature': <128 hex>})")
    try:
        raw = obj["body"].encode()
        body = loads_json(raw)
    except (JsonTextError, UnicodeEncodeError) as exc:
        raise InvalidTaskResultError(f"malformed result object: {exc}") from None
    if type(body) is not dict or body.keys() != _RESULT_BODY_KEYS:
        raise InvalidTaskResultError(
            f"result body must have exactly the keys {sorted(_RESULT_BODY_KEYS)}")
    provider = body["provider"]
    if type(provider) is not str or not _HEX64.fullmatch(provider):
        raise InvalidTaskResultError("result body names no valid provider")
    if type(body["time_ms"]) is not int or not 0 <= body["time_ms"] <= MAX_SAFE_INTEGER:
        raise InvalidTaskResultError("result body's time_ms is not an integer in [0, 2^53-1]")
    if not verify_signature(provider, _result_signing_input(raw), bytes.fromhex(obj["signature"])):
        raise InvalidTaskResultError(f"bad signature on a result claiming to be from {provider[:12]}…")
    if body["task_hash"] != task_hash or body["function_id"] != function_id:
        raise InvalidTaskResultError(
            f"result signed by {provider[:12]}… answers another task "
            f"({body['function_id']!r}, {str(body['task_hash'])[:12]}…)")
    return TaskResult(task_hash, function_id, body["result"], provider, body["time_ms"],
                      {"body": obj["body"], "signature": obj["signature"]})


def encode_result_object(obj: dict[str, str]) -> bytes:
    """A result object's JSON text, as stored in the bucket (spec/bucket.md §4)."""
    return orjson.dumps(obj)


def decode_result_object(data: bytes) -> Any:
    """Parse a result object read from the bucket (spec/bucket.md §4) by kachery's JSON rules."""
    try:
        return loads_json(data)
    except JsonTextError as exc:
        raise InvalidTaskResultError(f"result object is not valid JSON: {exc}") from None


# ----------------------------------------------------------------------------- errors
class TaskError(KacheryError):
    """A task failed: the remote function raised (its message is included), its result did not
    verify, or its provider went away."""


class TaskTimeoutError(TaskError, TimeoutError):
    """No final answer within the requester's timeout."""


class NoProviderError(TaskError):
    """No node on the channel offers the function (and, for a query, nothing is cached)."""


# ----------------------------------------------------------------------------- timing
@dataclass(frozen=True)
class TaskTimeouts:
    """Seconds (spec/tasks.md §6-8). Tests may shrink them."""

    #: Requester: wait for an ``offer`` after ``requestTask`` (per channel).
    offer: float = 2.0
    #: Requester: longest silence from the assigned provider before giving up.
    silence: float = 20.0
    #: Provider: re-publish a held task's status this often.
    heartbeat: float = 5.0
    #: Provider: a backend's registration outlives the end of its last poll by this much.
    registration_grace: float = 3.0
    #: Provider: a queued task that no backend offers waits this long for one (a backend being
    #: restarted) before it fails.
    backend_wait: float = 10.0
    #: Provider: an offer that was not assigned is forgotten after this long.
    offer_ttl: float = 30.0
    #: Provider: finished requests stay in memory (for retries) this long; tasks.db keeps them.
    keep_finished: float = 120.0
    #: Any bucket read (the drivers' business: the cores never wait on a bucket themselves).
    bucket: float = 10.0


# ----------------------------------------------------------------------------- messages
class MalformedTaskMessage(KacheryError, ValueError):
    """A task message's body does not follow spec/tasks.md §4: the sending peer's fault. The
    receiver drops the message (and logs why)."""


class LocalTaskProtocolError(KacheryError, RuntimeError):
    """A driver used a task core out of turn (answered a question it was not asked, reported on
    a task it does not hold): our bug, not the peer's."""


def _expect(body: dict[str, Any], kind: str) -> None:
    if body.get("type") != kind:
        raise MalformedTaskMessage(f"not a {kind} message")


def _request_id(body: dict[str, Any]) -> str:
    value = body.get("request_id")
    if not isinstance(value, str) or not 8 <= len(value) <= 64:
        raise MalformedTaskMessage("'request_id' must be a string of 8 to 64 characters")
    return value


def _function_id(body: dict[str, Any]) -> str:
    try:
        return validate_function_id(body.get("function_id"))
    except TaskArgumentError as exc:
        raise MalformedTaskMessage(str(exc)) from None


def _function_type(body: dict[str, Any], *, required: bool) -> str | None:
    value = body.get("function_type")
    if value is None and not required:
        return None
    if value not in FUNCTION_TYPES:
        raise MalformedTaskMessage(f"'function_type' must be one of {', '.join(FUNCTION_TYPES)}")
    return value


def _optional(body: dict[str, Any], name: str, types: type | tuple[type, ...]) -> Any:
    value = body.get(name)
    if value is not None and not isinstance(value, types):
        raise MalformedTaskMessage(f"{name!r} has the wrong type ({type(value).__name__})")
    return value


@dataclass(frozen=True)
class TaskRequest:
    """``requestTask`` (request-tasks): who offers ``function_id`` for these arguments?
    ``function_type`` None leaves the type to the provider (its offer says it)."""

    TYPE: ClassVar[str] = "requestTask"
    BAND: ClassVar[str] = REQUEST_BAND
    request_id: str
    function_id: str
    kwargs: dict[str, Any]
    task_hash: str
    function_type: str | None = None

    @classmethod
    def parse(cls, body: dict[str, Any]) -> TaskRequest:
        """Check shapes only; whether ``task_hash`` matches is the provider's check (it answers
        a mismatch with an error status rather than dropping it)."""
        _expect(body, cls.TYPE)
        kwargs, h = body.get("kwargs"), body.get("task_hash")
        if not isinstance(kwargs, dict):
            raise MalformedTaskMessage("'kwargs' must be a JSON object")
        if not isinstance(h, str) or not _HEX64.fullmatch(h):
            raise MalformedTaskMessage("'task_hash' must be 64 lowercase hex characters")
        return cls(_request_id(body), _function_id(body), kwargs, h,
                   _function_type(body, required=False))

    def to_body(self) -> dict[str, Any]:
        return {"type": self.TYPE, "request_id": self.request_id, "function_id": self.function_id,
                **({"function_type": self.function_type} if self.function_type else {}),
                "kwargs": self.kwargs, "task_hash": self.task_hash}


@dataclass(frozen=True)
class TaskOffer:
    """``offer`` (provide-tasks): a backend here registered ``function_id`` (as
    ``function_type``; None only from providers older than the field) and will run it if
    assigned."""

    TYPE: ClassVar[str] = "offer"
    BAND: ClassVar[str] = STATUS_BAND
    request_id: str
    function_id: str
    function_type: str | None = None

    @classmethod
    def parse(cls, body: dict[str, Any]) -> TaskOffer:
        _expect(body, cls.TYPE)
        return cls(_request_id(body), _function_id(body), _function_type(body, required=False))

    def to_body(self) -> dict[str, Any]:
        return {"type": self.TYPE, "request_id": self.request_id, "function_id": self.function_id,
                **({"function_type": self.function_type} if self.function_type else {})}


@dataclass(frozen=True)
class TaskAssignment:
    """``assignTask`` (request-tasks): the requester picked ``provider`` (a node ID)."""

    TYPE: ClassVar[str] = "assignTask"
    BAND: ClassVar[str] = REQUEST_BAND
    request_id: str
    provider: str

    @classmethod
    def parse(cls, body: dict[str, Any]) -> TaskAssignment:
        _expect(body, cls.TYPE)
        provider = body.get("provider")
        if not isinstance(provider, str) or not _HEX64.fullmatch(provider):
            raise MalformedTaskMessage("'provider' must be a node ID (64 lowercase hex)")
        return cls(_request_id(body), provider)

    def to_body(self) -> dict[str, Any]:
        return {"type": self.TYPE, "request_id": self.request_id, "provider": self.provider}


@dataclass(frozen=True)
class TaskStatus:
    """``taskStatus`` (provide-tasks): where a task stands. ``progress`` is a string, number or
    small object from the function; ``result_object`` (``finished``) is checked by
    :func:`verify_result`, not here, so that a bad one is reported to the caller."""

    TYPE: ClassVar[str] = "taskStatus"
    BAND: ClassVar[str] = STATUS_BAND
    request_id: str
    status: str
    progress: str | int | float | dict[str, Any] | None = None
    note: str | None = None
    error: str | None = None
    result_object: Any = None
    in_bucket: bool = False

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    @classmethod
    def parse(cls, body: dict[str, Any]) -> TaskStatus:
        _expect(body, cls.TYPE)
        status = body.get("status")
        if status not in STATUSES:
            raise MalformedTaskMessage(f"'status' must be one of {', '.join(STATUSES)}")
        in_bucket = body.get("in_bucket", False)
        if type(in_bucket) is not bool:
            raise MalformedTaskMessage("'in_bucket' must be true or false")
        # Providers before this module forwarded any progress value; one of another shape is
        # dropped rather than the status (whose loss would look like silence).
        progress = body.get("progress")
        if not isinstance(progress, str | int | float | dict):
            progress = None
        return cls(_request_id(body), status, progress, _optional(body, "note", str),
                   _optional(body, "error", str), body.get("result_object"), in_bucket)

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.TYPE, "request_id": self.request_id,
                                "status": self.status}
        for name in ("progress", "note", "error", "result_object"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        if self.in_bucket:
            body["in_bucket"] = True
        return body


@dataclass(frozen=True)
class TaskProbe:
    """``probeTasks`` (request-tasks): which functions are offered here?"""

    TYPE: ClassVar[str] = "probeTasks"
    BAND: ClassVar[str] = REQUEST_BAND
    request_id: str

    @classmethod
    def parse(cls, body: dict[str, Any]) -> TaskProbe:
        _expect(body, cls.TYPE)
        return cls(_request_id(body))

    def to_body(self) -> dict[str, Any]:
        return {"type": self.TYPE, "request_id": self.request_id}


@dataclass(frozen=True)
class TaskFunctions:
    """``taskFunctions`` (provide-tasks): the answer to a probe, ``(function_id, type)`` pairs."""

    TYPE: ClassVar[str] = "taskFunctions"
    BAND: ClassVar[str] = STATUS_BAND
    request_id: str
    functions: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, body: dict[str, Any]) -> TaskFunctions:
        _expect(body, cls.TYPE)
        raw = body.get("functions")
        if not isinstance(raw, list) or not all(isinstance(f, dict) for f in raw):
            raise MalformedTaskMessage("'functions' must be a list of {function_id, function_type}")
        functions = tuple((_function_id(f), _function_type(f, required=True)) for f in raw)
        return cls(_request_id(body), functions)  # type: ignore[arg-type]

    def to_body(self) -> dict[str, Any]:
        return {"type": self.TYPE, "request_id": self.request_id,
                "functions": [{"function_id": f, "function_type": t} for f, t in self.functions]}


TaskMessage = TaskRequest | TaskOffer | TaskAssignment | TaskStatus | TaskProbe | TaskFunctions
_MESSAGE_CLASSES = {cls.TYPE: cls for cls in (TaskRequest, TaskOffer, TaskAssignment, TaskStatus,
                                              TaskProbe, TaskFunctions)}


def parse_task_message(band: str, body: Any) -> TaskMessage | None:
    """The task message ``body`` carries on ``band``, or None if it is none of ours (another
    type, or a type that does not travel on that band: ignored, for forward compatibility).
    Raises :class:`MalformedTaskMessage` if it is one of ours but malformed."""
    if not isinstance(body, dict):
        raise MalformedTaskMessage("a task message body is a JSON object")
    kind = body.get("type")
    # Only a string names a message of ours: a list or object there is unhashable (the lookup
    # raised TypeError); like any other type, it is not ours.
    cls = _MESSAGE_CLASSES.get(kind) if isinstance(kind, str) else None
    if cls is None or band != cls.BAND:
        return None
    return cls.parse(body)

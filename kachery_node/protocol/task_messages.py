"""Tasks, the pure part (spec/tasks.md): canonical JSON, task hashes, signed results, messages.

Theory of operation
-------------------
A task is named by a *function ID* and keyword arguments. Its **task hash** is
``SHA-256("kachery-task-v1\\n" + canonical_json({"function_id": id, "kwargs": kwargs}))``,
hex. Canonical JSON is defined byte for byte in spec/tasks.md so that Python, JavaScript and
anything else compute the same hash (the original's Python and JS disagreed on floats, non-ASCII
text and astral key order, original-protocol.md §1.2). It is used **only to hash**; signatures
cover exact bytes and verifiers never re-serialize (ARCHITECTURE.md §4.3).

A **result object** is what a provider publishes (inline in its ``finished`` status, and in the
bucket at ``task_results/<p(task_hash)>`` for pure calculations and queries)::

    {"body": "<JSON text>", "signature": "<128 hex>"}

``body`` holds ``{"task_hash", "function_id", "result", "provider", "time_ms"}`` serialized once
by the provider; ``signature = Ed25519(provider node key, RESULT_CONTEXT || SHA-256(body bytes))``.
A requester accepts it only if the signature verifies under ``provider`` *and* the channel's
signed membership gives ``provider`` the provide-tasks role (checked by the caller).
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson

from kachery_feeds.jsontext import JsonTextError
from kachery_feeds.jsontext import loads as loads_json

from ..errors import KacheryError
from ..identity import Keypair, verify_signature

TASK_HASH_PREFIX = b"kachery-task-v1\n"
RESULT_CONTEXT = b"kachery-task-result-v1\x00"
FUNCTION_TYPES = ("pure-calculation", "query", "action")
MAX_SAFE_INTEGER = 2**53 - 1
_FUNCTION_ID = re.compile(r"[A-Za-z0-9@_-]+(\.[A-Za-z0-9@_-]+)*")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")
_RESULT_KEYS = frozenset({"body", "signature"})
_RESULT_BODY_KEYS = frozenset({"task_hash", "function_id", "result", "provider", "time_ms"})
MAX_FUNCTION_ID = 400
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
                  "\t": "\\t"}


class TaskArgumentError(KacheryError, ValueError):
    """Task arguments (or a result) cannot be represented in canonical JSON: a NaN, an integer
    beyond ±(2^53-1), a non-string key, an unsupported type..."""


class InvalidTaskResultError(KacheryError):
    """A result object is malformed, its signature does not verify, or it answers another task."""


# ----------------------------------------------------------------------------- canonical JSON
def _plain(value: Any) -> Any:
    """numpy arrays -> nested lists, numpy scalars -> Python numbers/bools/str; others unchanged."""
    mod = type(value).__module__
    if mod == "numpy":
        import numpy as np

        if isinstance(value, np.ndarray):
            if value.dtype.kind not in "biuf":
                raise TaskArgumentError(f"numpy arrays of dtype {value.dtype} are not task arguments")
            return value.tolist()
        if isinstance(value, np.generic):
            return value.item()
    return value


def format_number(value: int | float) -> str:
    """A number as ECMAScript's ``Number.prototype.toString`` writes it (integral floats as
    integers, ``1e-7``, ``-0`` as ``0``); refuses NaN, infinities and any number, integer or
    float, whose magnitude is above 2^53-1 (JavaScript, holding only doubles, cannot tell
    ``9007199254740992`` from ``9007199254740992.0``, so both must be refused)."""
    if isinstance(value, bool):
        raise TaskArgumentError("booleans are not numbers")
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise TaskArgumentError(
                f"integer {value} is beyond ±(2^53-1): JavaScript cannot represent it exactly")
        return str(value)
    if not math.isfinite(value):
        raise TaskArgumentError(f"{value!r} is not allowed in canonical JSON")
    if abs(value) > MAX_SAFE_INTEGER:
        raise TaskArgumentError(
            f"number {value!r} is beyond ±(2^53-1): pass it as a string")
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    mantissa, _, exp_text = repr(abs(value)).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    # value = 0.<digits> x 10^n in ECMAScript's terms: position of the decimal point.
    n = len(whole) + (int(exp_text) if exp_text else 0)
    if whole == "0":  # 0.000123 -> digits "123", point moves left by the leading zeros
        n = -(len(frac) - len(frac.lstrip("0")))
    digits = digits.rstrip("0") or "0"
    k = len(digits)
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        text = (digits[0] + ("." + digits[1:] if k > 1 else "")
                + "e" + ("+" if e >= 0 else "-") + str(abs(e)))
    return sign + text


def _string(s: str) -> str:
    out = []
    for ch in s:
        esc = _SHORT_ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif ch < " ":
            out.append(f"\\u{ord(ch):04x}")
        elif "\ud800" <= ch <= "\udfff":
            raise TaskArgumentError("strings must not contain lone surrogates")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _utf16_key(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def _write(value: Any, out: list[str], depth: int) -> None:
    if depth > 100:
        raise TaskArgumentError("arguments nest deeper than 100 levels")
    value = _plain(value)
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int | float):
        out.append(format_number(value))
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise TaskArgumentError(f"object keys must be strings, not {type(key).__name__}")
        out.append("{")
        for i, key in enumerate(sorted(value, key=_utf16_key)):
            if i:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _write(value[key], out, depth + 1)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out, depth + 1)
        out.append("]")
    else:
        raise TaskArgumentError(f"{type(value).__name__} is not a JSON value")


def canonical_json(value: Any) -> bytes:
    """The canonical JSON bytes of ``value`` (spec/tasks.md "Canonical JSON").

    >>> canonical_json({"b": 1.0, "a": [1e-7, "é"]}).decode()
    '{"a":[1e-7,"é"],"b":1}'
    """
    out: list[str] = []
    _write(value, out, 0)
    return "".join(out).encode("utf-8")


def to_json_value(value: Any) -> Any:
    """``value`` with numpy arrays and scalars converted (for sending over JSON APIs)."""
    value = _plain(value)
    if isinstance(value, dict):
        return {k: to_json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_value(v) for v in value]
    return value


# ----------------------------------------------------------------------------- identity
def validate_function_id(function_id: Any) -> str:
    if (not isinstance(function_id, str) or len(function_id) > MAX_FUNCTION_ID
            or not _FUNCTION_ID.fullmatch(function_id)):
        raise TaskArgumentError(
            f"invalid task function ID {function_id!r}: use '.'-separated segments of "
            f"letters, digits, '@', '_' and '-' (at most {MAX_FUNCTION_ID} characters)")
    return function_id


def validate_function_type(function_type: Any) -> str:
    if function_type not in FUNCTION_TYPES:
        raise TaskArgumentError(
            f"invalid task function type {function_type!r}; types are: {', '.join(FUNCTION_TYPES)}")
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
                now_ms: int | None = None) -> dict[str, str]:
    """The signed result object for ``result`` (serialized once, here)."""
    body = {
        "task_hash": task_hash,
        "function_id": function_id,
        "result": result,
        "provider": keypair.public_hex,
        "time_ms": int(time.time() * 1000) if now_ms is None else now_ms,
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

"""Canonical JSON (spec/tasks.md §2): the one serialization task hashes are computed over.

Python, JavaScript and anything else must write the same bytes for the same value, so every
choice is pinned down: numbers as ECMAScript writes them (and refused beyond ±(2^53-1)), strings
as ``JSON.stringify`` writes them, keys sorted by UTF-16 code units, no whitespace. It is used
**only to hash**; signatures cover exact bytes and verifiers never re-serialize.

Pure logic: no I/O, no clock.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import KacheryError

MAX_SAFE_INTEGER = 2**53 - 1
MAX_DEPTH = 100
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
                  "\t": "\\t"}


class TaskArgumentError(KacheryError, ValueError):
    """Task arguments (or a result) cannot be represented in canonical JSON: a NaN, an integer
    beyond ±(2^53-1), a non-string key, an unsupported type..."""


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
    if depth > MAX_DEPTH:
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

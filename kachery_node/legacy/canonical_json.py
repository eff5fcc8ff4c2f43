"""The original daemon's deterministic JSON (``JSONStringifyDeterministic``), exactly.

The original signed ``SHA-1(canonical_json(body))`` and keyed its mutables by
``SHA-1(canonical_json(key))``, where canonical_json is JavaScript's ``JSON.stringify`` with
every object's keys sorted. Reproducing its bytes from Python values needs JavaScript's rules
where Python's ``json`` differs (spec/legacy.md §1):

* keys sorted by UTF-16 code units (``"😀" < "\\uffff"``), not by code points;
* numbers as ``Number.prototype.toString``: ``1.0`` → ``1``, ``-0.0`` → ``0``, ``1e-7`` →
  ``1e-7``, ``1e21`` → ``1e+21``, integers beyond 2^53 as the double JavaScript held;
* non-ASCII characters raw (UTF-8), lone surrogates escaped (``\\ud800``);
* NaN and infinities refused (JavaScript would write ``null``; no signed original value holds one).

Example::

    >>> canonical_json({"b": 1.0, "a": [1e-7, "é"]})
    '{"a":[1e-7,"é"],"b":1}'
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

_MAX_SAFE_INTEGER = 2**53
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
            "\t": "\\t"}


class NotCanonicalizableError(ValueError):
    """The value has no JSON spelling in the original's rules (NaN, a non-string key, ...)."""


def js_number(x: float | int) -> str:
    """``Number.prototype.toString()`` of ``x`` (an int is taken as the double JavaScript holds)."""
    if isinstance(x, int) and abs(x) <= _MAX_SAFE_INTEGER:
        return str(x)
    try:
        x = float(x)
    except OverflowError:
        raise NotCanonicalizableError(f"{x} is beyond a double's range") from None
    if not math.isfinite(x):
        raise NotCanonicalizableError(f"{x} is not a finite number")
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    # repr is the shortest round-tripping spelling, chosen as ECMAScript chooses its digits.
    t = Decimal(repr(abs(x))).normalize().as_tuple()
    digits = "".join(map(str, t.digits))
    k = len(digits)
    n = t.exponent + k  # the value is 0.<digits> × 10^n
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + digits
    e = n - 1
    exponent = ("+" if e >= 0 else "-") + str(abs(e))
    mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
    return sign + mantissa + "e" + exponent


def js_string(s: str) -> str:
    """``JSON.stringify`` of a string (ES2019: lone surrogates escaped, other non-ASCII raw)."""
    out = ['"']
    for i, ch in enumerate(s):
        c = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif c < 0x20 or (0xD800 <= c <= 0xDFFF and not _paired(s, i, c)):
            out.append(f"\\u{c:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _paired(s: str, i: int, c: int) -> bool:
    """Whether the surrogate at ``s[i]`` is half of a pair (Python strings built from JSON with
    ``\\ud83d\\ude00`` escapes hold the two halves separately)."""
    if c <= 0xDBFF:
        return i + 1 < len(s) and 0xDC00 <= ord(s[i + 1]) <= 0xDFFF
    return i > 0 and 0xD800 <= ord(s[i - 1]) <= 0xDBFF


def _utf16_key(s: str) -> bytes:
    return s.encode("utf-16-be", "surrogatepass")


def canonical_json(value: Any) -> str:
    """The original's deterministic JSON text of a plain JSON value (see the module docstring)."""
    parts: list[str] = []
    _write(value, parts, 0)
    return "".join(parts)


def _write(value: Any, out: list[str], depth: int) -> None:
    if depth > 1000:
        raise NotCanonicalizableError("the value nests deeper than 1000 levels")
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(js_string(value))
    elif isinstance(value, int | float):
        out.append(js_number(value))
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out, depth + 1)
        out.append("]")
    elif isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise NotCanonicalizableError("object keys must be strings")
        out.append("{")
        for i, key in enumerate(sorted(value, key=_utf16_key)):
            if i:
                out.append(",")
            out.append(js_string(key))
            out.append(":")
            _write(value[key], out, depth + 1)
        out.append("}")
    else:
        raise NotCanonicalizableError(f"{type(value).__name__} is not a JSON value")

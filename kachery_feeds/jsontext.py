"""Reading JSON text by kachery's rules (spec/feeds.md §2.1), fast.

Every JSON text kachery signs or verifies (message bodies, fork proofs, subfeed heads, node
envelopes, hub requests, task results) is read with :func:`loads`, which refuses what
RFC 8259 leaves open and what parsers disagree on, so two readers of the same signed bytes
never see different values:

* not UTF-8, or starting with a byte order mark;
* anything outside RFC 8259's grammar (NaN, Infinity, comments, trailing commas, ...);
* a duplicate key in any object (keys compared after unescaping);
* a ``\\uXXXX`` escape that leaves a lone surrogate;
* an integer literal (no fraction, no exponent) outside [-2^63, 2^64-1], or ``-0``;
* a number whose value is infinite as a double (``1e400``);
* arrays and objects nested more than :data:`MAX_DEPTH` deep.

Theory of operation: orjson parses (it already refuses the first four kinds of input and
infinite numbers). If writing the result back with orjson gives exactly the input bytes, the
text is compact JSON as orjson writes it, which has none of the other faults: a dropped
duplicate, ``-0`` read as ``0`` or an oversized integer read as a float would all change the
bytes, and orjson writes nothing nested deeper than 254. That is what every kachery writer
produces, so the common case costs one ``orjson.dumps``. Anything else (other writers' spacing,
key order or number spelling) is re-read by the standard library with hooks that check each
rule; that is slower but exact.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

MAX_DEPTH = 256
INT_MIN = -(1 << 63)
INT_MAX = (1 << 64) - 1
#: Largest integer every reader holds exactly (JavaScript's ``Number.MAX_SAFE_INTEGER``); the
#: limit of integer fields such as message numbers and timestamps.
MAX_SAFE_INTEGER = (1 << 53) - 1


class JsonTextError(ValueError):
    """A JSON text breaks kachery's JSON rules (spec/feeds.md §2.1); the message says which."""


def loads(data: bytes | str) -> Any:
    """Parse ``data`` (UTF-8 bytes, or str) by kachery's rules; raise :class:`JsonTextError`."""
    if type(data) is str:
        data = data.encode("utf-8", "surrogatepass")  # a lone surrogate is then invalid UTF-8
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise JsonTextError(f"not valid JSON: {exc}") from None
    try:
        if orjson.dumps(value) == data:
            return value
    except orjson.JSONEncodeError:
        pass  # nested deeper than orjson writes: the slow path measures it
    check_exactly(data)
    return value


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _v in pairs if k in seen or seen.add(k))
        raise JsonTextError(f"duplicate key {dup!r} in an object")
    return d


def _int(text: str) -> int:
    if text == "-0":
        raise JsonTextError("the integer -0 is not allowed (write 0)")
    try:
        value = int(text)
    except ValueError:  # more than Python's 4300-digit limit
        raise JsonTextError("integer outside [-2^63, 2^64-1]") from None
    if not INT_MIN <= value <= INT_MAX:
        raise JsonTextError(f"integer {text} is outside [-2^63, 2^64-1]")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonTextError(f"number {text} is infinite as a double")
    return value


def _constant(text: str) -> Any:
    raise JsonTextError(f"{text} is not JSON")


def _depth(value: Any) -> int:
    """Nesting depth (a scalar is 0, ``[]`` is 1), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if type(v) is dict:
            v = v.values()
        elif type(v) is not list:
            continue
        deepest = max(deepest, d)
        if d > MAX_DEPTH:
            break
        stack.extend((x, d + 1) for x in v)
    return deepest


def check_exactly(data: bytes) -> None:
    """Raise :class:`JsonTextError` unless ``data`` (which orjson already parsed) obeys every
    rule; the slow, exact path of :func:`loads`."""
    try:
        value = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_pairs,
            parse_int=_int,
            parse_float=_float,
            parse_constant=_constant,
        )
    except RecursionError:
        raise JsonTextError(f"JSON nested deeper than {MAX_DEPTH}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, JsonTextError):
            raise
        raise JsonTextError(f"not valid JSON: {exc}") from None
    if _depth(value) > MAX_DEPTH:
        raise JsonTextError(f"JSON nested deeper than {MAX_DEPTH}")

"""What a payload may be: plain JSON, checked before anything is signed.

orjson, which serializes message bodies, is more permissive than JSON: it writes NaN and
Infinity as ``null`` and accepts datetimes, dataclasses and UUIDs. A signed message must mean
exactly what its writer passed, so payloads and metadata are checked first and anything that
is not plain JSON (dict with string keys, list/tuple, str, int, float, bool, None) is refused.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from .errors import InvalidPayloadError, short_repr

#: Largest serialized message body accepted, in bytes (payload, metadata and header fields).
MAX_MESSAGE_BYTES = 1 << 20

# Integers outside the signed 64-bit range cannot be written by orjson and would be read back
# differently by many JSON parsers.
_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 64) - 1
_MAX_DEPTH = 200


def _check(value: Any, depth: int) -> None:
    t = type(value)
    if t is str or t is bool or value is None:
        return
    if t is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise InvalidPayloadError(f"integer {value} is outside the 64-bit range")
        return
    if t is float:
        if not math.isfinite(value):
            raise InvalidPayloadError(f"{short_repr(value)} is not valid JSON (NaN and Infinity are refused)")
        return
    if depth > _MAX_DEPTH:
        raise InvalidPayloadError(f"payload is nested deeper than {_MAX_DEPTH} levels")
    # Strings, booleans, None and 64-bit integers inside containers are passed inline (no call
    # each: a payload is mostly those); anything else gets the full check.
    if t is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise InvalidPayloadError(f"object key {short_repr(key)} is not a string")
            ti = type(item)
            if not (ti is str or ti is bool or item is None or (ti is int and _INT_MIN <= item <= _INT_MAX)):
                _check(item, depth + 1)
        return
    if t is list or t is tuple:
        for item in value:
            ti = type(item)
            if not (ti is str or ti is bool or item is None or (ti is int and _INT_MIN <= item <= _INT_MAX)):
                _check(item, depth + 1)
        return
    # Subclasses of the JSON types (IntEnum, OrderedDict, ...) are plain JSON to orjson too.
    if isinstance(value, bool | str):
        return
    if isinstance(value, int):
        _check(int(value), depth)
        return
    if isinstance(value, float):
        _check(float(value), depth)
        return
    if isinstance(value, dict):
        _check(dict(value), depth)
        return
    if isinstance(value, list | tuple):
        _check(list(value), depth)
        return
    raise InvalidPayloadError(
        f"{t.__name__} is not JSON; payloads may hold only dict, list, str, int, float, bool, None"
    )


def check_json(value: Any) -> None:
    """Raise :class:`InvalidPayloadError` unless ``value`` is plain, finite JSON."""
    _check(value, 0)


def encode_json(value: Any) -> bytes:
    """Check ``value`` and serialize it compactly with sorted keys."""
    _check(value, 0)
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except (orjson.JSONEncodeError, TypeError) as exc:  # e.g. recursion, lone surrogates
        raise InvalidPayloadError(f"payload cannot be serialized as JSON: {exc}") from exc


def encode_each(values: list[Any]) -> list[bytes]:
    """:func:`encode_json` of each value, in one loop (a batch append's payloads)."""
    check, dumps, sort_keys = _check, orjson.dumps, orjson.OPT_SORT_KEYS
    out: list[bytes] = []
    append = out.append
    try:
        for value in values:
            check(value, 0)
            append(dumps(value, option=sort_keys))
    except (orjson.JSONEncodeError, TypeError) as exc:  # e.g. recursion, lone surrogates
        raise InvalidPayloadError(f"payload cannot be serialized as JSON: {exc}") from exc
    return out

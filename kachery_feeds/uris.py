"""Feed IDs, subfeed names and ``feed://`` URIs, compatible with the original kachery.

* A feed ID is the feed's Ed25519 public key as 64 hex characters (lowercase is canonical;
  uppercase input is accepted and lowered).
* A subfeed is named by a string or by a JSON object or list. Its 40-hex *subfeed hash* is the
  original's rule: SHA-1 of the UTF-8 string; SHA-1 of ``json.dumps(obj, sort_keys=True,
  separators=(',', ':'))`` (ASCII-escaped) for objects and lists; a string that starts with
  ``~`` is already a hash (``~<40 hex>``). Object and list names may hold only strings,
  integers within ±(2^53-1), booleans, null, lists and objects (no floats: their Python
  spelling cannot be reproduced from a parsed value, spec/feeds.md §1), so any language can
  compute the same hash.
* URIs: ``feed://<feedId>``, ``feed://<feedId>/<url-quoted string name>`` and
  ``feed://<feedId>/~<subfeedHash>`` (object names are always written this way).
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import InvalidPayloadError, InvalidUriError, short_repr
from .payloads import check_json

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_HEX40 = re.compile(r"[0-9a-fA-F]{40}")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_MAX_SAFE_INTEGER = (1 << 53) - 1
_MAX_NAME_DEPTH = 201  # arrays and objects, the outermost counting as 1 (check_json's limit)

SubfeedName = str | dict | list


def normalize_feed_id(feed_id: str) -> str:
    """Return the canonical (lowercase) feed ID, or raise :class:`InvalidUriError`."""
    if not isinstance(feed_id, str) or not _HEX64.fullmatch(feed_id):
        raise InvalidUriError(f"not a feed ID (64 hex characters): {short_repr(feed_id)}")
    return feed_id.lower()


def _well_formed(s: str) -> bool:
    """False if ``s`` holds a lone surrogate (it then has no UTF-8 form)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_name_value(value: Any, depth: int) -> None:
    """Refuse what the object/list subfeed-name rule cannot write portably (spec/feeds.md §1)."""
    t = type(value)
    if (t is dict or t is list or t is tuple) and depth >= _MAX_NAME_DEPTH:
        raise InvalidUriError(f"subfeed name nests deeper than {_MAX_NAME_DEPTH} levels")
    if value is None or t is bool:
        return
    if t is int:
        if abs(value) > _MAX_SAFE_INTEGER:
            raise InvalidUriError(f"integer {value} in a subfeed name is beyond ±(2^53-1)")
        return
    if t is str:
        if not _well_formed(value):
            raise InvalidUriError("a subfeed name must not contain lone surrogates")
        return
    if t is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise InvalidUriError(f"subfeed name object keys must be strings, not {key!r}")
            _check_name_value(key, depth)
            _check_name_value(item, depth + 1)
        return
    if t is list or t is tuple:
        for item in value:
            _check_name_value(item, depth + 1)
        return
    if t is float:
        raise InvalidUriError(
            f"subfeed names may not contain floats ({value!r}): use an integer or a string")
    raise InvalidUriError(f"{t.__name__} is not allowed in a subfeed name")


def subfeed_hash(name: Any) -> str:
    """The 40-hex hash that identifies subfeed ``name`` (see the module docstring).

    Raises :class:`InvalidUriError` for anything that is not a valid name: an empty string,
    text that is not Unicode (lone surrogates), or an object/list holding anything but strings,
    integers within ±(2^53-1), booleans, null, lists and objects with string keys, nested more
    than 201 deep (spec/feeds.md §1).
    """
    if isinstance(name, str):
        if not _well_formed(name):
            raise InvalidUriError("a subfeed name must not contain lone surrogates")
        if name.startswith("~"):
            h = name[1:]
            if not _HEX40.fullmatch(h):
                raise InvalidUriError(
                    f"subfeed names starting with '~' must be '~<40 hex>': {short_repr(name)}")
            return h.lower()
        if name == "":
            raise InvalidUriError("a subfeed name cannot be empty")
        return hashlib.sha1(name.encode("utf-8")).hexdigest()
    if isinstance(name, dict | list):
        _check_name_value(name, 0)  # only what every language can hash the same way
        text = json.dumps(name, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha1(text.encode("utf-8")).hexdigest()
    raise InvalidUriError(f"a subfeed name must be a string or a JSON object/list, not {type(name).__name__}")


def subfeed_name_json(name: Any) -> str:
    """The sorted-key JSON text of a subfeed name as the store records it; raises
    :class:`InvalidUriError` unless ``name`` is a string or plain JSON (see :func:`subfeed_hash`)."""
    try:
        check_json(name)
        return orjson.dumps(name, option=orjson.OPT_SORT_KEYS).decode()
    except InvalidPayloadError as exc:
        raise InvalidUriError(f"subfeed name is not plain JSON: {exc}") from exc
    except (TypeError, orjson.JSONEncodeError) as exc:  # lone surrogates
        raise InvalidUriError(f"subfeed name is not valid JSON text: {exc}") from exc


def subfeed_uri(feed_id: str, name: Any) -> str:
    """The URI of subfeed ``name`` of feed ``feed_id``."""
    if isinstance(name, str) and not name.startswith("~"):
        subfeed_hash(name)  # validates
        return f"feed://{feed_id}/{urllib.parse.quote(name, safe='')}"
    return f"feed://{feed_id}/~{subfeed_hash(name)}"


@dataclass(frozen=True)
class FeedUri:
    """A parsed ``feed://`` URI. ``subfeed_name`` is None for a whole-feed URI."""

    feed_id: str
    subfeed_name: str | None

    @property
    def subfeed_hash(self) -> str | None:
        return None if self.subfeed_name is None else subfeed_hash(self.subfeed_name)


def parse_feed_uri(uri: str) -> FeedUri:
    """Parse a ``feed://`` URI, raising :class:`InvalidUriError` if it is malformed."""
    if not isinstance(uri, str) or not uri.startswith("feed://"):
        raise InvalidUriError(f"not a feed URI (expected 'feed://<feedId>[/<subfeed>]'): {short_repr(uri)}")
    rest = uri[len("feed://") :]
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    feed_part, sep, name_part = rest.partition("/")
    feed_id = normalize_feed_id(feed_part)
    if not sep or name_part == "":
        return FeedUri(feed_id, None)
    if _BAD_PERCENT.search(name_part):
        raise InvalidUriError(f"'%' not followed by two hex digits in {short_repr(uri)}")
    try:
        name = urllib.parse.unquote(name_part, errors="strict")
    except UnicodeError as exc:
        raise InvalidUriError(f"subfeed name in {short_repr(uri)} is not UTF-8 once unquoted") from exc
    subfeed_hash(name)  # validates '~' hashes and emptiness
    return FeedUri(feed_id, name)

"""Feed IDs, subfeed names and ``feed://`` URIs, compatible with the original kachery.

* A feed ID is the feed's Ed25519 public key as 64 hex characters (lowercase is canonical;
  uppercase input is accepted and lowered).
* A subfeed is named by a string or by any JSON object or list. Its 40-hex *subfeed hash* is the
  original's rule: SHA-1 of the UTF-8 string; SHA-1 of ``json.dumps(obj, sort_keys=True,
  separators=(',', ':'))`` (ASCII-escaped) for objects and lists; a string that starts with
  ``~`` is already a hash (``~<40 hex>``).
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

SubfeedName = str | dict | list


def normalize_feed_id(feed_id: str) -> str:
    """Return the canonical (lowercase) feed ID, or raise :class:`InvalidUriError`."""
    if not isinstance(feed_id, str) or not _HEX64.fullmatch(feed_id):
        raise InvalidUriError(f"not a feed ID (64 hex characters): {short_repr(feed_id)}")
    return feed_id.lower()


def subfeed_hash(name: Any) -> str:
    """The 40-hex hash that identifies subfeed ``name`` (see the module docstring).

    Raises :class:`InvalidUriError` for anything that is not a valid name: an empty string,
    text that is not Unicode (lone surrogates), or an object/list that is not plain JSON
    (non-string keys, integers beyond 64 bits, NaN, nesting deeper than 200 levels).
    """
    if isinstance(name, str):
        if name.startswith("~"):
            h = name[1:]
            if not _HEX40.fullmatch(h):
                raise InvalidUriError(
                    f"subfeed names starting with '~' must be '~<40 hex>': {short_repr(name)}")
            return h.lower()
        if name == "":
            raise InvalidUriError("a subfeed name cannot be empty")
        try:
            return hashlib.sha1(name.encode("utf-8")).hexdigest()
        except UnicodeEncodeError as exc:
            raise InvalidUriError(f"subfeed name {short_repr(name)} is not valid Unicode text") from exc
    if isinstance(name, dict | list):
        subfeed_name_json(name)  # plain JSON only, or the name would hash differently elsewhere
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
    try:
        name = urllib.parse.unquote(name_part, errors="strict")
    except UnicodeDecodeError as exc:
        raise InvalidUriError(f"subfeed name in {short_repr(uri)} is not UTF-8 once unquoted") from exc
    subfeed_hash(name)  # validates '~' hashes and emptiness
    return FeedUri(feed_id, name)

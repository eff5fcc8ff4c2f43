"""Signed upload URLs for a channel's bucket, in the manner of GCS V4 signed URLs.

Theory of operation
-------------------
The hub signs "this node may PUT at most ``max_size`` bytes at object ``key`` until
``expires``"; anyone holding the URL may do exactly that, nothing else::

    PUT <bucket base>/<key>?expires=<unix s>&max_size=<bytes>&node=<node id>&sig=<128 hex>

``sig`` is Ed25519 by the hub key over ``b"kachery-bucket-upload-v1\\n" + SHA-256("PUT\\n" key
"\\n" expires "\\n" max_size "\\n" node)``. The bucket checks the signature, the key, the expiry
and the size while the body streams in (unlike the original, which never enforced the size,
original-protocol §3.4). Object keys are ``<channel>/<path>`` and must pass
:func:`validate_object_key`, which makes path traversal impossible by construction.
Pure functions: the caller passes the clock.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from ..errors import BadSignatureError, ExpiredError, InvalidPathError, MalformedRequestError
from ..identity import Keypair, verify_signature

_PREFIX = b"kachery-bucket-upload-v1\n"
_SEGMENT = re.compile(r"[A-Za-z0-9_~=+,@-][A-Za-z0-9._~=+,@-]*")
MAX_KEY_LENGTH = 1024
DEFAULT_URL_TTL_S = 15 * 60  # the original's GCS signed URLs lasted 15 min
MAX_UPLOAD_BYTES = 1 << 40


def validate_object_key(key: object) -> str:
    """Return ``key`` if it is a safe object key, else raise :class:`InvalidPathError`.

    Keys are ``/``-separated segments of ``[A-Za-z0-9._~=+,@-]`` that do not start with ``.``:
    so no ``..``, no hidden or temporary names, no absolute paths, backslashes, NUL or empty
    segments.

    >>> validate_object_key("lab/sha1/aa/bb/cc/aabbcc")
    'lab/sha1/aa/bb/cc/aabbcc'
    """
    if not isinstance(key, str) or not key:
        raise InvalidPathError("object key must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidPathError(f"object key over {MAX_KEY_LENGTH} characters")
    parts = key.split("/")
    if len(parts) < 2 or not all(_SEGMENT.fullmatch(p) for p in parts):
        raise InvalidPathError(
            f"object key {key!r} must be <channel>/<path> of segments of [A-Za-z0-9._~=+,@-] "
            "not starting with '.'")
    return key


def _signed_bytes(key: str, expires: int, max_size: int, node: str) -> bytes:
    text = f"PUT\n{key}\n{expires}\n{max_size}\n{node}".encode()
    return _PREFIX + hashlib.sha256(text).digest()


def sign_upload_url(hub_key: Keypair, base_url: str, key: str, *, max_size: int, expires: int,
                    node_id: str) -> str:
    """A URL allowing one PUT of at most ``max_size`` bytes at ``key`` until ``expires`` (unix s)."""
    validate_object_key(key)
    sig = hub_key.sign(_signed_bytes(key, expires, max_size, node_id)).hex()
    query = urlencode({"expires": expires, "max_size": max_size, "node": node_id, "sig": sig})
    return f"{base_url.rstrip('/')}/{quote(key)}?{query}"


@dataclass(frozen=True)
class UploadGrant:
    """A verified upload permission."""

    key: str
    expires: int
    max_size: int
    node: str


def verify_upload(hub_id: str, key: str, query: Mapping[str, str], *, now_s: float) -> UploadGrant:
    """Check a PUT's key and query against the hub's signature; return the grant.

    Raises :class:`InvalidPathError`, :class:`MalformedRequestError`, :class:`BadSignatureError`
    (also when the URL was signed for another key) or :class:`ExpiredError`.
    """
    validate_object_key(key)
    try:
        expires, max_size = int(query["expires"]), int(query["max_size"])
        node, sig = str(query["node"]), bytes.fromhex(str(query["sig"]))
    except KeyError as exc:
        raise BadSignatureError(f"upload URL lacks {exc.args[0]!r}; ask the hub for a signed URL") from None
    except ValueError:
        raise MalformedRequestError("upload URL has a malformed expires, max_size or sig") from None
    if not 0 <= max_size <= MAX_UPLOAD_BYTES:
        raise MalformedRequestError("max_size out of range")
    if not verify_signature(hub_id, _signed_bytes(key, expires, max_size, node), sig):
        raise BadSignatureError("upload URL signature does not match this object key, size and expiry")
    if now_s > expires:
        raise ExpiredError("upload URL has expired; ask the hub for a new one")
    return UploadGrant(key, expires, max_size, node)

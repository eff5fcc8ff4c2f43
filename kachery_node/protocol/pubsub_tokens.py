"""Pub-sub tokens: what a node shows the relay, like an Ably token with capabilities.

A token is ``base64url(payload) "." base64url(signature)`` where ``payload`` is sorted-key
JSON::

    {"v": 1, "hub": <hub id>, "node": <node id>, "channel": <name>,
     "capability": {"<channel>-requestFiles": ["publish"], ...},
     "issued_ms": ..., "expires_ms": ..., "id": <16 hex>}

and the signature is Ed25519 by the hub key over ``b"kachery-pubsub-token-v1\\n" +
SHA-256(payload)``. Signing with the hub's key (rather than an HMAC secret) lets a relay that
runs outside the hub verify tokens knowing only the hub ID. ``issued_ms`` lets a relay refuse
tokens issued before a revocation concerning their node (spec/pubsub.md §3). Tokens last
:data:`DEFAULT_TOKEN_TTL_MS` (~30 min, as the original's docs say) and are renewed in-band.
Pure functions: the caller passes the clock.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass

import orjson

from ..errors import ExpiredError, InvalidTokenError
from ..identity import Keypair
from . import signing

DEFAULT_TOKEN_TTL_MS = 30 * 60 * 1000
_PREFIX = b"kachery-pubsub-token-v1\n"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token says."""

    hub: str
    node: str
    channel: str
    capability: dict[str, list[str]]
    issued_ms: int
    expires_ms: int
    id: str


def issue_token(hub_key: Keypair, *, node_id: str, channel: str, capability: dict[str, list[str]],
                now_ms: int, ttl_ms: int = DEFAULT_TOKEN_TTL_MS) -> str:
    """Sign a token for ``node_id`` on ``channel`` with exactly ``capability``."""
    payload = orjson.dumps({
        "v": 1, "hub": hub_key.public_hex, "node": node_id, "channel": channel,
        "capability": capability, "issued_ms": now_ms, "expires_ms": now_ms + ttl_ms,
        "id": secrets.token_hex(8),
    }, option=orjson.OPT_SORT_KEYS)
    sig = signing.sign(hub_key, _PREFIX, payload)
    return _b64(payload) + "." + _b64(sig)


def _is_capability(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(band, str) and isinstance(ops, list) and all(isinstance(op, str) for op in ops)
        for band, ops in value.items())


def _claims(obj: object) -> TokenClaims:
    """The claims of a payload whose signature verified, type-checked: the hub signs only
    well-formed tokens, and a relay must not trip over one that is not."""
    if not isinstance(obj, dict):
        raise InvalidTokenError("token payload is malformed: not an object")
    strings = [obj.get(k) for k in ("hub", "node", "channel", "id")]
    times = [obj.get(k) for k in ("issued_ms", "expires_ms")]
    if (not all(isinstance(s, str) for s in strings) or not all(type(t) is int for t in times)
            or not _is_capability(obj.get("capability"))):
        raise InvalidTokenError("token payload is malformed: a claim is missing or of the wrong type")
    hub, node, channel, token_id = strings
    if not signing.is_id(node):
        raise InvalidTokenError("token payload is malformed: the node is not a 64-hex node ID")
    return TokenClaims(hub, node, channel, obj["capability"], times[0], times[1], token_id)


def verify_token(token: object, *, hub_id: str, now_ms: int) -> TokenClaims:
    """Verify signature, hub and expiry; raise :class:`InvalidTokenError` or :class:`ExpiredError`."""
    if not isinstance(token, str) or token.count(".") != 1 or len(token) > 16384:
        raise InvalidTokenError("token is not of the form <payload>.<signature>")
    p64, s64 = token.split(".")
    try:
        payload, sig = _unb64(p64), _unb64(s64)
    except (binascii.Error, ValueError):
        raise InvalidTokenError("token is not base64url") from None
    if not signing.verify(hub_id, _PREFIX, payload, sig):
        raise InvalidTokenError("token signature does not verify with this hub's key")
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise InvalidTokenError("token payload is malformed") from None
    claims = _claims(obj)
    if claims.hub != hub_id:
        raise InvalidTokenError("token was issued by another hub")
    if now_ms >= claims.expires_ms:
        raise ExpiredError("token has expired; ask the hub for a new one")
    return claims

"""Signed requests to the hub: exact body bytes, a time and a nonce, signed with Ed25519.

Theory of operation
-------------------
A client serializes the request body **once** (JSON with at least ``type``, ``hub``,
``time_ms`` and ``nonce``) and signs::

    b"kachery-hub-request-v1 <kind>\\n" + SHA-256(body)

where ``<kind>`` is ``node`` or ``user``, so a signature made for one purpose cannot stand in
for another. The body bytes travel unchanged; the hub verifies those bytes and never
re-serializes (the original's canonical-JSON drift, original-protocol §1.2). The signature and
signer travel in headers:

* ``Kachery-Node-Id`` / ``Kachery-Node-Signature`` (128 hex) for node requests,
* ``Kachery-User-Id`` / ``Kachery-User-Signature`` for a person's requests.

``hub`` (the hub's public key) binds the request to one hub; ``time_ms`` must be within
:data:`MAX_SKEW_MS` of the hub's clock, and the hub remembers each (signer, nonce) for that
window, so a captured request cannot be replayed (fixing original-protocol §10.1).

This module is pure: the caller passes the clock and keeps the nonce ledger; signing input,
hex checks, time window and replay window come from :mod:`.signing`, shared with node messages.
"""

from __future__ import annotations

import secrets
from typing import Any, Literal

import orjson

from kachery_feeds.jsontext import JsonTextError
from kachery_feeds.jsontext import loads as loads_json

from ..errors import BadSignatureError, MalformedRequestError, StaleRequestError
from ..identity import Keypair
from . import signing

Kind = Literal["node", "user"]
MAX_SKEW_MS = signing.MAX_SKEW_MS
MAX_BODY_BYTES = 256 * 1024
NONCE_MIN_CHARS = 16

HEADERS: dict[str, tuple[str, str]] = {
    "node": ("Kachery-Node-Id", "Kachery-Node-Signature"),
    "user": ("Kachery-User-Id", "Kachery-User-Signature"),
}


def context(kind: Kind) -> bytes:
    """The signing context of a ``kind`` request: ``"kachery-hub-request-v1 <kind>" LF``."""
    return b"kachery-hub-request-v1 " + kind.encode() + b"\n"


def _signed_bytes(kind: Kind, body: bytes) -> bytes:
    return signing.signing_input(context(kind), body)


def new_nonce() -> str:
    """32 random hex characters."""
    return secrets.token_hex(16)


def make_body(type_: str, hub_id: str, *, time_ms: int, nonce: str | None = None,
              **fields: Any) -> bytes:
    """Serialize a request body once (sorted keys), ready to sign and send; ``time_ms`` is the
    sender's wall clock."""
    body = {"type": type_, "hub": hub_id, "time_ms": time_ms, "nonce": nonce or new_nonce(), **fields}
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def sign_body(keypair: Keypair, kind: Kind, body: bytes) -> dict[str, str]:
    """The two headers that sign ``body`` as ``kind`` with ``keypair``."""
    id_header, sig_header = HEADERS[kind]
    return {id_header: keypair.public_hex, sig_header: signing.sign(keypair, context(kind), body).hex()}


def parse_body(body: bytes, max_bytes: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """Parse and shape-check a request body; raise :class:`MalformedRequestError`."""
    if len(body) > max_bytes:
        raise MalformedRequestError(f"request body over {max_bytes} bytes")
    try:
        obj = loads_json(body)
    except JsonTextError as exc:
        raise MalformedRequestError(f"request body is not valid JSON: {exc}") from None
    if type(obj) is not dict:
        raise MalformedRequestError("request body must be a JSON object")
    for key, typ in (("type", str), ("hub", str), ("time_ms", int), ("nonce", str)):
        if type(obj.get(key)) is not typ:
            raise MalformedRequestError(f"request body needs {key!r} ({typ.__name__})")
    if not signing.is_time_ms(obj["time_ms"]):
        raise MalformedRequestError("time_ms must be an integer in [0, 2^53-1]")
    if not signing.is_nonce(obj["nonce"], NONCE_MIN_CHARS):
        raise MalformedRequestError("nonce must be 16-64 characters of [A-Za-z0-9_-]")
    return obj


def verify_signature_headers(kind: Kind, body: bytes, headers: Any) -> str:
    """Check the ``kind`` signature headers over ``body``; return the signer's 64-hex ID."""
    id_header, sig_header = HEADERS[kind]
    signer, sig = headers.get(id_header), headers.get(sig_header)
    if not signer or not sig:
        raise BadSignatureError(f"missing {id_header} / {sig_header} headers")
    signer, sig = signer.strip().lower(), sig.strip().lower()
    if not signing.is_id(signer) or not signing.is_signature_hex(sig):
        raise BadSignatureError(f"{id_header} must be 64 hex and {sig_header} 128 hex")
    if not signing.verify(signer, context(kind), body, bytes.fromhex(sig)):
        raise BadSignatureError(f"{kind} signature does not verify")
    return signer


def verify_request(kind: Kind, body: bytes, headers: Any, *, hub_id: str, now: int,
                   expected_type: str | None = None,
                   max_body_bytes: int = MAX_BODY_BYTES) -> tuple[str, dict[str, Any]]:
    """Verify a signed request; return ``(signer, body)``.

    Checks, in order: shape, signature, hub, type, time window. The caller then checks and
    records the nonce (:class:`~kachery_node.hub.state.HubState` keeps the ledger, for
    :data:`~kachery_node.protocol.signing.REPLAY_WINDOW_MS`).
    """
    obj = parse_body(body, max_body_bytes)
    signer = verify_signature_headers(kind, body, headers)
    if obj["hub"] != hub_id:
        raise BadSignatureError("request was signed for another hub")
    if expected_type is not None and obj["type"] != expected_type:
        raise MalformedRequestError(f"expected a {expected_type!r} request here, got {obj['type']!r}")
    if not signing.is_fresh(obj["time_ms"], now):
        skew = signing.skew_ms(obj["time_ms"], now)
        raise StaleRequestError(
            f"request time is {skew / 1000:+.0f} s from the hub's clock (allowed ±{MAX_SKEW_MS // 1000} s)")
    return signer, obj

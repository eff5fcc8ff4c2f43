"""Signed node messages on a channel's pub-sub bands (spec/node-protocol.md §2).

Wire form (one line of UTF-8 bytes)::

    <body JSON> TAB <sender node ID, 64 hex> TAB <Ed25519 signature, 128 hex>

``signature = Ed25519(node key, CONTEXT || SHA-256(body))`` with
``CONTEXT = "kachery-pubsub-v1" 0x00``. The body is a JSON object that always carries
``type``, ``channel``, ``band``, ``time_ms`` and ``nonce``: a message is bound to where and when
it was sent, so it cannot be replayed on another channel or band, or later (the original signed
only the body and had none of these, original-protocol.md §10.1, §10.6).

A receiver checks, in order: shape, signature, channel and band equal to where it arrived,
``|now - time_ms| <= MAX_SKEW_MS``, and that ``(sender, nonce)`` was not seen in the window.
Whether the sender *may* send on that band is the membership's business
(:mod:`kachery_node.protocol.membership`), checked by the caller.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from kachery_feeds.jsontext import JsonTextError
from kachery_feeds.jsontext import loads as loads_json

from ..errors import LocalProtocolError, RemoteProtocolError
from ..identity import Keypair
from . import signing

CONTEXT = b"kachery-pubsub-v1\x00"
MAX_SKEW_MS = signing.MAX_SKEW_MS
MAX_ENVELOPE_BYTES = 256 * 1024
#: Nonces are 8-64 characters of ``[A-Za-z0-9_-]`` (spec/node-protocol.md, Envelopes);
#: ``seal`` writes 24 hex.
NONCE_MIN_CHARS = 8


class EnvelopeError(RemoteProtocolError):
    """A pub-sub message is malformed, forged, misdirected, stale or replayed (the sender's
    fault, or whoever tampered with it on the way)."""


class MessageTooLargeError(LocalProtocolError):
    """A body to seal is over :data:`MAX_ENVELOPE_BYTES` (the caller should have split it, or
    sent it through the bucket)."""


@dataclass(frozen=True)
class Envelope:
    sender: str
    body: dict[str, Any]

    @property
    def type(self) -> str:
        return self.body["type"]


def seal(keypair: Keypair, *, channel: str, band: str, body: dict[str, Any], now_ms: int,
         nonce: str | None = None) -> bytes:
    """Sign ``body`` (which must have a ``type``) for sending on ``channel``/``band`` at
    ``now_ms`` (the sender's wall clock); ``nonce`` defaults to 24 random hex characters."""
    if "type" not in body:
        raise LocalProtocolError("an envelope body needs a 'type'")
    full = {**body, "channel": channel, "band": band, "time_ms": now_ms,
            "nonce": secrets.token_hex(12) if nonce is None else nonce}
    raw = orjson.dumps(full, option=orjson.OPT_SORT_KEYS)
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise MessageTooLargeError(
            f"message of {len(raw)} bytes exceeds the {MAX_ENVELOPE_BYTES}-byte limit")
    sig = signing.sign(keypair, CONTEXT, raw)
    return raw + b"\t" + keypair.public_hex.encode() + b"\t" + sig.hex().encode()


def open_envelope(data: bytes, *, channel: str, band: str, now_ms: int) -> Envelope:
    """Verify a received envelope's shape, signature, binding and freshness (not replay: see
    :class:`ReplayGuard`) at ``now_ms`` (the receiver's wall clock).

    The line splits at its last two TABs into body, sender and signature; the body is at most
    :data:`MAX_ENVELOPE_BYTES` and is read by kachery's JSON rules (kachery_feeds.jsontext)."""
    if not isinstance(data, bytes | bytearray) or len(data) > MAX_ENVELOPE_BYTES + 194:
        raise EnvelopeError("message is not bytes or is too large")
    parts = bytes(data).rsplit(b"\t", 2)
    if len(parts) != 3:
        raise EnvelopeError("malformed message: expected '<body>\\t<node id>\\t<signature>'")
    raw, sender_b, sig_b = parts
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError(f"message body is over the {MAX_ENVELOPE_BYTES}-byte limit")
    if not signing.is_id(sender_b) or not signing.is_signature_hex(sig_b):
        raise EnvelopeError("malformed sender or signature")
    sender = sender_b.decode()
    if not signing.verify(sender, CONTEXT, raw, bytes.fromhex(sig_b.decode())):
        raise EnvelopeError(f"bad signature on a message claiming to be from {sender[:12]}…")
    try:
        body = loads_json(raw)
    except JsonTextError as exc:
        raise EnvelopeError(f"message body is not valid JSON: {exc}") from None
    if type(body) is not dict or not isinstance(body.get("type"), str):
        raise EnvelopeError("message body must be an object with a 'type'")
    if body.get("channel") != channel or body.get("band") != band:
        raise EnvelopeError(
            f"message for {body.get('channel')!r}/{body.get('band')!r} arrived on {channel!r}/{band!r}"
        )
    t = body.get("time_ms")
    if not signing.is_time_ms(t) or not signing.is_fresh(t, now_ms):
        raise EnvelopeError("stale message (time_ms is missing or off by more than 60 s)")
    if not signing.is_nonce(body.get("nonce"), NONCE_MIN_CHARS):
        raise EnvelopeError("message has no valid nonce (8-64 characters of [A-Za-z0-9_-])")
    return Envelope(sender, body)


class ReplayGuard:
    """Refuses an envelope whose (sender, nonce) was seen within the replay window
    (:class:`~kachery_node.protocol.signing.ReplayLedger`)."""

    def __init__(self, window_ms: int = signing.REPLAY_WINDOW_MS, max_entries: int = 200_000) -> None:
        self._ledger = signing.ReplayLedger(window_ms, max_entries)

    def check(self, env: Envelope, *, now_ms: int) -> None:
        if not self._ledger.record(env.sender, env.body["nonce"], now_ms=now_ms):
            raise EnvelopeError(f"replayed message from {env.sender[:12]}…")

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

import hashlib
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from kachery_feeds.jsontext import MAX_SAFE_INTEGER, JsonTextError
from kachery_feeds.jsontext import loads as loads_json

from ..identity import Keypair, verify_signature

CONTEXT = b"kachery-pubsub-v1\x00"
MAX_SKEW_MS = 60_000
MAX_ENVELOPE_BYTES = 256 * 1024
_HEX = frozenset(b"0123456789abcdef")
#: The nonce alphabet and length (spec/node-protocol.md, Envelopes); ``seal`` writes 24 hex.
_NONCE = re.compile(r"[A-Za-z0-9_-]{8,64}")


class EnvelopeError(Exception):
    """A pub-sub message is malformed, forged, misdirected, stale or replayed."""


@dataclass(frozen=True)
class Envelope:
    sender: str
    body: dict[str, Any]

    @property
    def type(self) -> str:
        return self.body["type"]


def _signing_input(body: bytes) -> bytes:
    return CONTEXT + hashlib.sha256(body).digest()


def seal(
    keypair: Keypair, *, channel: str, band: str, body: dict[str, Any], now_ms: int | None = None
) -> bytes:
    """Sign ``body`` (which must have a ``type``) for sending on ``channel``/``band``."""
    if "type" not in body:
        raise ValueError("an envelope body needs a 'type'")
    full = {
        **body,
        "channel": channel,
        "band": band,
        "time_ms": int(time.time() * 1000) if now_ms is None else now_ms,
        "nonce": secrets.token_hex(12),
    }
    raw = orjson.dumps(full, option=orjson.OPT_SORT_KEYS)
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError(f"message of {len(raw)} bytes exceeds the {MAX_ENVELOPE_BYTES}-byte limit")
    sig = keypair.sign(_signing_input(raw))
    return raw + b"\t" + keypair.public_hex.encode() + b"\t" + sig.hex().encode()


def open_envelope(data: bytes, *, channel: str, band: str, now_ms: int | None = None) -> Envelope:
    """Verify a received envelope's shape, signature, binding and freshness (not replay).

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
    well_formed = len(sender_b) == 64 and len(sig_b) == 128
    if not well_formed or not _HEX.issuperset(sender_b) or not _HEX.issuperset(sig_b):
        raise EnvelopeError("malformed sender or signature")
    sender = sender_b.decode()
    if not verify_signature(sender, _signing_input(raw), bytes.fromhex(sig_b.decode())):
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
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if type(t) is not int or not 0 <= t <= MAX_SAFE_INTEGER or abs(now - t) > MAX_SKEW_MS:
        raise EnvelopeError("stale message (time_ms is missing or off by more than 60 s)")
    nonce = body.get("nonce")
    if type(nonce) is not str or not _NONCE.fullmatch(nonce):
        raise EnvelopeError("message has no valid nonce (8-64 characters of [A-Za-z0-9_-])")
    return Envelope(sender, body)


class ReplayGuard:
    """Remembers (sender, nonce) pairs for the freshness window; a repeat is a replay."""

    def __init__(self, window_ms: int = 2 * MAX_SKEW_MS, max_entries: int = 200_000) -> None:
        self._seen: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._window_ms = window_ms
        self._max = max_entries

    def check(self, env: Envelope, now_ms: int | None = None) -> None:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        while self._seen and (
            len(self._seen) > self._max or next(iter(self._seen.values())) < now - self._window_ms
        ):
            self._seen.popitem(last=False)
        key = (env.sender, env.body["nonce"])
        if key in self._seen:
            raise EnvelopeError(f"replayed message from {env.sender[:12]}…")
        self._seen[key] = now

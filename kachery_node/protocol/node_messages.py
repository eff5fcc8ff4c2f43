"""Signed node messages on a channel's pub-sub bands (spec/node-protocol.md, Envelopes), v2.

Wire form (bytes; the pub-sub service carries them as they are, spec/pubsub.md)::

    0x02 | sender's node key (32 bytes) | signature (64 bytes) | body JSON [ LF attachment ]

``signature = Ed25519(node key, "kachery-pubsub-v2" 0x00 channel 0x00 band 0x00 ||
SHA-256(everything after the signature))``: the body and the attachment are signed together,
and the signature binds them to the channel and band they were sent on (a message replayed on
another channel or band does not verify there). The body is a JSON object (no LF byte in it)
that always carries ``type``, ``time_ms`` and ``nonce``, so a message is also bound to when it was
sent and cannot be replayed later (the original kachery signed only the body and had none of
these). The optional *attachment* is bytes that the message type
defines (``newSubfeedMessages``: wire lines in segment form), carried as they are instead of as
JSON strings inside the JSON body.

A receiver checks, in order: version, shape, signature (for the channel and band where it
arrived), ``|now - time_ms| <= MAX_SKEW_MS``, and (:class:`ReplayGuard`) that ``(sender,
nonce)`` was not seen in the window. Whether the sender *may* send on that band is the
membership's business (:mod:`kachery_node.protocol.membership`), checked by the caller.

Version 1 (a text line ``<body> TAB <sender hex> TAB <signature hex>`` sent as a JSON string)
is refused with an error that says so.

An *unsigned push* (``0x03 | body JSON LF attachment``) is the one message sent without an
envelope signature: ``newSubfeedMessages`` on ``provide-feeds``, to readers who said they take it
(``unsigned_pushes`` in their subscriptions). Its sender is the publisher the pub-sub service
names (every backend authenticates publishers); what it carries is signed already, message by
message, by the feed's key, and verified on import, and importing twice changes nothing, so
the envelope signature (~0.1 ms of the live path's CPU, sign and verify) added nothing a push
needs. Why that is safe, exactly: spec/node-protocol.md, Envelopes.
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

VERSION = 2
UNSIGNED_PUSH = 3  # the version byte of an unsigned push
#: (band, type) of the messages that may travel as unsigned pushes: feed messages that are
#: signed by their feed's key and verified on import, whose replay is harmless.
UNSIGNED_TYPES = frozenset({("provide-feeds", "newSubfeedMessages")})
CONTEXT = b"kachery-pubsub-v2\x00"  # then the channel, 0x00, the band, 0x00 (:func:`context`)
MAX_SKEW_MS = signing.MAX_SKEW_MS
#: The signed part (body, LF and attachment) is at most this long.
MAX_ENVELOPE_BYTES = 256 * 1024
HEADER_BYTES = 1 + 32 + 64
#: Nonces are 8-64 characters of ``[A-Za-z0-9_-]`` (spec/node-protocol.md, Envelopes);
#: ``seal`` writes 16 (12 random bytes, base64url).
NONCE_MIN_CHARS = 8
_V1_START = ord("{")  # a version 1 envelope began with its JSON body


class EnvelopeError(RemoteProtocolError):
    """A pub-sub message is malformed, forged, misdirected, stale or replayed (the sender's
    fault, or whoever tampered with it on the way)."""


class MessageTooLargeError(LocalProtocolError):
    """A body (with its attachment) to seal is over :data:`MAX_ENVELOPE_BYTES` (the caller should
    have split it, or sent it through the bucket)."""


@dataclass(frozen=True)
class Envelope:
    """An opened node message: who signed it, its body, and its attachment (None: none)."""

    sender: str
    body: dict[str, Any]
    attachment: bytes | None = None
    #: False for an unsigned push: ``sender`` is then the publisher named by the pub-sub service.
    signed: bool = True

    @property
    def type(self) -> str:
        return self.body["type"]


def context(channel: str, band: str) -> bytes:
    """What a node message's signature is bound to, before the digest of its bytes:
    ``"kachery-pubsub-v2" 0x00 channel 0x00 band 0x00``."""
    if "\x00" in channel or "\x00" in band:
        raise LocalProtocolError("a channel or band name never contains NUL")
    return CONTEXT + channel.encode() + b"\x00" + band.encode() + b"\x00"


def seal(keypair: Keypair, *, channel: str, band: str, body: dict[str, Any], now_ms: int,
         nonce: str | None = None, attachment: bytes | None = None) -> bytes:
    """Sign ``body`` (which must have a ``type``), and ``attachment`` if any, for sending on
    ``channel``/``band`` at ``now_ms`` (the sender's wall clock); ``nonce`` defaults to 16
    random characters. An empty attachment is written as none."""
    if "type" not in body:
        raise LocalProtocolError("an envelope body needs a 'type'")
    full = {**body, "time_ms": now_ms, "nonce": secrets.token_urlsafe(12) if nonce is None else nonce}
    signed = orjson.dumps(full, option=orjson.OPT_SORT_KEYS)  # never contains a LF byte
    if attachment:
        signed += b"\n" + bytes(attachment)
    if len(signed) > MAX_ENVELOPE_BYTES:
        raise MessageTooLargeError(
            f"message of {len(signed)} bytes exceeds the {MAX_ENVELOPE_BYTES}-byte limit")
    sig = signing.sign(keypair, context(channel, band), signed)
    return bytes([VERSION]) + keypair.signing_key.verify_key.encode() + sig + signed


def seal_unsigned_push(*, band: str, body: dict[str, Any], attachment: bytes) -> bytes:
    """An unsigned push of ``body`` (a type of :data:`UNSIGNED_TYPES` on ``band``) and its
    ``attachment``: ``0x03 | body JSON | LF | attachment``, no key, time, nonce or signature."""
    if (band, body.get("type")) not in UNSIGNED_TYPES:
        raise LocalProtocolError(f"{body.get('type')!r} on {band} is always signed (only "
                                 "newSubfeedMessages on provide-feeds may go unsigned)")
    if not attachment:
        raise LocalProtocolError("an unsigned push carries its messages as an attachment")
    unsigned = orjson.dumps(body, option=orjson.OPT_SORT_KEYS) + b"\n" + bytes(attachment)
    if len(unsigned) > MAX_ENVELOPE_BYTES:
        raise MessageTooLargeError(
            f"message of {len(unsigned)} bytes exceeds the {MAX_ENVELOPE_BYTES}-byte limit")
    return bytes([UNSIGNED_PUSH]) + unsigned


def open_envelope(data: bytes, *, channel: str, band: str, now_ms: int,
                  publisher: str | None = None) -> Envelope:
    """Verify a received message's version, shape, signature, binding and freshness at
    ``now_ms`` (the receiver's wall clock); not replays (:class:`ReplayGuard`).

    An unsigned push (version ``0x03``) is taken only where the pub-sub service named its
    ``publisher`` (then its sender), on a band and of a type of :data:`UNSIGNED_TYPES`; any
    other message without a signature is refused.

    The body is read by kachery's JSON rules (kachery_feeds.jsontext)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EnvelopeError("message is not bytes")
    data = bytes(data)
    if data[:1] == bytes([UNSIGNED_PUSH]):
        return _open_unsigned_push(data, band=band, publisher=publisher)
    if data[:1] != bytes([VERSION]):
        if data[:1] == bytes([_V1_START]):
            raise EnvelopeError("a version 1 node message (a JSON text line): this node speaks node "
                                "messages v2 (binary, spec/node-protocol.md); upgrade the sender")
        raise EnvelopeError(f"unknown node message version {data[:1].hex() or 'none'} (expected 02)")
    if len(data) <= HEADER_BYTES:
        raise EnvelopeError("malformed message: shorter than its header")
    signed = data[HEADER_BYTES:]
    if len(signed) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError(f"message is over the {MAX_ENVELOPE_BYTES}-byte limit")
    sender = data[1:33].hex()
    if not signing.verify(sender, context(channel, band), signed, data[33:HEADER_BYTES]):
        raise EnvelopeError(f"bad signature on a message claiming to be from {sender[:12]}… (forged, "
                            f"tampered with, or signed for another channel or band than {channel}/{band})")
    raw, lf, attachment = signed.partition(b"\n")
    if lf and not attachment:
        raise EnvelopeError("malformed message: a LF after the body but no attachment")
    body = _parse_body(raw)
    t = body.get("time_ms")
    if not signing.is_time_ms(t) or not signing.is_fresh(t, now_ms):
        raise EnvelopeError("stale message (time_ms is missing or off by more than 60 s)")
    if not signing.is_nonce(body.get("nonce"), NONCE_MIN_CHARS):
        raise EnvelopeError("message has no valid nonce (8-64 characters of [A-Za-z0-9_-])")
    return Envelope(sender, body, attachment if lf else None)


def _parse_body(raw: bytes) -> dict[str, Any]:
    """A message body (signed or not): a JSON object with a string ``type``, by kachery's JSON
    rules; else :class:`EnvelopeError`."""
    try:
        body = loads_json(raw)
    except JsonTextError as exc:
        raise EnvelopeError(f"message body is not valid JSON: {exc}") from None
    if type(body) is not dict or not isinstance(body.get("type"), str):
        raise EnvelopeError("message body must be an object with a 'type'")
    return body


def _open_unsigned_push(data: bytes, *, band: str, publisher: str | None) -> Envelope:
    if publisher is None or not signing.is_id(publisher):
        raise EnvelopeError("an unsigned push whose publisher the pub-sub service did not name")
    if len(data) - 1 > MAX_ENVELOPE_BYTES:
        raise EnvelopeError(f"message is over the {MAX_ENVELOPE_BYTES}-byte limit")
    raw, lf, attachment = data[1:].partition(b"\n")
    if not lf or not attachment:
        raise EnvelopeError("malformed unsigned push: no attachment")
    body = _parse_body(raw)
    if (band, body["type"]) not in UNSIGNED_TYPES:
        raise EnvelopeError(f"an unsigned {body['type']!r} on {band} from {publisher[:12]}…: only "
                            "newSubfeedMessages on provide-feeds may go unsigned (forged?)")
    return Envelope(publisher, body, attachment, signed=False)


class ReplayGuard:
    """Refuses an envelope whose (sender, nonce) was seen within the replay window
    (:class:`~kachery_node.protocol.signing.ReplayLedger`)."""

    def __init__(self, window_ms: int = signing.REPLAY_WINDOW_MS, max_entries: int = 200_000) -> None:
        self._ledger = signing.ReplayLedger(window_ms, max_entries)

    def check(self, env: Envelope, *, now_ms: int) -> None:
        """Raise :class:`EnvelopeError` if ``env`` was seen already. An unsigned push has no
        nonce and passes: importing its messages again changes nothing."""
        if not env.signed:
            return
        if not self._ledger.record(env.sender, env.body["nonce"], now_ms=now_ms):
            raise EnvelopeError(f"replayed message from {env.sender[:12]}…")

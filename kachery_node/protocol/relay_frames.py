"""The embedded relay's binary frames (spec/pubsub.md §3, pub-sub v2): how a node message travels
between a node and the relay as the bytes it is, never re-encoded as a JSON string.

Control operations (``auth``, ``subscribe``, ``ack``, ``error``, ``heartbeat``, ...) stay JSON
in text frames. Messages go in binary frames, each holding one or more *records* back to back
(all integers big-endian)::

    publish (node -> relay):  0x01 | id: u32 | band length: u8 | band (UTF-8) | length: u32 | message
    message (relay -> node):  0x02 | band length: u8 | band | publisher: 32 bytes | ts_ms: u64
                                   | length: u32 | message

``id`` 0 asks for no reply; any other id is answered ``{"op": "ack", "id": id}`` (or an
``error`` with that id) in a text frame. ``publisher`` is the publishing node's key (its node ID
as raw bytes), set by the relay from the publisher's token; ``ts_ms`` is the relay's clock.

Pure: encoders and decoders only. A malformed frame raises
:class:`~kachery_node.errors.MalformedRequestError` (the peer's fault) at the first record that
does not parse; the records before it were well formed.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import MalformedRequestError

PUBLISH = 0x01
MESSAGE = 0x02
MAX_BAND_BYTES = 255
MAX_ID = 2**32 - 1

_PUBLISH_HEAD = struct.Struct(">BIB")  # op, id, band length
_MESSAGE_HEAD = struct.Struct(">BB")  # op, band length
_LENGTH = struct.Struct(">I")
_TS = struct.Struct(">Q")
#: Bytes a record adds to its message, besides the band name.
PUBLISH_OVERHEAD = _PUBLISH_HEAD.size + _LENGTH.size
MESSAGE_OVERHEAD = _MESSAGE_HEAD.size + 32 + _TS.size + _LENGTH.size


@dataclass(frozen=True)
class PublishRecord:
    """A node asks the relay to publish ``message`` on ``band`` (``id`` 0: no reply wanted)."""

    id: int
    band: str
    message: bytes


@dataclass(frozen=True)
class MessageRecord:
    """The relay delivers ``message``, published on ``band`` by node ``sender`` (64 hex) at
    ``ts_ms`` (the relay's clock)."""

    band: str
    sender: str
    ts_ms: int
    message: bytes


def _band_bytes(band: str) -> bytes:
    raw = band.encode()
    if not 0 < len(raw) <= MAX_BAND_BYTES:
        raise MalformedRequestError(f"a band name has 1 to {MAX_BAND_BYTES} bytes, not {len(raw)}")
    return raw


def encode_publish(id: int, band: str, message: bytes) -> bytes:
    """One publish record."""
    if not 0 <= id <= MAX_ID:
        raise MalformedRequestError(f"a publish id is a u32, not {id}")
    raw = _band_bytes(band)
    return _PUBLISH_HEAD.pack(PUBLISH, id, len(raw)) + raw + _LENGTH.pack(len(message)) + message


def encode_message(band: str, sender: str, ts_ms: int, message: bytes) -> bytes:
    """One message record (``sender``: the publisher's 64-hex node ID)."""
    raw = _band_bytes(band)
    return (_MESSAGE_HEAD.pack(MESSAGE, len(raw)) + raw + bytes.fromhex(sender) + _TS.pack(ts_ms)
            + _LENGTH.pack(len(message)) + message)


class _Reader:
    def __init__(self, frame: bytes) -> None:
        self.view = memoryview(frame)
        self.pos = 0

    def take(self, n: int, what: str) -> memoryview:
        if self.pos + n > len(self.view):
            raise MalformedRequestError(f"binary frame cut short in {what} (at byte {self.pos})")
        piece = self.view[self.pos : self.pos + n]
        self.pos += n
        return piece

    def band(self, length: int) -> str:
        if length == 0:
            raise MalformedRequestError("empty band name in a binary frame")
        try:
            return bytes(self.take(length, "a band name")).decode()
        except UnicodeDecodeError:
            raise MalformedRequestError("a band name in a binary frame is not UTF-8") from None

    def message(self) -> bytes:
        (length,) = _LENGTH.unpack(self.take(_LENGTH.size, "a message length"))
        return bytes(self.take(length, "a message"))

    @property
    def done(self) -> bool:
        return self.pos == len(self.view)


def decode_publishes(frame: bytes) -> Iterator[PublishRecord]:
    """The publish records of a binary frame from a node, in order."""
    r = _Reader(frame)
    if r.done:
        raise MalformedRequestError("empty binary frame")
    while not r.done:
        op, id_, band_len = _PUBLISH_HEAD.unpack(r.take(_PUBLISH_HEAD.size, "a record header"))
        if op != PUBLISH:
            raise MalformedRequestError(f"record 0x{op:02x} in a binary frame: expected 0x01 (publish)")
        yield PublishRecord(id_, r.band(band_len), r.message())


def decode_messages(frame: bytes) -> Iterator[MessageRecord]:
    """The message records of a binary frame from the relay, in order."""
    r = _Reader(frame)
    if r.done:
        raise MalformedRequestError("empty binary frame")
    while not r.done:
        op, band_len = _MESSAGE_HEAD.unpack(r.take(_MESSAGE_HEAD.size, "a record header"))
        if op != MESSAGE:
            raise MalformedRequestError(f"record 0x{op:02x} in a binary frame: expected 0x02 (message)")
        band = r.band(band_len)
        sender = bytes(r.take(32, "a publisher")).hex()
        (ts_ms,) = _TS.unpack(r.take(_TS.size, "a timestamp"))
        yield MessageRecord(band, sender, ts_ms, r.message())

"""WebSocket framing (RFC 6455 §5), sans-IO: parse a byte stream into messages, encode frames.

Shared by the relay's two ends: the node's relay client (``transport/pubsub/websocket_client.py``,
which reads unmasked server frames) and the hub's relay listener (which reads masked client
frames). No handshake, no I/O, no extensions (neither end offers or accepts any, so RSV bits
are always an error).

Example::

    reader = MessageReader(masked=False, max_message_bytes=16 << 20)
    for opcode, payload in reader.feed(chunk_from_socket):   # FrameError: close with .close_code
        ...
    sock.send(encode_frame(OP_BINARY, b"...", mask=True))    # a client's frames are masked
"""

from __future__ import annotations

import os
import struct

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_DATA_OPCODES = frozenset({OP_TEXT, OP_BINARY})
_CONTROL_OPCODES = frozenset({OP_CLOSE, OP_PING, OP_PONG})
MAX_CONTROL_PAYLOAD = 125

_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")


class FrameError(Exception):
    """The peer broke the framing: the connection must be closed with :attr:`close_code`
    (1002 protocol error, 1007 invalid payload data, 1009 message too big).

    :attr:`messages`: raised by :meth:`MessageReader.feed`, the messages that the same bytes
    completed before the fault, as ``feed`` would have returned them: well-formed messages
    the peer sent before it broke the framing, to be handled before the connection closes."""

    def __init__(self, close_code: int, message: str) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.messages: list[tuple[int, bytes]] = []


def _unmask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``key`` repeated (its own inverse), as one big-integer
    operation: C speed, no loop over bytes in Python."""
    n = len(payload)
    if not n:
        return b""
    stream = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


class MessageReader:
    """Turns the bytes of one direction of a WebSocket connection into whole messages.

    ``masked``: whether the peer's frames must be masked (True for a server reading a client,
    False for a client reading a server). ``max_message_bytes`` bounds a data message, checked
    from each frame's header before its payload is buffered, so memory stays bounded by it.
    After a :class:`FrameError` the reader is not usable any more (the connection must close).
    """

    def __init__(self, masked: bool, max_message_bytes: int) -> None:
        self.masked = masked
        self.max_message_bytes = max_message_bytes
        # Bytes fed but not parsed yet (the start of one frame), kept as chunks until the frame
        # is whole: a large message arriving in many reads is joined once, not at every read.
        self._chunks: list[bytes] = []
        self._have = 0  # their total length
        self._need = 0  # the length of the frame they begin, once its header was read
        self._frag_opcode: int | None = None  # the opcode of a fragmented message under way
        self._frag_parts: list[bytes] = []
        self._frag_size = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """The messages completed by ``data``, in order: ``(opcode, payload)``; TEXT and BINARY
        whole (reassembled from continuation frames, payload not decoded), PING, PONG and CLOSE
        as they arrive (also in the middle of a fragmented message). Raises FrameError, whose
        ``messages`` are those completed before the fault."""
        out: list[tuple[int, bytes]] = []
        try:
            return self._feed(data, out)
        except FrameError as exc:
            exc.messages = out
            raise

    def _feed(self, data: bytes, out: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        if self._need and self._have + len(data) < self._need:  # still not a whole frame
            self._chunks.append(bytes(data))
            self._have += len(data)
            return []
        if self._chunks:
            self._chunks.append(bytes(data))
            buf = b"".join(self._chunks)
        else:
            buf = bytes(data)
        pos, end, need = 0, len(buf), 0
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                (length,) = _U16.unpack_from(buf, pos + 2)
                head = 4
                if length < 126:
                    raise FrameError(1002, f"a {length}-byte payload length encoded in 2 bytes")
            elif length == 127:
                if end - pos < 10:
                    break
                (length,) = _U64.unpack_from(buf, pos + 2)
                head = 10
                if length >> 63:
                    raise FrameError(1002, "a payload length with its most significant bit set")
                if length < 1 << 16:
                    raise FrameError(1002, f"a {length}-byte payload length encoded in 8 bytes")
            self._check_header(b0, b1, length)  # before the payload is buffered
            if b1 & 0x80:
                head += 4
            if end - pos < head + length:
                need = head + length
                break
            start = pos + head
            payload = buf[start : start + length]
            if b1 & 0x80:
                payload = _unmask(payload, buf[start - 4 : start])
            pos = start + length
            opcode = b0 & 0x0F
            if opcode & 0x8:  # control
                out.append((opcode, payload))
            elif b0 & 0x80:  # FIN
                if opcode == OP_CONT:
                    self._frag_parts.append(payload)
                    out.append((self._frag_opcode, b"".join(self._frag_parts)))  # type: ignore[arg-type]
                    self._frag_opcode, self._frag_parts, self._frag_size = None, [], 0
                else:
                    out.append((opcode, payload))
            else:  # a fragment: the first one, or a middle one
                if opcode != OP_CONT:
                    self._frag_opcode = opcode
                self._frag_parts.append(payload)
                self._frag_size += length
        rest = buf[pos:] if pos else buf
        self._chunks = [rest] if rest else []
        self._have, self._need = len(rest), need
        return out

    def _check_header(self, b0: int, b1: int, length: int) -> None:
        if b0 & 0x70:
            raise FrameError(1002, "RSV bits set, but no extension was negotiated")
        if bool(b1 & 0x80) != self.masked:
            raise FrameError(1002, "an unmasked frame from a client" if self.masked
                             else "a masked frame from a server")
        opcode = b0 & 0x0F
        if opcode in _CONTROL_OPCODES:
            if not b0 & 0x80:
                raise FrameError(1002, f"a fragmented control frame (opcode 0x{opcode:x})")
            if length > MAX_CONTROL_PAYLOAD:
                raise FrameError(1002, f"a {length}-byte control frame (at most {MAX_CONTROL_PAYLOAD})")
            return
        if opcode == OP_CONT:
            if self._frag_opcode is None:
                raise FrameError(1002, "a continuation frame with no message to continue")
            size = self._frag_size + length
        elif opcode in _DATA_OPCODES:
            if self._frag_opcode is not None:
                raise FrameError(1002, "a new data frame while a fragmented message is open")
            size = length
        else:
            raise FrameError(1002, f"unknown opcode 0x{opcode:x}")
        if size > self.max_message_bytes:
            raise FrameError(1009, f"a message of over {size} bytes (at most {self.max_message_bytes})")


def encode_frame(opcode: int, payload: bytes, *, mask: bool) -> bytes:
    """One whole frame (FIN set) of ``opcode`` carrying ``payload``; ``mask``: with a fresh
    random masking key, as a client's frames must be (a server's must not)."""
    n = len(payload)
    b0 = 0x80 | opcode
    m = 0x80 if mask else 0
    if n < 126:
        head = bytes((b0, m | n))
    elif n < 1 << 16:
        head = bytes((b0, m | 126)) + _U16.pack(n)
    else:
        head = bytes((b0, m | 127)) + _U64.pack(n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + _unmask(payload, key)


def close_payload(code: int, reason: str = "") -> bytes:
    """A CLOSE frame's payload: ``code`` and ``reason`` (UTF-8, cut at a character boundary to
    fit the 125 bytes of a control frame)."""
    raw = reason.encode()[: MAX_CONTROL_PAYLOAD - 2].decode(errors="ignore").encode()
    return _U16.pack(code) + raw


def _valid_close_code(code: int) -> bool:
    # RFC 6455 §7.4 and the IANA registry: 1004-1006 and 1015 are never sent on the wire.
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """A CLOSE frame's ``(code, reason)``; ``(None, "")`` for an empty payload. Raises
    FrameError: 1002 for a 1-byte payload or a code that may not be sent, 1007 for a reason
    that is not UTF-8."""
    if not payload:
        return None, ""
    if len(payload) < 2:
        raise FrameError(1002, "a 1-byte close payload")
    (code,) = _U16.unpack_from(payload)
    if not _valid_close_code(code):
        raise FrameError(1002, f"close code {code} may not be sent")
    try:
        reason = bytes(payload[2:]).decode()
    except UnicodeDecodeError:
        raise FrameError(1007, "a close reason that is not UTF-8") from None
    return code, reason

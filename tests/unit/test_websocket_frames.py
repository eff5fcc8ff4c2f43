"""The WebSocket frame codec (kachery_node/transport/websocket_frames.py): what RFC 6455 §5 asks of
a reader, as a client reads a server (unmasked frames) and as the hub's relay reads clients
(masked, with a size limit), and fuzzing: any split of a valid stream gives the same messages; any bytes give
messages or a FrameError, never another exception."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kachery_node.transport.websocket_frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    MessageReader,
    close_payload,
    encode_frame,
    parse_close,
)


def raw_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = False, rsv: int = 0,
              length_bytes: int | None = None) -> bytes:
    """A frame built by hand (for frames encode_frame will not make: fragments, RSV, odd lengths)."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | rsv << 4 | opcode
    m = 0x80 if mask else 0
    size = length_bytes if length_bytes is not None else (0 if n < 126 else 2 if n < 1 << 16 else 8)
    if size == 0:
        head = bytes((b0, m | n))
    elif size == 2:
        head = bytes((b0, m | 126)) + struct.pack(">H", n)
    else:
        head = bytes((b0, m | 127)) + struct.pack(">Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


SERVER_LIMIT = 4096  # the server side's max_message_bytes in the refusal table below


def feed_all(reader: MessageReader, *chunks: bytes) -> list[tuple[int, bytes]]:
    out = []
    for chunk in chunks:
        out += reader.feed(chunk)
    return out


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
@pytest.mark.parametrize("mask", [False, True])
def test_a_frame_round_trips_at_every_length_encoding(size, mask):
    payload = os.urandom(size)
    frame = encode_frame(OP_BINARY, payload, mask=mask)
    assert frame[0] == 0x82 and bool(frame[1] & 0x80) == mask
    assert MessageReader(masked=mask, max_message_bytes=1 << 20).feed(frame) == [(OP_BINARY, payload)]


def test_masking_uses_a_fresh_key_and_is_the_xor_the_rfc_describes():
    payload = b"Hello"
    a, b = encode_frame(OP_TEXT, payload, mask=True), encode_frame(OP_TEXT, payload, mask=True)
    assert a[2:6] != b[2:6]  # a fresh key each frame (a 2^-32 chance of a false failure)
    key = a[2:6]
    assert a[6:] == bytes(c ^ key[i % 4] for i, c in enumerate(payload))
    # RFC 6455 §5.7's example: a masked "Hello" with key 37 fa 21 3d
    rfc = bytes.fromhex("818537fa213d7f9f4d5158")
    assert MessageReader(masked=True, max_message_bytes=100).feed(rfc) == [(OP_TEXT, b"Hello")]


def test_fragments_are_reassembled_with_control_frames_between_them():
    r = MessageReader(masked=False, max_message_bytes=100)
    stream = (raw_frame(OP_TEXT, b"Hel", fin=False) + raw_frame(OP_PING, b"p")
              + raw_frame(OP_CONT, b"l", fin=False) + raw_frame(OP_CONT, b"o") + raw_frame(OP_PONG, b""))
    assert r.feed(stream) == [(OP_PING, b"p"), (OP_TEXT, b"Hello"), (OP_PONG, b"")]
    assert r.feed(raw_frame(OP_BINARY, b"next")) == [(OP_BINARY, b"next")]


@pytest.mark.parametrize("stream, code", [
    (raw_frame(OP_BINARY, b"x", mask=True), 1002),  # a server's frame masked
    (raw_frame(OP_BINARY, b"x", rsv=4), 1002),  # RSV1 without permessage-deflate
    (raw_frame(OP_BINARY, b"x", rsv=1), 1002),
    (raw_frame(0x3, b"x"), 1002),  # reserved data opcode
    (raw_frame(0xB, b"x"), 1002),  # reserved control opcode
    (raw_frame(OP_PING, b"x", fin=False), 1002),  # fragmented control frame
    (raw_frame(OP_PING, b"x" * 126), 1002),  # control frame over 125 bytes
    (raw_frame(OP_CONT, b"x"), 1002),  # continuation of nothing
    (raw_frame(OP_TEXT, b"a", fin=False) + raw_frame(OP_BINARY, b"b"), 1002),  # a new message inside one
    (raw_frame(OP_BINARY, b"x" * 101), 1009),  # over max_message_bytes
    (raw_frame(OP_TEXT, b"x" * 60, fin=False) + raw_frame(OP_CONT, b"x" * 41), 1009),  # over it in parts
    (raw_frame(OP_BINARY, b"x" * 5, length_bytes=2), 1002),  # a length not minimally encoded
    (raw_frame(OP_BINARY, b"x" * 200, length_bytes=8), 1002),
    (bytes((0x82, 0x7F)) + struct.pack(">Q", 1 << 63), 1002),  # 64-bit length with its top bit set
], ids=lambda value: str(value) if isinstance(value, int) else "stream")  # masked: random bytes
def test_protocol_violations_raise_frame_error_with_the_close_code(stream, code):
    with pytest.raises(FrameError) as info:
        MessageReader(masked=False, max_message_bytes=100).feed(stream)
    assert info.value.close_code == code


@pytest.mark.parametrize("stream, code", [
    (raw_frame(OP_BINARY, b"x"), 1002),  # a client's frame must be masked
    (raw_frame(OP_BINARY, b"x", mask=True, rsv=4), 1002),  # RSV1: no extension was negotiated
    (raw_frame(OP_BINARY, b"x", mask=True, rsv=1), 1002),
    (raw_frame(0x3, b"x", mask=True), 1002),  # reserved data opcode
    (raw_frame(0xB, b"x", mask=True), 1002),  # reserved control opcode
    (raw_frame(OP_PING, b"x", mask=True, fin=False), 1002),  # a fragmented control frame
    (raw_frame(OP_PING, b"x" * 126, mask=True), 1002),  # a control frame over 125 bytes
    (raw_frame(OP_CONT, b"x", mask=True), 1002),  # a continuation of nothing
    (raw_frame(OP_BINARY, b"x", mask=True, fin=False) + raw_frame(OP_TEXT, b"y", mask=True), 1002),
    (bytes((0x82, 0x80 | 126)) + (5).to_bytes(2, "big") + b"\0" * 9, 1002),  # length not minimal
    (raw_frame(OP_BINARY, b"x" * (SERVER_LIMIT + 1), mask=True), 1009),
    (raw_frame(OP_BINARY, b"x" * 3000, mask=True, fin=False) + raw_frame(OP_CONT, b"x" * 3000, mask=True),
     1009),
], ids=["unmasked", "rsv1", "rsv3", "data-opcode-3", "control-opcode-b", "fragmented-ping",
        "long-ping", "lone-continuation", "message-in-message", "non-minimal-length", "too-big",
        "too-big-in-fragments"])  # (ids: the frames' masking keys are random)
def test_what_a_server_reading_clients_refuses_and_with_which_close_code(stream, code):
    """The reader as the hub's relay uses it (masked client frames, a size limit)."""
    with pytest.raises(FrameError) as info:
        MessageReader(masked=True, max_message_bytes=SERVER_LIMIT).feed(stream)
    assert info.value.close_code == code


def test_a_frame_error_carries_the_messages_the_same_bytes_completed_before_the_fault():
    """Good messages and a malformed frame in one read: the error hands back the good ones (the
    reader's users handle them before closing), and nothing after the fault."""
    r = MessageReader(masked=True, max_message_bytes=SERVER_LIMIT)
    r.feed(raw_frame(OP_TEXT, b"a", mask=True, fin=False))  # a message begun in an earlier read
    stream = (raw_frame(OP_CONT, b"b", mask=True) + raw_frame(OP_PING, b"p", mask=True)
              + raw_frame(OP_BINARY, b"c", mask=True) + raw_frame(OP_BINARY, b"x")  # unmasked
              + raw_frame(OP_BINARY, b"after", mask=True))
    with pytest.raises(FrameError) as info:
        r.feed(stream)
    assert info.value.close_code == 1002
    assert info.value.messages == [(OP_TEXT, b"ab"), (OP_PING, b"p"), (OP_BINARY, b"c")]
    with pytest.raises(FrameError) as info:  # a fault in the first frame: nothing before it
        MessageReader(masked=True, max_message_bytes=100).feed(raw_frame(OP_BINARY, b"x" * 101, mask=True))
    assert info.value.close_code == 1009 and info.value.messages == []


def test_a_client_frame_must_be_masked():
    with pytest.raises(FrameError) as info:
        MessageReader(masked=True, max_message_bytes=100).feed(encode_frame(OP_TEXT, b"x", mask=False))
    assert info.value.close_code == 1002


def test_the_size_limit_is_checked_from_the_header_before_the_payload_comes():
    r = MessageReader(masked=False, max_message_bytes=16 << 20)
    with pytest.raises(FrameError) as info:
        r.feed(bytes((0x82, 0x7F)) + struct.pack(">Q", (16 << 20) + 1))  # the header alone
    assert info.value.close_code == 1009


def test_a_large_message_in_many_small_reads_is_whole_and_the_reader_buffers_no_more():
    payload = os.urandom(3 << 20)
    frame = encode_frame(OP_BINARY, payload, mask=False) + encode_frame(OP_TEXT, b"[]", mask=False)
    r = MessageReader(masked=False, max_message_bytes=4 << 20)
    out = feed_all(r, *(frame[i : i + 65536] for i in range(0, len(frame), 65536)))
    assert out == [(OP_BINARY, payload), (OP_TEXT, b"[]")]
    assert r.feed(b"") == []


def test_close_payloads():
    assert parse_close(close_payload(1000)) == (1000, "")
    assert parse_close(close_payload(4008, "slow consumer")) == (4008, "slow consumer")
    assert parse_close(b"") == (None, "")
    long = close_payload(1001, "é" * 100)  # cut to fit a control frame, at a character boundary
    assert len(long) <= 125 and parse_close(long) == (1001, "é" * 61)
    for bad, code in ((b"\x03", 1002), (struct.pack(">H", 999), 1002), (struct.pack(">H", 1005), 1002),
                      (struct.pack(">H", 1006), 1002), (struct.pack(">H", 2000), 1002),
                      (struct.pack(">H", 5000), 1002), (struct.pack(">H", 1000) + b"\xff", 1007)):
        with pytest.raises(FrameError) as info:
            parse_close(bad)
        assert info.value.close_code == code, bad


# ---------------------------------------------------------------------------------- fuzzing
_messages = st.lists(st.tuples(st.sampled_from([OP_TEXT, OP_BINARY, OP_PING, OP_PONG]),
                               st.binary(max_size=300), st.integers(1, 4)), max_size=12)


def _stream_of(messages, masked: bool) -> tuple[bytes, list[tuple[int, bytes]]]:
    """Frames for ``messages`` (data messages cut into ``parts`` fragments) and what a reader
    must return for them."""
    out, expected = [], []
    for opcode, payload, parts in messages:
        if opcode in (OP_PING, OP_PONG):
            payload = payload[:125]
            out.append(raw_frame(opcode, payload, mask=masked))
            expected.append((opcode, payload))
            continue
        cuts = sorted({len(payload) * k // parts for k in range(parts)} | {len(payload)})
        pieces = [payload[a:b] for a, b in zip([0, *cuts], cuts, strict=False)] or [b""]
        for i, piece in enumerate(pieces):
            out.append(raw_frame(opcode if i == 0 else OP_CONT, piece, fin=i == len(pieces) - 1, mask=masked))
        expected.append((opcode, payload))
    return b"".join(out), expected


@settings(max_examples=300, deadline=None)
@given(_messages, st.booleans(), st.lists(st.integers(0, 2000), max_size=20))
def test_any_split_of_a_valid_stream_gives_the_same_messages(messages, masked, cuts):
    stream, expected = _stream_of(messages, masked)
    points = sorted({min(c, len(stream)) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    r = MessageReader(masked=masked, max_message_bytes=10_000)
    assert feed_all(r, *chunks) == expected


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400), st.booleans(), st.lists(st.integers(0, 400), max_size=5))
def test_random_bytes_give_messages_or_a_frame_error_and_nothing_else(data, masked, cuts):
    points = sorted({min(c, len(data)) for c in cuts})
    r = MessageReader(masked=masked, max_message_bytes=200)

    def check(messages: list) -> None:
        for opcode, payload in messages:
            assert opcode in (OP_TEXT, OP_BINARY, OP_PING, OP_PONG, OP_CLOSE)
            assert isinstance(payload, bytes)
            assert len(payload) <= (125 if opcode & 8 else 200)

    try:
        for a, b in zip([0, *points], [*points, len(data)], strict=True):
            check(r.feed(data[a:b]))
    except FrameError as exc:
        assert exc.close_code in (1002, 1007, 1009)
        check(exc.messages)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=500), st.lists(st.integers(0, 500), max_size=6), st.integers(0, 600))
def test_a_server_reader_with_any_limit_gives_messages_or_a_frame_error(data, cuts, limit):
    points = sorted({c % (len(data) + 1) for c in cuts})
    r = MessageReader(masked=True, max_message_bytes=limit)
    try:
        for opcode, payload in feed_all(r, *(data[a:b] for a, b in zip([0, *points], [*points, len(data)],
                                                                        strict=True))):
            assert opcode in (OP_TEXT, OP_BINARY, OP_PING, OP_PONG, OP_CLOSE)
            assert len(payload) <= (125 if opcode & 0x8 else limit)
    except FrameError as exc:
        assert exc.close_code in (1002, 1009)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=125))
def test_parse_close_gives_a_close_or_a_frame_error(payload):
    try:
        code, reason = parse_close(payload)
    except FrameError as exc:
        assert exc.close_code in (1002, 1007)
    else:
        assert (code is None) == (not payload) and isinstance(reason, str)

"""MessageReader (kachery_node/transport/websocket_frames.py) as the hub's relay reads clients
with it (masked frames, a size limit): what RFC 6455 §5 asks of a server, and a fuzz of splits
and of random bytes."""

from __future__ import annotations

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

LIMIT = 4096


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0) -> bytes:
    raw = bytearray(encode_frame(opcode, payload, mask=mask))
    if not fin:
        raw[0] &= 0x7F
    raw[0] |= rsv << 4
    return bytes(raw)


def read_all(stream: bytes, cuts: list[int] = (), limit: int = LIMIT) -> list[tuple[int, bytes]]:
    """``stream`` fed to a server's reader in the pieces ``cuts`` make."""
    reader = MessageReader(masked=True, max_message_bytes=limit)
    out, last = [], 0
    for cut in sorted({c % (len(stream) + 1) for c in cuts}) + [len(stream)]:
        out += reader.feed(stream[last:cut])
        last = cut
    return out


def test_one_frame_at_each_length_encoding_is_unmasked():
    for size in (0, 1, 125, 126, 65535, 65536, 100_000):
        payload = bytes(i % 251 for i in range(size))
        assert read_all(frame(OP_BINARY, payload), limit=1 << 20) == [(OP_BINARY, payload)]


def test_a_fragmented_message_comes_whole_with_control_frames_in_their_place():
    stream = (frame(OP_TEXT, b'{"a":', fin=False) + frame(OP_PING, b"p1") + frame(OP_CONT, b' 1', fin=False)
              + frame(OP_PONG, b"") + frame(OP_CONT, b"}") + frame(OP_CLOSE, close_payload(1000, "bye")))
    assert read_all(stream) == [(OP_PING, b"p1"), (OP_PONG, b""), (OP_TEXT, b'{"a": 1}'),
                                (OP_CLOSE, b"\x03\xe8bye")]


@pytest.mark.parametrize("stream, code", [
    (frame(OP_BINARY, b"x", mask=False), 1002),  # a client's frame must be masked
    (frame(OP_BINARY, b"x", rsv=4), 1002),  # RSV1: no extension was negotiated
    (frame(OP_BINARY, b"x", rsv=1), 1002),
    (frame(0x3, b"x"), 1002),  # reserved data opcode
    (frame(0xB, b"x"), 1002),  # reserved control opcode
    (frame(OP_PING, b"x", fin=False), 1002),  # a fragmented control frame
    (frame(OP_PING, b"x" * 126), 1002),  # a control frame over 125 bytes
    (frame(OP_CONT, b"x"), 1002),  # a continuation of nothing
    (frame(OP_BINARY, b"x", fin=False) + frame(OP_TEXT, b"y"), 1002),  # a new message inside one
    (bytes((0x82, 0x80 | 126)) + (5).to_bytes(2, "big") + b"\0" * 9, 1002),  # length not minimal
    (frame(OP_BINARY, b"x" * (LIMIT + 1)), 1009),
    (frame(OP_BINARY, b"x" * 3000, fin=False) + frame(OP_CONT, b"x" * 3000), 1009),
], ids=["unmasked", "rsv1", "rsv3", "data-opcode-3", "control-opcode-b", "fragmented-ping",
        "long-ping", "lone-continuation", "message-in-message", "non-minimal-length", "too-big",
        "too-big-in-fragments"])  # (ids: the frames' masking keys are random)
def test_what_the_reader_refuses_and_with_which_close_code(stream, code):
    with pytest.raises(FrameError) as info:
        read_all(stream)
    assert info.value.close_code == code


def test_the_size_is_checked_from_the_header_before_the_payload_arrives():
    reader = MessageReader(masked=True, max_message_bytes=LIMIT)
    with pytest.raises(FrameError) as info:
        reader.feed(bytes((0x82, 0x80 | 127)) + (1 << 40).to_bytes(8, "big"))
    assert info.value.close_code == 1009


def test_close_payloads_are_parsed_and_checked():
    assert parse_close(b"") == (None, "")
    assert parse_close(close_payload(4008, "slow consumer")) == (4008, "slow consumer")
    for bad, code in ((b"\x03", 1002), ((1005).to_bytes(2, "big"), 1002), ((999).to_bytes(2, "big"), 1002),
                      ((2000).to_bytes(2, "big"), 1002), ((1000).to_bytes(2, "big") + b"\xff", 1007)):
        with pytest.raises(FrameError) as info:
            parse_close(bad)
        assert info.value.close_code == code, bad


_payloads = st.binary(max_size=300)
_messages = st.lists(st.one_of(
    st.tuples(st.sampled_from([OP_TEXT, OP_BINARY]), st.lists(_payloads, min_size=1, max_size=4)),
    st.tuples(st.sampled_from([OP_PING, OP_PONG]), st.binary(max_size=125).map(lambda p: [p]))),
    max_size=12)


def encode(messages) -> tuple[bytes, list[tuple[int, bytes]]]:
    """A client's frames for ``messages`` (data messages in fragments), and what a reader should
    make of them."""
    stream, expected = b"", []
    for opcode, parts in messages:
        if opcode & 0x8:
            stream += frame(opcode, parts[0])
        else:
            for i, part in enumerate(parts):
                stream += frame(opcode if i == 0 else OP_CONT, part, fin=i == len(parts) - 1)
        expected.append((opcode, b"".join(parts)))
    return stream, expected


@settings(max_examples=300, deadline=None)
@given(_messages, st.lists(st.integers(0, 10_000), max_size=30))
def test_any_split_of_a_valid_stream_gives_the_same_messages(messages, cuts):
    stream, expected = encode(messages)
    assert read_all(stream, cuts, limit=1 << 20) == expected


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=500), st.lists(st.integers(0, 500), max_size=6), st.integers(0, 600))
def test_random_bytes_give_messages_or_a_frame_error_and_nothing_else(data, cuts, limit):
    try:
        for opcode, payload in read_all(data, cuts, limit=limit):
            assert opcode in (OP_TEXT, OP_BINARY, OP_PING, OP_PONG, OP_CLOSE)
            assert len(payload) <= (125 if opcode & 0x8 else limit)
    except FrameError as exc:
        assert exc.close_code in (1002, 1009)

"""Signed node messages (v2): bound to channel, band and time; body and attachment signed
together; forgeries, replays and version 1 messages refused."""

from __future__ import annotations

import orjson
import pytest

from kachery_node.errors import LocalProtocolError
from kachery_node.identity import Keypair
from kachery_node.protocol.node_messages import (
    HEADER_BYTES,
    MAX_ENVELOPE_BYTES,
    UNSIGNED_PUSH,
    EnvelopeError,
    MessageTooLargeError,
    ReplayGuard,
    open_envelope,
    seal,
    seal_unsigned_push,
)

NOW = 1_700_000_000_000


@pytest.fixture
def key():
    return Keypair.generate()


def test_round_trip(key):
    data = seal(key, channel="lab", band="request-files", body={"type": "requestFile", "sha1": "ab" * 20},
                now_ms=NOW)
    assert data[0] == 2 and data[1:33] == bytes.fromhex(key.public_hex)
    env = open_envelope(data, channel="lab", band="request-files", now_ms=NOW)
    assert env.sender == key.public_hex and env.type == "requestFile" and env.body["sha1"] == "ab" * 20
    assert env.attachment is None


def test_an_attachment_is_signed_with_the_body_and_carried_as_it_is(key):
    lines = b'{"n":0}\tsig\n{"n":1}\t\n' + bytes(range(256))  # any bytes, LF and TAB included
    data = seal(key, channel="lab", band="provide-feeds", body={"type": "newSubfeedMessages"},
                now_ms=NOW, attachment=lines)
    assert data.endswith(b"\n" + lines)  # after the body, not escaped into it
    env = open_envelope(data, channel="lab", band="provide-feeds", now_ms=NOW)
    assert env.attachment == lines and env.body["type"] == "newSubfeedMessages"
    for tampered in (data[:-1] + bytes([data[-1] ^ 1]), data[:-1], data + b"x"):
        with pytest.raises(EnvelopeError, match="bad signature"):
            open_envelope(tampered, channel="lab", band="provide-feeds", now_ms=NOW)
    # An empty attachment is written as none.
    assert seal(key, channel="lab", band="b", body={"type": "x"}, now_ms=NOW, nonce="n" * 24,
                attachment=b"") == seal(key, channel="lab", band="b", body={"type": "x"}, now_ms=NOW,
                                        nonce="n" * 24)


def test_refusals(key):
    data = seal(key, channel="lab", band="request-files", body={"type": "x", "v": 1}, now_ms=NOW)
    header, signed = data[:HEADER_BYTES], data[HEADER_BYTES:]
    other = Keypair.generate()
    cases = {
        "tampered body": header + signed.replace(b'"v":1', b'"v":2'),
        "other sender": data[:1] + bytes.fromhex(other.public_hex) + data[33:],
        "bad signature": data[:33] + bytes(64) + signed,
        "header only": header,
        "truncated": data[:50],
        "huge": b"\x02" + bytes(96) + b"x" * (MAX_ENVELOPE_BYTES + 1),
        "empty": b"",
        "not bytes": "text",
        "unknown version": b"\x03" + data[1:],
    }
    for bad in cases.values():
        with pytest.raises(EnvelopeError):
            open_envelope(bad, channel="lab", band="request-files", now_ms=NOW)
    # The signature binds the channel and the band: elsewhere the message does not verify.
    with pytest.raises(EnvelopeError, match="another channel or band"):
        open_envelope(data, channel="other-lab", band="request-files", now_ms=NOW)
    with pytest.raises(EnvelopeError, match="another channel or band"):
        open_envelope(data, channel="lab", band="provide-files", now_ms=NOW)
    with pytest.raises(EnvelopeError):  # "la" + "b..." is not "lab" + "...": the NULs separate them
        open_envelope(data, channel="la", band="brequest-files", now_ms=NOW)
    old = seal(key, channel="lab", band="b", body={"type": "x"}, now_ms=NOW - 120_000)
    with pytest.raises(EnvelopeError, match="stale"):
        open_envelope(old, channel="lab", band="b", now_ms=NOW)


def test_a_version_1_message_is_refused_with_an_error_that_says_so(key):
    v1 = (b'{"band":"b","channel":"lab","nonce":"0123456789abcdef01234567","time_ms":1700000000000,'
          b'"type":"x"}\t' + key.public_hex.encode() + b"\t" + b"0" * 128)  # as v1 wrote them
    with pytest.raises(EnvelopeError, match="version 1 node message"):
        open_envelope(v1, channel="lab", band="b", now_ms=NOW)


def test_too_large_to_seal_is_the_callers_fault(key):
    with pytest.raises(MessageTooLargeError):
        seal(key, channel="lab", band="b", body={"type": "x"}, now_ms=NOW,
             attachment=b"x" * MAX_ENVELOPE_BYTES)


def test_replay_guard(key):
    guard = ReplayGuard()
    data = seal(key, channel="lab", band="b", body={"type": "x"}, now_ms=NOW)
    guard.check(open_envelope(data, channel="lab", band="b", now_ms=NOW), now_ms=NOW)
    with pytest.raises(EnvelopeError, match="replayed"):
        guard.check(open_envelope(data, channel="lab", band="b", now_ms=NOW), now_ms=NOW)
    fresh = seal(key, channel="lab", band="b", body={"type": "x"}, now_ms=NOW)
    guard.check(open_envelope(fresh, channel="lab", band="b", now_ms=NOW), now_ms=NOW)
    # Past the window the pair is forgotten (and the message too old to open anyway).
    guard.check(open_envelope(data, channel="lab", band="b", now_ms=NOW), now_ms=NOW + 120_001)


PUSH_BODY = {"type": "newSubfeedMessages", "feed_id": "ab" * 32, "subfeed_hash": "cd" * 20}
LINES = b'{"n":0}\tsig\n'


def test_an_unsigned_push_opens_with_the_publisher_the_service_names(key):
    data = seal_unsigned_push(band="provide-feeds", body=PUSH_BODY, attachment=LINES)
    assert data[0] == UNSIGNED_PUSH == 3 and data.endswith(b"\n" + LINES)
    assert len(data) < len(seal(key, channel="lab", band="provide-feeds", body=PUSH_BODY, now_ms=NOW,
                                attachment=LINES)) - 64  # no key, signature, time or nonce
    env = open_envelope(data, channel="lab", band="provide-feeds", now_ms=NOW, publisher=key.public_hex)
    assert env.sender == key.public_hex and not env.signed
    assert env.body == PUSH_BODY and env.attachment == LINES
    # No nonce to remember: the same push again passes the guard (importing it again changes
    # nothing), as a signed one does not.
    guard = ReplayGuard()
    guard.check(env, now_ms=NOW)
    guard.check(env, now_ms=NOW)
    signed = open_envelope(seal(key, channel="lab", band="provide-feeds", body=PUSH_BODY, now_ms=NOW,
                                attachment=LINES), channel="lab", band="provide-feeds", now_ms=NOW)
    assert signed.signed


def test_only_a_push_may_go_unsigned(key):
    """Every other message, or a push on another band, without a signature is refused, by the
    sender and by the receiver (a forged unsigned subscription, request or checkpoint)."""
    for band, body in [("request-feeds", {"type": "subscribeToSubfeed", "feed_id": "ab" * 32,
                                          "subfeed_hash": "cd" * 20, "position": 0}),
                       ("provide-feeds", {"type": "subfeedUploaded", "count": 1}),
                       ("provide-feeds", {"type": "subfeedCheckpoint"}),
                       ("request-files", {"type": "newSubfeedMessages"}),
                       ("provide-files", {"type": "uploadStatus"})]:
        with pytest.raises(LocalProtocolError, match="always signed"):
            seal_unsigned_push(band=band, body=body, attachment=LINES)
        forged = bytes([UNSIGNED_PUSH]) + orjson.dumps(body) + b"\n" + LINES
        with pytest.raises(EnvelopeError, match="only newSubfeedMessages on provide-feeds"):
            open_envelope(forged, channel="lab", band=band, now_ms=NOW, publisher=key.public_hex)
    data = seal_unsigned_push(band="provide-feeds", body=PUSH_BODY, attachment=LINES)
    with pytest.raises(EnvelopeError, match="only newSubfeedMessages on provide-feeds"):
        open_envelope(data, channel="lab", band="request-feeds", now_ms=NOW, publisher=key.public_hex)


def test_unsigned_push_refusals(key):
    data = seal_unsigned_push(band="provide-feeds", body=PUSH_BODY, attachment=LINES)
    # A service that does not name the publisher: nobody vouches for the sender.
    for publisher in (None, "", "AB" * 32, "ab" * 31):
        with pytest.raises(EnvelopeError, match="did not name"):
            open_envelope(data, channel="lab", band="provide-feeds", now_ms=NOW, publisher=publisher)
    cases = {
        "no attachment": bytes([UNSIGNED_PUSH]) + orjson.dumps(PUSH_BODY),
        "empty attachment": bytes([UNSIGNED_PUSH]) + orjson.dumps(PUSH_BODY) + b"\n",
        "not JSON": bytes([UNSIGNED_PUSH]) + b"{nope\n" + LINES,
        "not an object": bytes([UNSIGNED_PUSH]) + b"[1]\n" + LINES,
        "too large": bytes([UNSIGNED_PUSH]) + orjson.dumps(PUSH_BODY) + b"\n" + b"x" * MAX_ENVELOPE_BYTES,
    }
    for bad in cases.values():
        with pytest.raises(EnvelopeError):
            open_envelope(bad, channel="lab", band="provide-feeds", now_ms=NOW, publisher=key.public_hex)
    with pytest.raises(LocalProtocolError):
        seal_unsigned_push(band="provide-feeds", body=PUSH_BODY, attachment=b"")
    with pytest.raises(MessageTooLargeError):
        seal_unsigned_push(band="provide-feeds", body=PUSH_BODY, attachment=b"x" * MAX_ENVELOPE_BYTES)

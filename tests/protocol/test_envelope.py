"""Signed pub-sub envelopes: bound to channel, band and time; forgeries and replays refused."""

from __future__ import annotations

import pytest

from kachery_node.identity import Keypair
from kachery_node.protocol.node_messages import EnvelopeError, ReplayGuard, open_envelope, seal

NOW = 1_700_000_000_000


@pytest.fixture
def key():
    return Keypair.generate()


def test_round_trip(key):
    data = seal(key, channel="lab", band="request-files", body={"type": "requestFile", "sha1": "ab" * 20},
                now_ms=NOW)
    env = open_envelope(data, channel="lab", band="request-files", now_ms=NOW)
    assert env.sender == key.public_hex and env.type == "requestFile" and env.body["sha1"] == "ab" * 20


def test_refusals(key):
    data = seal(key, channel="lab", band="request-files", body={"type": "x", "v": 1}, now_ms=NOW)
    body, sender, sig = data.rsplit(b"\t", 2)
    other = Keypair.generate()
    cases = {
        "tampered body": body.replace(b'"v":1', b'"v":2') + b"\t" + sender + b"\t" + sig,
        "other sender": body + b"\t" + other.public_hex.encode() + b"\t" + sig,
        "bad signature": body + b"\t" + sender + b"\t" + b"0" * 128,
        "truncated": body,
        "not hex": body + b"\t" + b"z" * 64 + b"\t" + sig,
        "huge": b"x" * 400_000,
    }
    for _name, bad in cases.items():
        with pytest.raises(EnvelopeError):
            open_envelope(bad, channel="lab", band="request-files", now_ms=NOW)
    with pytest.raises(EnvelopeError, match="arrived on"):
        open_envelope(data, channel="other-lab", band="request-files", now_ms=NOW)
    with pytest.raises(EnvelopeError, match="arrived on"):
        open_envelope(data, channel="lab", band="provide-files", now_ms=NOW)
    old = seal(key, channel="lab", band="b", body={"type": "x"}, now_ms=NOW - 120_000)
    with pytest.raises(EnvelopeError, match="stale"):
        open_envelope(old, channel="lab", band="b", now_ms=NOW)


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

"""protocol/signing.py: the one signing core under node messages and hub requests."""

from __future__ import annotations

from kachery_node.identity import Keypair
from kachery_node.protocol import hub_requests, node_messages, signing


def test_signatures_are_bound_to_their_context():
    key = Keypair.generate()
    sig = signing.sign(key, b"purpose-a\x00", b"data")
    assert signing.verify(key.public_hex, b"purpose-a\x00", b"data", sig)
    assert not signing.verify(key.public_hex, b"purpose-b\x00", b"data", sig)
    assert not signing.verify(key.public_hex, b"purpose-a\x00", b"datA", sig)
    # Both envelope kinds sign through it, each with its own context.
    contexts = {node_messages.CONTEXT, hub_requests.context("node"), hub_requests.context("user")}
    assert len(contexts) == 3


def test_hex_nonce_and_time_checks():
    assert signing.is_id("ab" * 32) and signing.is_id(b"ab" * 32)
    assert not signing.is_id("AB" * 32) and not signing.is_id("ab" * 31) and not signing.is_id(None)
    assert not signing.is_id("é" * 64) and not signing.is_id(b"\xff" * 64)
    assert signing.is_signature_hex("0f" * 64) and not signing.is_signature_hex("0f" * 63 + "0g")
    assert signing.is_nonce("aZ09_-xY", 8) and not signing.is_nonce("aZ09_-x", 8)
    assert not signing.is_nonce("a" * 65, 8) and not signing.is_nonce("abcd.efgh", 8)
    assert not signing.is_nonce(12345678, 1)
    assert signing.is_time_ms(0) and not signing.is_time_ms(-1) and not signing.is_time_ms(2**53)
    assert not signing.is_time_ms(True) and not signing.is_time_ms(1.0)
    assert signing.is_fresh(1000 + signing.MAX_SKEW_MS, 1000)
    assert not signing.is_fresh(1001 + signing.MAX_SKEW_MS, 1000)
    assert not signing.is_fresh(999 - signing.MAX_SKEW_MS, 1000)


def test_replay_ledger_window_and_bound():
    ledger = signing.ReplayLedger(window_ms=100, max_entries=3)
    assert ledger.record("a", "n1", now_ms=0)
    assert not ledger.record("a", "n1", now_ms=100)  # within the window: a replay
    assert ledger.record("b", "n1", now_ms=100)  # another signer's nonce is another pair
    assert ledger.record("a", "n1", now_ms=201)  # forgotten after the window
    for i in range(10):
        ledger.record("c", f"x{i}", now_ms=202)
    assert len(ledger) <= 3  # bounded whatever arrives


def test_both_envelope_kinds_share_the_skew_and_the_window():
    assert node_messages.MAX_SKEW_MS == hub_requests.MAX_SKEW_MS == signing.MAX_SKEW_MS
    assert signing.REPLAY_WINDOW_MS == 2 * signing.MAX_SKEW_MS

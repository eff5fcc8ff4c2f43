"""Checkpoints, cosignatures and the witness core (spec/witness.md), without a network."""

from __future__ import annotations

import sqlite3

import nacl.signing
import pytest

import kachery_feeds as kf
from kachery_feeds.checkpoints import (
    CheckpointError,
    WitnessedCheckpoint,
    checkpoint_from_last,
    parse_checkpoint,
    parse_cosignature_line,
    parse_witnessed_checkpoint,
    verify_cosignature,
    witnessed,
)
from kachery_node.protocol.witness import RefusalReason, WitnessRefusal
from kachery_node.storage.witness_state import Witness

KEY = nacl.signing.SigningKey(b"\x07" * 32)


@pytest.fixture
def owner(tmp_path):
    store = kf.open_store(tmp_path / "owner.db")
    feed = store.create_feed()
    sf = feed.load_subfeed("notes")
    sf.append_messages([{"i": i} for i in range(5)])
    return sf


def _clone(tmp_path, sf, name="clone.db"):
    """The owner's key restored elsewhere: it can sign a rival history."""
    with sqlite3.connect(sf._store.path) as src, sqlite3.connect(tmp_path / name) as dst:
        src.backup(dst)
    return kf.open_store(tmp_path / name).load_subfeed(sf.uri)


def test_checkpoint_is_derived_from_the_signed_last_message(owner):
    lines = owner.get_signed_messages()
    cp = checkpoint_from_last(owner.feed_id, owner.subfeed_hash, lines[-1])
    assert cp.size == 5 and parse_checkpoint(cp.text()) == cp
    assert cp.text().startswith(f"kachery-feed/{owner.feed_id}/{owner.subfeed_hash}\n5\n".encode())
    with pytest.raises(CheckpointError):
        checkpoint_from_last(owner.feed_id, "0" * 40, lines[-1])  # another subfeed's message
    for bad in [b"", cp.text()[:-1], cp.text().replace(b"\n5\n", b"\n05\n"), cp.text().upper()]:
        with pytest.raises(CheckpointError):
            parse_checkpoint(bad)


def test_cosignature_round_trip_and_tamper(owner):
    lines = owner.get_signed_messages()
    cp = checkpoint_from_last(owner.feed_id, owner.subfeed_hash, lines[-1])
    from kachery_feeds.checkpoints import cosign

    c = cosign(KEY, cp, 1_800_000_000)
    assert parse_cosignature_line(c.line()) == c and verify_cosignature(cp, c)
    other = parse_checkpoint(cp.text().replace(b"\n5\n", b"\n6\n"))
    assert not verify_cosignature(other, c)
    obj = witnessed(cp, lines[-1], [c]).encode()
    parsed = parse_witnessed_checkpoint(obj)
    assert parsed.witnesses() == [KEY.verify_key.encode().hex()]
    # a checkpoint that its last message does not vouch for is refused
    with pytest.raises(CheckpointError):
        parse_witnessed_checkpoint(obj.replace(b"\\n5\\n", b"\\n6\\n"))


def test_witness_cosigns_extensions_and_refuses_forks(tmp_path, owner):
    w = Witness(tmp_path / "w", KEY)
    first = w.cosign(owner.feed_id, owner.subfeed_hash, owner.get_signed_messages(), 100)
    assert first.checkpoint.size == 5 and w.count(owner.feed_id, owner.subfeed_hash) == 5
    clone = _clone(tmp_path, owner)
    owner.append_messages([{"i": 5}, {"i": 6}])
    # only what the witness lacks, and it must start at or before its count
    with pytest.raises(WitnessRefusal) as r:
        w.cosign(owner.feed_id, owner.subfeed_hash, owner.get_signed_messages(6), 101)
    assert r.value.reason is RefusalReason.MISSING and r.value.size == 5
    second = w.cosign(owner.feed_id, owner.subfeed_hash, owner.get_signed_messages(5), 99)
    assert second.checkpoint.size == 7 and second.cosignature.timestamp == 100  # never back in time
    # a smaller (consistent) checkpoint is not news
    with pytest.raises(WitnessRefusal) as r:
        w.cosign(owner.feed_id, owner.subfeed_hash, owner.get_signed_messages(0, 5), 102)
    assert r.value.reason is RefusalReason.STALE and r.value.size == 7
    # the restored key signs a rival message 5: a fork, proven, and then neither branch goes on
    clone.append_message({"i": "rival"})
    with pytest.raises(WitnessRefusal) as r:
        w.cosign(owner.feed_id, owner.subfeed_hash, clone.get_signed_messages(5), 103)
    assert r.value.reason is RefusalReason.FORK
    assert kf.verify_fork_proof(r.value.proof).position == 5
    owner.append_message({"i": 7})
    with pytest.raises(WitnessRefusal) as r:
        w.cosign(owner.feed_id, owner.subfeed_hash, owner.get_signed_messages(7), 104)
    assert r.value.reason is RefusalReason.FORKED
    assert [c.timestamp for c in w.history(owner.feed_id, owner.subfeed_hash)] == [100, 100]
    w.close()
    # state persists
    again = Witness(tmp_path / "w", KEY)
    assert again.latest(owner.feed_id, owner.subfeed_hash) == (7, 100)
    assert len(again.fork_proofs(owner.feed_id, owner.subfeed_hash)) == 1
    again.close()


def test_a_reported_fork_stops_cosigning_and_imports(tmp_path, owner):
    clone = _clone(tmp_path, owner)
    owner.append_message({"i": "a"})
    clone.append_message({"i": "b"})
    replica = kf.open_store(tmp_path / "replica.db").load_subfeed(owner.uri)
    replica.add_signed_messages(owner.get_signed_messages())
    with pytest.raises(kf.ForkError) as err:
        replica.add_signed_messages(clone.get_signed_messages(5))
    w = Witness(tmp_path / "w", KEY)
    w.cosign(owner.feed_id, owner.subfeed_hash, owner.get_signed_messages(0, 5), 1)
    assert w.report_fork(err.value.proof).position == 5
    with pytest.raises(WitnessRefusal) as r:
        w.cosign(owner.feed_id, owner.subfeed_hash, owner.get_signed_messages(5), 2)
    assert r.value.reason is RefusalReason.FORKED
    # a store that learnt of the fork accepts nothing past it, from either branch
    other = kf.open_store(tmp_path / "other.db").load_subfeed(owner.uri)
    other.add_signed_messages(owner.get_signed_messages(0, 5))
    other._store.record_fork_proof(err.value.proof)
    with pytest.raises(kf.ForkError):
        other.add_signed_messages(owner.get_signed_messages(5))
    assert other.get_num_local_messages() == 5
    with pytest.raises(kf.VerificationError):
        other._store.record_fork_proof(b"{}")
    w.close()


def test_merge_keeps_latest_per_witness(owner):
    from kachery_feeds.checkpoints import cosign

    lines = owner.get_signed_messages()
    cp = checkpoint_from_last(owner.feed_id, owner.subfeed_hash, lines[-1])
    k2 = nacl.signing.SigningKey(b"\x08" * 32)
    a = witnessed(cp, lines[-1], [cosign(KEY, cp, 5)])
    b = witnessed(cp, lines[-1], [cosign(KEY, cp, 9), cosign(k2, cp, 3)])
    merged = a.merged(b)
    assert isinstance(merged, WitnessedCheckpoint)
    assert sorted(c.timestamp for c in merged.cosignatures) == [3, 9]


def test_a_checkpoint_of_another_branch_is_a_fork_proof(tmp_path, owner):
    """A follower holding one branch proves the split view from a checkpoint of the other
    (kachery_node.daemon.witness_driver: the check on every subfeedCheckpoint heard)."""
    from kachery_node.daemon.witness_driver import WitnessDriver

    clone = _clone(tmp_path, owner)
    owner.append_messages([{"i": "a5"}, {"i": "a6"}])
    clone.append_message({"i": "b5"})
    follower = kf.open_store(tmp_path / "f.db")
    follower.load_subfeed(owner.uri).add_signed_messages(owner.get_signed_messages())
    driver = WitnessDriver(follower)
    last = clone.get_signed_messages(5)[0]
    theirs = witnessed(checkpoint_from_last(owner.feed_id, owner.subfeed_hash, last), last, [])
    proof = driver.conflict_with_local(theirs)
    assert proof is not None and kf.verify_fork_proof(proof).position == 5
    ours = owner.get_signed_messages(6)[0]
    same = witnessed(checkpoint_from_last(owner.feed_id, owner.subfeed_hash, ours), ours, [])
    assert driver.conflict_with_local(same) is None
    ahead = owner.get_signed_messages(4)  # a checkpoint within our copy, consistent
    prefix = witnessed(checkpoint_from_last(owner.feed_id, owner.subfeed_hash, ahead[0]), ahead[0], [])
    assert driver.conflict_with_local(prefix) is None

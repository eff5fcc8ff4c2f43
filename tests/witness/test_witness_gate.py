"""The follower's witness gate (spec/witness.md §4.4), without a network."""

from __future__ import annotations

import nacl.signing
import pytest

import kachery_feeds as kf
from kachery_feeds.checkpoints import checkpoint_from_last, cosign, witnessed
from kachery_node.protocol.witness_gate import (
    MAX_WITNESSES,
    WitnessGate,
    policy_payload,
    required_witnesses,
)

HUB = nacl.signing.SigningKey(b"\x01" * 32)
NODE = nacl.signing.SigningKey(b"\x02" * 32)
STRANGER = nacl.signing.SigningKey(b"\x03" * 32)
TRUSTED = {k.verify_key.encode().hex() for k in (HUB, NODE)}


@pytest.fixture
def owner(tmp_path):
    return kf.open_store(tmp_path / "o.db").create_feed().load_subfeed("s")


def _checkpoint(sf, size, keys):
    last = sf.get_signed_messages(size - 1, size)[0]
    cp = checkpoint_from_last(sf.feed_id, sf.subfeed_hash, last)
    return witnessed(cp, last, [cosign(k, cp, 100) for k in keys])


def test_policy_latest_wins_and_malformed_is_ignored():
    assert required_witnesses([policy_payload("a" * 40, 2), {"type": "x"}, policy_payload("a" * 40, 1),
                               {"type": "kachery-witness-policy", "subfeed": "b" * 40, "witnesses": "2"}]) \
        == {"a" * 40: 1}
    with pytest.raises(ValueError):
        policy_payload("a" * 40, MAX_WITNESSES + 1)


def test_messages_wait_for_enough_trusted_witnesses(tmp_path, owner):
    owner.append_messages([{"i": i} for i in range(5)])  # one batch: only message 4 is signed
    lines = owner.get_signed_messages()
    key = (owner.feed_id, owner.subfeed_hash)
    gate = WitnessGate()
    assert gate.admit(key, 0, lines) == lines  # no requirement: everything passes
    gate.set_required(key, 2)
    assert gate.admit(key, 0, lines) == []  # nothing witnessed yet: all wait
    # a stranger's key counts for nothing; one trusted witness is not enough
    assert not gate.on_checkpoint(_checkpoint(owner, 5, [HUB, STRANGER]), TRUSTED.__contains__)
    owner.append_message({"i": 5})
    assert gate.on_checkpoint(_checkpoint(owner, 5, [HUB, NODE]), TRUSTED.__contains__)
    admitted = gate.admit(key, 0)
    assert len(admitted) == 5 and not admitted[-1].endswith(b"\t")
    replica = kf.open_store(tmp_path / "r.db").load_subfeed(owner.uri)
    assert replica.add_signed_messages(admitted) == 5
    # message 5 came later; it waits until a checkpoint covers it
    assert gate.admit(key, 5, owner.get_signed_messages(5)) == []
    assert gate.on_checkpoint(_checkpoint(owner, 6, [HUB, NODE]), TRUSTED.__contains__)
    assert replica.add_signed_messages(gate.admit(key, 5)) == 1


def test_a_witnessed_end_inside_a_batch_takes_the_signed_copy(tmp_path, owner):
    """The checkpoint's last message is the owner's signed copy; a follower that received the
    same message unsigned (inside a longer batch) uses the checkpoint's."""
    owner.append_messages([{"i": i} for i in range(3)])
    first = owner.get_signed_messages()  # message 2 signed here
    owner.append_messages([{"i": i} for i in range(3, 6)])
    key = (owner.feed_id, owner.subfeed_hash)
    gate = WitnessGate()
    gate.set_required(key, 1)
    gate.on_checkpoint(_checkpoint(owner, 3, [HUB]), TRUSTED.__contains__)
    unsigned_copy = [line.rsplit(b"\t", 1)[0] + b"\t" for line in first]
    admitted = gate.admit(key, 0, unsigned_copy + owner.get_signed_messages(3))
    assert admitted[-1] == first[-1]
    replica = kf.open_store(tmp_path / "r.db").load_subfeed(owner.uri)
    assert replica.add_signed_messages(admitted) == 3


def test_pending_is_bounded(owner):
    for i in range(20):
        owner.append_message({"i": i})
    key = (owner.feed_id, owner.subfeed_hash)
    gate = WitnessGate(max_pending_lines=5)
    gate.set_required(key, 1)
    gate.admit(key, 0, owner.get_signed_messages())
    gate.on_checkpoint(_checkpoint(owner, 20, [HUB]), TRUSTED.__contains__)
    assert len(gate.admit(key, 0)) == 5  # the rest come again (the bucket) and pass then


def test_a_checkpoint_counts_once_its_witness_is_trusted(tmp_path, owner):
    """A checkpoint heard before its node witness's grant was known counts for nothing then;
    offered again (the follower re-reads the bucket's checkpoint while messages wait, which
    ``waiting`` tells it), it lets them in."""
    owner.append_messages([{"i": i} for i in range(3)])
    key = (owner.feed_id, owner.subfeed_hash)
    gate = WitnessGate()
    gate.set_required(key, 2)
    assert not gate.waiting(key)
    assert gate.admit(key, 0, owner.get_signed_messages()) == []
    assert gate.waiting(key)
    cp = _checkpoint(owner, 3, [HUB, NODE])
    hub_only = {HUB.verify_key.encode().hex()}
    assert not gate.on_checkpoint(cp, hub_only.__contains__)  # NODE not known as a member yet
    assert gate.admit(key, 0) == [] and gate.waiting(key)
    assert gate.on_checkpoint(cp, TRUSTED.__contains__)  # the membership now lists NODE
    replica = kf.open_store(tmp_path / "r.db").load_subfeed(owner.uri)
    assert replica.add_signed_messages(gate.admit(key, 0)) == 3
    assert not gate.waiting(key)

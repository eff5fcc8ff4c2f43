"""Key succession in the store (spec/feeds.md §9), without a network: an owner hands a feed to a
new key; a reader follows it; a superseded key's messages are refused and proven."""

from __future__ import annotations

import os

import nacl.bindings
import orjson
import pytest

import kachery_feeds as kf
from kachery_feeds.messages import build_body, message_hash, sign_hash, to_wire
from kachery_feeds.succession import KeyChain, build_record, public_key_of


@pytest.fixture
def stores(tmp_path):
    owner = kf.open_store(tmp_path / "owner.db")
    reader = kf.open_store(tmp_path / "reader.db")
    yield owner, reader, tmp_path
    owner.close()
    reader.close()


def _sync(src: kf.Subfeed, dst_store: kf.Store) -> kf.Subfeed:
    dst = dst_store.load_subfeed(src.uri)
    start = dst.get_num_local_messages()
    if src.get_num_local_messages() > start:
        dst.add_signed_messages(src.get_signed_messages(start))
    return dst


def _forge(seed: bytes, feed_id: str, sf: kf.Subfeed, n: int, prev: bytes, payload) -> bytes:
    """A message signed with ``seed`` (e.g. a leaked old key) at position ``n``."""
    body = build_body(feed_id, sf.subfeed_hash, n, prev, 1, orjson.dumps(payload))
    _pk, sk = nacl.bindings.crypto_sign_seed_keypair(seed)
    return to_wire(body, sign_hash(sk, message_hash(body)))


def _old_seed(store: kf.Store, feed_id: str) -> bytes:
    return bytes.fromhex(orjson.loads(store.export_key(feed_id))["seed"])


def test_a_rotated_feed_keeps_its_uri_and_its_reader_follows(stores):
    owner, reader, _ = stores
    sf = owner.create_feed().load_subfeed("main")
    sf.append_messages([0, 1, 2])
    replica = _sync(sf, reader)
    record = owner.rotate_key(sf.feed_id)
    assert owner.current_key(sf.feed_id) != bytes.fromhex(sf.feed_id)
    assert sf.append_message(3) == 3 and sf.append_message(4) == 4
    lines = sf.get_signed_messages(3)
    assert orjson.loads(lines[0].rsplit(b"\t", 1)[0])["succession"] == [record.decode()]
    assert b'"succession"' not in lines[1]  # carried once per subfeed
    later = owner.load_feed(sf.feed_id).load_subfeed("begun after")
    later.append_message("x")
    assert b'"succession"' in later.get_signed_messages(0)[0]
    replica = _sync(sf, reader)
    assert replica.uri == sf.uri and replica.get_messages() == [0, 1, 2, 3, 4]
    assert _sync(later, reader).get_messages() == ["x"]
    assert reader.key_succession(sf.feed_id) == [record]
    assert reader.verify().ok and owner.verify().ok
    # A reader that starts after the rotation gets the chain from the messages themselves.
    fresh = kf.open_store(stores[2] / "fresh.db")
    assert _sync(sf, fresh).get_messages() == [0, 1, 2, 3, 4]


def test_an_old_key_message_after_the_succession_is_refused_and_proven(stores):
    owner, reader, _ = stores
    sf = owner.create_feed().load_subfeed("main")
    sf.append_messages([0, 1, 2])
    old = _old_seed(owner, sf.feed_id)
    owner.rotate_key(sf.feed_id)
    sf.append_message(3)
    replica = _sync(sf, reader)
    head = message_hash(sf.get_signed_messages(3)[0].rsplit(b"\t", 1)[0])
    forged = _forge(old, sf.feed_id, sf, 4, head, "from the leaked old key")
    with pytest.raises(kf.ForkError) as info:
        replica.add_signed_messages([forged])
    assert info.value.position == 4 and replica.get_num_local_messages() == 4
    proof = info.value.proof
    assert kf.verify_fork_proof(proof) == (sf.feed_id, sf.subfeed_hash, 4)
    assert reader.get_fork_proofs() == [proof]
    assert reader.verify().ok  # the stored proof verifies too
    # Also at a position the new key already holds (a conflicting old-key branch).
    prev2 = message_hash(sf.get_signed_messages(2)[0].rsplit(b"\t", 1)[0])
    with pytest.raises(kf.ForkError):
        replica.add_signed_messages([_forge(old, sf.feed_id, sf, 3, prev2, "branch")])


def test_old_key_messages_stored_before_the_succession_arrived_are_found(stores):
    owner, reader, _ = stores
    sf = owner.create_feed().load_subfeed("main")
    sf.append_messages([0, 1, 2])
    replica = _sync(sf, reader)
    old = _old_seed(owner, sf.feed_id)
    owner.rotate_key(sf.feed_id)
    sf.append_message(3)
    # The reader saw the leaked key's message 3 first (it did not know of the succession yet).
    prev = message_hash(sf.get_signed_messages(2)[0].rsplit(b"\t", 1)[0])
    replica.add_signed_messages([_forge(old, sf.feed_id, sf, 3, prev, "early")])
    with pytest.raises(kf.ForkError) as info:
        replica.add_signed_messages(sf.get_signed_messages(3))
    assert info.value.position == 3
    assert kf.verify_fork_proof(info.value.proof).position == 3
    assert reader.key_succession(sf.feed_id) == []  # nothing of the refused range was kept


def test_a_forged_succession_is_refused_and_changes_nothing(stores):
    owner, reader, _ = stores
    sf = owner.create_feed().load_subfeed("main")
    sf.append_messages([0, 1])
    replica = _sync(sf, reader)
    thief = os.urandom(32)  # not the feed's key: signs a "succession" to itself
    last = sf.get_signed_messages(1)[0].rsplit(b"\t", 1)[0]
    record = build_record(sf.feed_id, 1, None, public_key_of(thief), None, "key",
                          {sf.subfeed_hash: (2, message_hash(last))}, 1, thief)
    with pytest.raises(kf.VerificationError, match="bad signature on succession record 1"):
        KeyChain.verify(sf.feed_id, [record])
    body = build_body(sf.feed_id, sf.subfeed_hash, 2, message_hash(last), 1, b'"mine now"', None,
                      orjson.dumps([record.decode()]))
    _pk, sk = nacl.bindings.crypto_sign_seed_keypair(thief)
    with pytest.raises(kf.VerificationError, match="succession record"):
        replica.add_signed_messages([to_wire(body, sign_hash(sk, message_hash(body)))])
    assert replica.get_num_local_messages() == 2 and reader.key_succession(sf.feed_id) == []
    assert reader.get_fork_proofs() == []
    # A recovery-signed record without a committed recovery key is refused too.
    forged = build_record(sf.feed_id, 1, None, public_key_of(thief), None, "recovery", {}, 1, thief)
    with pytest.raises(kf.VerificationError, match="none was committed"):
        KeyChain.verify(sf.feed_id, [forged])


def test_a_lost_key_is_replaced_with_the_committed_recovery_key(stores):
    owner, reader, tmp_path = stores
    sf = owner.create_feed().load_subfeed("main")
    sf.append_message(0)
    recovery = os.urandom(32)
    owner.set_recovery_key(sf.feed_id, public_key_of(recovery))
    sf.append_message(1)  # carries the commitment to readers
    replica = _sync(sf, reader)
    assert len(reader.key_succession(sf.feed_id)) == 1
    # The owner's machine and key are lost; the reader's store becomes the owner's.
    with pytest.raises(kf.NotWriteableError, match="not the recovery key"):
        reader.recover_key(sf.feed_id, os.urandom(32))
    reader.recover_key(sf.feed_id, recovery)
    assert replica.is_writeable and replica.append_message(2) == 2
    third = kf.open_store(tmp_path / "third.db")
    assert _sync(replica, third).get_messages() == [0, 1, 2]
    assert third.verify().ok and reader.verify().ok
    # The lost key, if found by someone else, can no longer append anywhere it is known.
    assert sf.append_message("lost key") == 2  # its old store does not know of the recovery
    with pytest.raises(kf.ForkError) as info:
        third.load_subfeed(sf.uri).add_signed_messages(sf.get_signed_messages(2))
    assert info.value.position == 2


def test_a_store_holding_a_superseded_key_refuses_to_append_and_backups_carry_the_chain(stores):
    owner, _reader, tmp_path = stores
    sf = owner.create_feed().load_subfeed("main")
    sf.append_message(0)
    old_backup = owner.export_key(sf.feed_id)
    elsewhere = kf.open_store(tmp_path / "elsewhere.db")
    elsewhere.restore_key(old_backup)
    owner.rotate_key(sf.feed_id)
    sf.append_message(1)
    _sync(sf, elsewhere)  # learns the succession while holding the old key
    elsewhere.finish_restore(sf.feed_id, {sf.subfeed_hash: 2})
    with pytest.raises(kf.NotWriteableError, match="replaced by a key succession"):
        elsewhere.load_subfeed(sf.uri).append_message("old key")
    new_machine = kf.open_store(tmp_path / "new.db")
    new_machine.restore_key(owner.export_key(sf.feed_id))
    assert new_machine.key_succession(sf.feed_id) == owner.key_succession(sf.feed_id)
    _sync(sf, new_machine)
    new_machine.finish_restore(sf.feed_id, {sf.subfeed_hash: 2})
    assert new_machine.load_subfeed(sf.uri).append_message(2) == 2


def test_the_audit_checks_messages_against_the_key_chain(stores):
    import sqlite3

    owner, _reader, _ = stores
    sf = owner.create_feed().load_subfeed("main")
    sf.append_message(0)
    owner.rotate_key(sf.feed_id)
    sf.append_message(1)
    assert owner.verify().ok
    conn = sqlite3.connect(owner.path)
    conn.execute("UPDATE feed_successions SET record = replace(record, '\"ts\":', '\"ts\":1')")
    conn.commit()
    conn.close()
    problems = [p.message for p in owner.verify().problems]
    assert any("key succession is invalid" in p for p in problems), problems
    assert any(p == "bad signature" for p in problems), problems  # message 1: not K0's


def test_a_fork_by_the_new_key_is_proven_with_the_succession_it_needs(stores):
    owner, reader, tmp_path = stores
    sf = owner.create_feed().load_subfeed("main")
    sf.append_message(0)
    owner.rotate_key(sf.feed_id)
    second = kf.open_store(tmp_path / "second.db")  # the new key, restored twice: a real fork
    second.restore_key(owner.export_key(sf.feed_id))
    _sync(sf, second)
    second.finish_restore(sf.feed_id, {sf.subfeed_hash: 1})
    sf.append_message("one way")
    second.load_subfeed(sf.uri).append_message("another way")
    _sync(sf, reader)
    with pytest.raises(kf.ForkError) as info:
        reader.load_subfeed(sf.uri).add_signed_messages(second.load_subfeed(sf.uri).get_signed_messages(1))
    assert b'"kachery-fork-proof"' in info.value.proof and b'"succession"' in info.value.proof
    assert kf.verify_fork_proof(info.value.proof).position == 1
    assert reader.verify().ok


def test_a_backup_of_the_new_key_replaces_a_replaced_key_and_nothing_else(stores):
    owner, _reader, tmp_path = stores
    sf = owner.create_feed().load_subfeed("main")
    sf.append_message(0)
    old_backup = owner.export_key(sf.feed_id)
    old_machine = kf.open_store(tmp_path / "old.db")
    old_machine.restore_key(old_backup)
    _sync(sf, old_machine)
    old_machine.finish_restore(sf.feed_id, {sf.subfeed_hash: 1})
    owner.rotate_key(sf.feed_id)
    sf.append_message(1)
    with pytest.raises(kf.VerificationError, match="another key"):
        owner.restore_key(old_backup)  # the current key never gives way to an old one
    assert owner.load_subfeed(sf.uri).append_message(2) == 2
    old_machine.restore_key(owner.export_key(sf.feed_id))  # its K0 was replaced: it takes K1
    _sync(sf, old_machine)
    old_machine.finish_restore(sf.feed_id, {sf.subfeed_hash: 3})
    assert old_machine.load_subfeed(sf.uri).append_message(3) == 3


def test_deleting_a_feed_forgets_its_succession(stores):
    owner, reader, _ = stores
    sf = owner.create_feed().load_subfeed("main")
    sf.append_message(0)
    owner.rotate_key(sf.feed_id)
    sf.append_message(1)
    _sync(sf, reader)
    reader.load_feed(sf.feed_id).delete()
    assert reader.key_succession(sf.feed_id) == []
    assert _sync(sf, reader).get_messages() == [0, 1]  # learned again from the messages
    assert len(reader.key_succession(sf.feed_id)) == 1

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


def test_a_heard_checkpoint_is_checked_whole_in_one_call(tmp_path, owner):
    """What on_checkpoint hands to a worker thread (verify the object, then the fork check):
    the same answers as the steps it replaced, one by one."""
    from kachery_node.daemon.witness_driver import WitnessDriver
    from kachery_node.protocol.witness_messages import SubfeedCheckpoint

    clone = _clone(tmp_path, owner)
    owner.append_messages([{"i": "a5"}, {"i": "a6"}])
    clone.append_message({"i": "b5"})
    follower = kf.open_store(tmp_path / "f.db")
    follower.load_subfeed(owner.uri).add_signed_messages(owner.get_signed_messages())
    driver = WitnessDriver(follower)
    heard = SubfeedCheckpoint(owner.feed_id, owner.subfeed_hash, 6, None)

    def obj(line: bytes) -> bytes:
        cp = checkpoint_from_last(owner.feed_id, owner.subfeed_hash, line)
        return witnessed(cp, line, []).encode()

    theirs, proof = driver._check_checkpoint(obj(clone.get_signed_messages(5)[0]), heard)
    assert theirs is not None and proof is not None and kf.verify_fork_proof(proof).position == 5
    ours, proof = driver._check_checkpoint(obj(owner.get_signed_messages(6)[0]), heard)
    assert ours is not None and ours.checkpoint.size == 7 and proof is None
    elsewhere = SubfeedCheckpoint(owner.feed_id, "0" * 40, 6, None)
    assert driver._check_checkpoint(obj(owner.get_signed_messages(6)[0]), elsewhere) == (None, None)
    with pytest.raises(CheckpointError):
        driver._check_checkpoint(b"{}", heard)


# ---------------------------------------------------------------------------- reading the bucket
def _bulk(tmp_path, n: int, batch: int = 700) -> kf.Subfeed:
    """A subfeed of n messages appended in batches (signed once a batch, so segments of 1000
    end inside a batch: the witness must carry unsigned lines across segment boundaries)."""
    sf = kf.open_store(tmp_path / "bulk.db").create_feed().load_subfeed("bulk")
    for start in range(0, n, batch):
        sf.append_messages([{"i": i} for i in range(start, min(n, start + batch))])
    return sf


def _bucket(sf: kf.Subfeed, count: int) -> dict[int, bytes]:
    from kachery_node.protocol.feed_bucket import segment_for

    return {i: segment_for(sf, i) for i in range(count // 1000)}


def test_witness_reads_the_segments_it_lacks_from_the_bucket(tmp_path):
    """spec/witness.md §4.1 segments_to: the messages below segments_to * 1000 come from the
    bucket (with every check), the request's lines only from there on."""
    sf = _bulk(tmp_path, 5500)
    bucket = _bucket(sf, 5500)
    reads: list[int] = []

    def read(i: int) -> bytes | None:
        reads.append(i)
        return bucket.get(i)

    w = Witness(tmp_path / "w", KEY)
    done = w.cosign(sf.feed_id, sf.subfeed_hash, sf.get_signed_messages(5000), 100,
                    segments=read, segments_to=5)
    assert done.checkpoint.size == 5500 and w.count(sf.feed_id, sf.subfeed_hash) == 5500
    assert reads == [0, 1, 2, 3, 4]
    assert w.feeds.load_subfeed(sf.uri).get_signed_messages() == sf.get_signed_messages()
    # Later, from the witness's count: only the segments it lacks are read.
    sf.append_messages([{"i": i} for i in range(5500, 7200)])
    bucket = _bucket(sf, 7200)
    reads.clear()
    done = w.cosign(sf.feed_id, sf.subfeed_hash, sf.get_signed_messages(7000), 101,
                    segments=read, segments_to=7)
    assert done.checkpoint.size == 7200 and reads == [5, 6]


def test_a_tampered_segment_in_the_bucket_is_refused(tmp_path):
    sf = _bulk(tmp_path, 3500)
    bucket = _bucket(sf, 3500)
    lines = kf.decode_segment(bucket[1])
    lines[10] = lines[10].replace(b'"i":1010', b'"i":9999')
    bucket[1] = b"\n".join(lines) + b"\n"
    w = Witness(tmp_path / "w", KEY)
    with pytest.raises(WitnessRefusal) as r:
        w.cosign(sf.feed_id, sf.subfeed_hash, sf.get_signed_messages(3000), 100,
                 segments=bucket.get, segments_to=3)
    assert r.value.reason is RefusalReason.INVALID
    assert w.count(sf.feed_id, sf.subfeed_hash) <= 1010 and w.latest(sf.feed_id, sf.subfeed_hash) is None
    # The same range as lines (the requester's fallback) is cosigned.
    held = w.count(sf.feed_id, sf.subfeed_hash)
    assert w.cosign(sf.feed_id, sf.subfeed_hash, sf.get_signed_messages(held), 101).checkpoint.size == 3500


def test_a_missing_or_capped_bucket_read_says_where_to_go_on(tmp_path):
    from kachery_node.protocol.witness import MAX_BUCKET_SEGMENTS

    n = (MAX_BUCKET_SEGMENTS + 3) * 1000 + 400
    sf = _bulk(tmp_path, n)
    bucket = _bucket(sf, n)
    w = Witness(tmp_path / "w", KEY)
    last = sf.get_signed_messages(n - 1)
    # More segments than one request reads: the witness imports what it read and asks for more.
    with pytest.raises(WitnessRefusal) as r:
        w.cosign(sf.feed_id, sf.subfeed_hash, last, 100, segments=bucket.get, segments_to=n // 1000)
    assert r.value.reason is RefusalReason.MISSING
    assert MAX_BUCKET_SEGMENTS * 1000 - 700 < r.value.size <= MAX_BUCKET_SEGMENTS * 1000
    # A segment missing from the bucket: the count stays where the segments stopped.
    gone = dict(bucket)
    del gone[MAX_BUCKET_SEGMENTS + 1]
    with pytest.raises(WitnessRefusal) as r2:
        w.cosign(sf.feed_id, sf.subfeed_hash, sf.get_signed_messages((n // 1000) * 1000), 101,
                 segments=gone.get, segments_to=n // 1000)
    assert r2.value.reason is RefusalReason.MISSING
    assert r.value.size < r2.value.size <= (MAX_BUCKET_SEGMENTS + 1) * 1000
    # Complete: the rest of the segments and the lines after them.
    done = w.cosign(sf.feed_id, sf.subfeed_hash, sf.get_signed_messages((n // 1000) * 1000), 102,
                    segments=bucket.get, segments_to=n // 1000)
    assert done.checkpoint.size == n


def test_a_fork_in_the_bucket_is_a_fork(tmp_path):
    sf = _bulk(tmp_path, 2500)
    clone = _clone(tmp_path, sf, "rival.db")
    sf.append_messages([{"i": "a"}] * 600)
    clone.append_messages([{"i": "b"}] * 600)
    w = Witness(tmp_path / "w", KEY)
    w.cosign(sf.feed_id, sf.subfeed_hash, sf.get_signed_messages(), 100)
    clone.append_messages([{"i": "c"}] * 900)  # the rival branch's segments reach the bucket
    with pytest.raises(WitnessRefusal) as r:
        w.cosign(sf.feed_id, sf.subfeed_hash, clone.get_signed_messages(3999), 101,
                 segments=_bucket(clone, 4000).get, segments_to=4)
    assert r.value.reason is RefusalReason.FORK and r.value.proof

"""Export and verified import: all or nothing, idempotent, forks proven and recorded."""

from __future__ import annotations

import pytest

import kachery_feeds as kf


@pytest.fixture
def source(tmp_path):
    store = kf.open_store(tmp_path / "source.db")
    sf = store.create_feed().load_subfeed("log")
    sf.append_message({"i": 0})
    sf.append_messages([{"i": i} for i in range(1, 6)])  # 1..5, only 5 signed
    sf.append_message({"i": 6})
    return sf


@pytest.fixture
def replica(tmp_path, source):
    return kf.open_store(tmp_path / "replica.db").load_subfeed(source.uri)


def test_full_import_and_idempotence(source, replica):
    raw = source.get_signed_messages()
    assert replica.add_signed_messages(raw) == 7
    assert replica.get_messages() == source.get_messages()
    assert replica.add_signed_messages(raw) == 0
    assert replica.add_signed_messages(raw[2:6]) == 0
    assert replica.get_signed_messages() == raw


def test_ranges_end_at_a_signed_message(source, replica):
    part = source.get_signed_messages(0, 3)  # 0..2 asked; 2 is unsigned, extended to 5
    assert len(part) == 6
    assert replica.add_signed_messages(part) == 6
    assert replica.add_signed_messages(source.get_signed_messages(6)) == 1
    assert replica.get_num_local_messages() == 7


def test_overlapping_import_adds_only_new(source, replica):
    replica.add_signed_messages(source.get_signed_messages(0, 1))
    assert replica.add_signed_messages(source.get_signed_messages(0)) == 6


def test_range_past_the_end_is_refused(source, replica):
    with pytest.raises(kf.MissingMessagesError) as err:
        replica.add_signed_messages(source.get_signed_messages(6))
    assert err.value.local_count == 0
    assert replica.get_num_local_messages() == 0


def _tamper(line: bytes, old: bytes, new: bytes) -> bytes:
    assert old in line
    return line.replace(old, new)


def test_tampered_data_is_refused_and_nothing_stored(source, replica, tmp_path):
    raw = source.get_signed_messages()
    cases = {
        "payload": raw[:3] + [_tamper(raw[3], b'"i":3', b'"i":9')] + raw[4:],
        "signed payload": raw[:6] + [_tamper(raw[6], b'"i":6', b'"i":7')],
        "signature": raw[:6] + [raw[6][:-4] + (b"0000" if not raw[6].endswith(b"0000") else b"1111")],
        "dropped": raw[:2] + raw[3:],
        "reordered": [raw[1], raw[0]] + raw[2:],
        "unsigned end": raw[:3],
        "not bytes": ["a string"],
        "garbage": [b"\x00\x01garbage"],
        "not json": [b"{not json\t"],
        "newline": [raw[0].replace(b'"n":0', b'"n":\n0')],
    }
    for name, lines in cases.items():
        with pytest.raises(kf.VerificationError):
            replica.add_signed_messages(lines)
        assert replica.get_num_local_messages() == 0, name


def test_messages_bound_to_their_feed_and_subfeed(tmp_path, source):
    raw = source.get_signed_messages()
    store = kf.open_store(tmp_path / "x.db")
    other_subfeed = store.load_feed(source.feed_id).load_subfeed("other")
    with pytest.raises(kf.VerificationError, match="subfeed"):
        other_subfeed.add_signed_messages(raw)
    other_feed = store.create_feed().load_subfeed("log")
    with pytest.raises(kf.VerificationError, match="feed"):
        other_feed.add_signed_messages(raw)
    # A message re-labelled for another feed fails its signature check.
    impostor = store.create_feed()
    relabelled = [raw[0].replace(source.feed_id.encode(), impostor.feed_id.encode())]
    with pytest.raises(kf.VerificationError, match="signature"):
        store.load_feed(impostor.feed_id).load_subfeed("log").add_signed_messages(relabelled)


def test_oversized_message_refused(replica):
    with pytest.raises(kf.VerificationError, match="limit"):
        replica.add_signed_messages([b"{" + b" " * (kf.MAX_MESSAGE_BYTES + 200) + b"}\t"])


def _forked_copy(tmp_path, source):
    """A backup of the owner's store: it holds the same feed key and can sign a rival history."""
    import sqlite3

    with sqlite3.connect(source._store.path) as src, sqlite3.connect(tmp_path / "clone.db") as dst:
        src.backup(dst)
    clone = kf.open_store(tmp_path / "clone.db")
    return clone.load_subfeed(source.uri)


def test_fork_is_detected_proven_and_recorded(tmp_path, source, replica):
    replica.add_signed_messages(source.get_signed_messages())
    # The owner's key restored elsewhere (e.g. from a backup) signs a different message 7.
    clone = _forked_copy(tmp_path, source)
    source.append_message({"i": 7, "from": "original"})
    clone.append_message({"i": 7, "from": "restored backup"})
    replica.add_signed_messages(source.get_signed_messages(7))
    with pytest.raises(kf.ForkError) as err:
        replica.add_signed_messages(clone.get_signed_messages(7))
    assert err.value.position == 7
    info = kf.verify_fork_proof(err.value.proof)
    assert (info.feed_id, info.subfeed_hash, info.position) == (source.feed_id, source.subfeed_hash, 7)
    assert replica.get_fork_proofs() == [err.value.proof]
    assert replica.get_messages()[7]["from"] == "original"  # never silently replaced
    # Re-reporting the same fork does not duplicate the proof.
    with pytest.raises(kf.ForkError):
        replica.add_signed_messages(clone.get_signed_messages(7))
    assert len(replica._store.get_fork_proofs(source.feed_id)) == 1


def test_fork_detected_through_prev_link(tmp_path, source, replica):
    clone = _forked_copy(tmp_path, source)
    source.append_messages([{"i": 7}, {"i": 8}])
    clone.append_messages([{"i": 70}, {"i": 80}])
    replica.add_signed_messages(source.get_signed_messages())
    with pytest.raises(kf.ForkError) as err:
        replica.add_signed_messages(clone.get_signed_messages(8))  # its prev points at clone's 7
    assert kf.verify_fork_proof(err.value.proof).position == 7
    assert replica.get_num_local_messages() == 9


def test_non_proofs_are_refused(source):
    raw = source.get_signed_messages()
    import orjson

    same = orjson.dumps(
        {"type": "kachery-fork-proof", "v": 1, "feed": source.feed_id, "subfeed": source.subfeed_hash,
         "position": 0, "a": [x.decode() for x in raw], "b": [x.decode() for x in raw]}
    )
    for bad in [b"", b"{}", b"[1]", same]:
        with pytest.raises(kf.VerificationError):
            kf.verify_fork_proof(bad)

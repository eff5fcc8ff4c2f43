"""The one-message import's fast path (issue 15: a live follower imports each push alone): when
the store's last write was the import that ended where the message begins, and no other
connection committed since, the message is checked outside the lock and inserted by one
statement that is its own transaction. Anything else (another connection's commit, a write of
this store object, a message that does not link to the head, a bad signature, a key succession)
goes the usual way, which decides and reports as it always did."""

from __future__ import annotations

import sqlite3

import orjson
import pytest

import kachery_feeds as kf


@pytest.fixture
def owner(tmp_path):
    store = kf.open_store(tmp_path / "owner.db")
    sf = store.create_feed().load_subfeed("log")
    for i in range(6):
        sf.append_message(i)
    yield store, sf
    store.close()


@pytest.fixture
def replica(tmp_path, owner):
    """A follower's store and a second store object on its file (like another process)."""
    _store, sf = owner
    mine = kf.open_store(tmp_path / "replica.db")
    other = kf.open_store(tmp_path / "replica.db")
    yield mine.load_subfeed(sf.uri), other
    mine.close()
    other.close()


def _statements(store: kf.Store, action) -> tuple[list[str], object]:
    seen: list[str] = []
    store._conn.set_trace_callback(seen.append)
    try:
        result = action()
    finally:
        store._conn.set_trace_callback(None)
    return [s.split()[0] for s in seen if not s.startswith("--")], result


def _line(sf: kf.Subfeed, n: int) -> list[bytes]:
    return sf.get_signed_messages(n, n + 1)


def test_a_live_push_after_an_import_is_one_statement(owner, replica):
    _store, source = owner
    copy, _other = replica
    assert copy.add_signed_messages(source.get_signed_messages(0, 2)) == 2  # the usual path
    for n in (2, 3):
        statements, added = _statements(copy._store, lambda n=n: copy.add_signed_messages(_line(source, n)))
        assert (statements, added) == (["INSERT"], 1)
    assert copy.get_messages() == [0, 1, 2, 3]
    assert copy._store.verify().ok


def test_another_connections_commit_sends_the_next_import_the_usual_way(owner, replica, tmp_path):
    _store, source = owner
    copy, other = replica
    copy.add_signed_messages(source.get_signed_messages(0, 2))
    other.create_feed().load_subfeed("elsewhere").append_message("x")  # commits in the same file
    statements, added = _statements(copy._store, lambda: copy.add_signed_messages(_line(source, 2)))
    assert added == 1 and statements[0] == "INSERT" and "BEGIN" in statements and statements[-1] == "COMMIT"
    statements, added = _statements(copy._store, lambda: copy.add_signed_messages(_line(source, 3)))
    assert (statements, added) == (["INSERT"], 1)  # fast again
    assert copy.get_messages() == [0, 1, 2, 3]


def test_messages_imported_by_another_store_object_meanwhile_are_not_imported_twice(owner, replica):
    _store, source = owner
    copy, other = replica
    copy.add_signed_messages(source.get_signed_messages(0, 2))
    assert other.load_subfeed(source.uri).add_signed_messages(source.get_signed_messages(2, 4)) == 2
    assert copy.add_signed_messages(_line(source, 2)) == 0  # already there
    assert copy.add_signed_messages(_line(source, 4)) == 1
    assert copy.get_messages() == [0, 1, 2, 3, 4]
    assert copy._store.verify().ok


def test_a_gap_is_still_a_missing_messages_error(owner, replica):
    _store, source = owner
    copy, _other = replica
    copy.add_signed_messages(source.get_signed_messages(0, 2))
    with pytest.raises(kf.MissingMessagesError):
        copy.add_signed_messages(_line(source, 3))
    assert copy.add_signed_messages(_line(source, 2)) == 1
    assert copy.get_num_local_messages() == 3


def test_a_bad_signature_is_refused_and_nothing_is_written(owner, replica):
    _store, source = owner
    copy, _other = replica
    copy.add_signed_messages(source.get_signed_messages(0, 2))
    body, sig = _line(source, 2)[0].rsplit(b"\t", 1)
    forged = body + b"\t" + (b"0" * 128 if sig != b"0" * 128 else b"1" * 128)
    with pytest.raises(kf.VerificationError):
        copy.add_signed_messages([forged])
    assert copy.get_num_local_messages() == 2
    assert copy.add_signed_messages(_line(source, 2)) == 1


def test_the_owners_second_history_is_a_fork_with_its_proof(owner, replica, tmp_path):
    store, source = owner
    copy, _other = replica
    copy.add_signed_messages(source.get_signed_messages(0, 4))
    # The owner's key, restored elsewhere from a backup, writes another message 3.
    elsewhere = kf.open_store(tmp_path / "elsewhere.db")
    elsewhere.restore_key(store.export_key(source.feed_id))
    rival = elsewhere.load_subfeed(source.uri)
    rival.add_signed_messages(source.get_signed_messages(0, 3))
    elsewhere.finish_restore(source.feed_id, {}, unchecked=True)
    rival.append_message("another 3")
    rival.append_message("another 4")
    with pytest.raises(kf.ForkError) as forked:
        copy.add_signed_messages(_line(rival, 4))  # links to the other message 3
    assert forked.value.position == 3 and forked.value.proof
    assert copy._store.get_fork_proofs(source.feed_id)
    with pytest.raises(kf.ForkError):  # nothing at or past the fork, from either branch
        copy.add_signed_messages(_line(source, 4))
    assert copy.get_messages() == [0, 1, 2, 3]


def test_a_cut_by_this_store_objects_own_repair_is_seen(owner, replica):
    """This store object's own writes do not change its data_version: its write number does."""
    from kachery_feeds.audit import cut_subfeed_for_repair

    _store, source = owner
    copy, _other = replica
    copy.add_signed_messages(source.get_signed_messages(0, 4))
    assert cut_subfeed_for_repair(copy._store, source.feed_id, source.subfeed_hash, 2) == 2
    with pytest.raises(kf.MissingMessagesError):  # not stored as message 4 of a 2-message subfeed
        copy.add_signed_messages(_line(source, 4))
    assert copy.add_signed_messages(source.get_signed_messages(2, 5)) == 3
    assert copy.get_messages() == [0, 1, 2, 3, 4]
    assert copy._store.verify().ok


def test_a_row_deleted_behind_the_stores_back_by_another_connection_is_seen(owner, replica):
    _store, source = owner
    copy, _other = replica
    copy.add_signed_messages(source.get_signed_messages(0, 3))
    with sqlite3.connect(copy._store.path) as c:
        c.execute("DELETE FROM messages WHERE n=2")
    with pytest.raises(kf.MissingMessagesError):
        copy.add_signed_messages(_line(source, 3))
    assert copy.add_signed_messages(source.get_signed_messages(2, 4)) == 2
    numbers = [orjson.loads(line.rsplit(b"\t", 1)[0])["n"] for line in copy.get_signed_messages()]
    assert numbers == [0, 1, 2, 3]


def test_a_key_succession_carried_by_the_next_message_is_taken_in(owner, replica):
    store, source = owner
    copy, _other = replica
    copy.add_signed_messages(source.get_signed_messages())
    store.rotate_key(source.feed_id)
    source.append_message("signed by the new key")
    assert copy.add_signed_messages(_line(source, 6)) == 1
    assert copy.get_messages()[-1] == "signed by the new key"
    assert copy._store.key_succession(source.feed_id)
    source.append_message("and the next")
    assert copy.add_signed_messages(_line(source, 7)) == 1
    assert copy._store.verify().ok

"""The append fast path (issue 15): a store that appended to a subfeed last builds and signs the
next append outside the write lock and confirms, inside it, that the subfeed row still holds the
count and head it left. Whatever changed in between (another store object or process appending
or importing, a deletion, a truncation, a key succession) sends the append down the usual path
under the lock, so the subfeed never forks and every message links to the one before."""

from __future__ import annotations

import sqlite3

import orjson
import pytest

import kachery_feeds as kf
from kachery_feeds.messages import build_bodies, build_body, message_hash


@pytest.fixture
def two(tmp_path):
    """Two store objects on one file: like two processes (each has its own connection)."""
    a = kf.open_store(tmp_path / "feeds.db")
    b = kf.open_store(tmp_path / "feeds.db")
    yield a, b
    a.close()
    b.close()


def _check_chain(sf: kf.Subfeed) -> list[dict]:
    """Every stored message links to the one before; a fresh store accepts the whole range."""
    lines = sf.get_signed_messages()
    bodies = [orjson.loads(line.rsplit(b"\t", 1)[0]) for line in lines]
    assert [b["n"] for b in bodies] == list(range(len(lines)))
    for before, after, line in zip(lines, bodies[1:], lines[1:], strict=False):
        assert after["prev"] == message_hash(before.rsplit(b"\t", 1)[0]).hex(), line
    return bodies


def test_appends_interleaved_from_two_store_objects_never_fork(two, tmp_path):
    a, b = two
    sf_a = a.create_feed().load_subfeed("log")
    sf_b = b.load_subfeed(sf_a.uri)
    for i in range(5):
        assert sf_a.append_message({"by": "a", "i": i}) == 3 * i
        assert sf_b.append_message({"by": "b", "i": i}) == 3 * i + 1
        assert sf_a.append_messages([{"by": "a", "j": i}]) == 3 * i + 2
    assert sf_a.get_num_local_messages() == sf_b.get_num_local_messages() == 15
    _check_chain(sf_a)
    assert a.verify().ok
    copy = kf.open_store(tmp_path / "copy.db").load_subfeed(sf_a.uri)
    assert copy.add_signed_messages(sf_a.get_signed_messages()) == 15


def test_an_import_by_another_store_object_in_between_is_seen(two, tmp_path):
    a, b = two
    feed = a.create_feed()
    sf_a = feed.load_subfeed("log")
    sf_a.append_message(0)
    # A copy of the feed's key elsewhere (a restored backup on another machine) appended
    # message 1; its range reaches this file through the other store object.
    other = kf.open_store(tmp_path / "other.db")
    other.restore_key(a.export_key(feed.feed_id))
    other_sf = other.load_subfeed(sf_a.uri)
    other_sf.add_signed_messages(sf_a.get_signed_messages())
    other.finish_restore(feed.feed_id, {}, unchecked=True)
    other_sf.append_message("from elsewhere")
    b.load_subfeed(sf_a.uri).add_signed_messages(other_sf.get_signed_messages(1))
    assert sf_a.append_message(2) == 2  # not a second message 1: that would be a fork
    assert sf_a.get_messages() == [0, "from elsewhere", 2]
    _check_chain(sf_a)
    assert a.verify().ok


def test_a_truncated_subfeed_is_appended_to_where_it_ends_now(two):
    a, _b = two
    sf = a.create_feed().load_subfeed("log")
    for i in range(5):
        sf.append_message(i)
    # Cut back to 3 messages behind the store's back (as the audit's repair does).
    with sqlite3.connect(a.path) as c:
        (sid,) = c.execute("SELECT id FROM subfeeds").fetchone()
        c.execute("DELETE FROM messages WHERE subfeed_id=? AND n>=3", (sid,))
    assert sf.append_message("after the cut") == 3
    assert sf.get_messages() == [0, 1, 2, "after the cut"]
    _check_chain(sf)
    assert a.verify().ok


def test_a_deleted_feed_starts_again_at_message_0(two):
    a, b = two
    feed = a.create_feed()
    sf = feed.load_subfeed("log")
    sf.append_message("first life")
    sf.append_message("first life")
    b.delete_feed(feed.feed_id)
    # a still holds the key in memory (as before the fast path); the subfeed starts over.
    assert sf.append_message("second life") == 0
    assert sf.get_messages() == ["second life"]
    assert a.verify().ok


def test_a_key_succession_by_another_store_object_is_carried_by_the_next_append(two):
    a, b = two
    feed = a.create_feed()
    sf = feed.load_subfeed("log")
    sf.append_message(0)
    sf.append_message(1)  # the fast path is armed
    record = b.rotate_key(feed.feed_id)
    assert sf.append_message(2) == 2
    lines = sf.get_signed_messages(2)
    assert orjson.loads(lines[0].rsplit(b"\t", 1)[0])["succession"] == [record.decode()]
    assert a.verify().ok
    # Later appends of a feed with a succession stay correct (they take the usual path).
    assert sf.append_messages([3, 4]) == 4
    assert b"succession" not in sf.get_signed_messages(3)[0]
    assert a.verify().ok


def test_a_failed_append_leaves_nothing_and_the_next_one_links(two):
    a, _b = two
    sf = a.create_feed().load_subfeed("log")
    sf.append_message(0)
    with pytest.raises(kf.InvalidPayloadError):
        sf.append_messages([1, float("nan")])
    assert sf.append_message(1) == 1
    _check_chain(sf)


def test_a_single_append_on_the_fast_path_refuses_what_the_usual_path_refuses(two):
    """append_message without metadata has a path of its own once this store appended last:
    a payload that is not JSON, one over the size limit and a number past the message key's
    bound are refused there as on the usual path, with nothing written, and the next append
    still links."""
    from kachery_feeds.schema import MAX_STORED_NUMBER

    a, _b = two
    sf = a.create_feed().load_subfeed("log")
    sf.append_message(0)
    assert a._append_heads  # the head that the single path builds on is cached
    with pytest.raises(kf.InvalidPayloadError, match="NaN"):
        sf.append_message(float("nan"))
    with pytest.raises(kf.InvalidPayloadError, match="over the"):
        sf.append_message("a" * kf.MAX_MESSAGE_BYTES)
    key = (sf.feed_id, sf.subfeed_hash)
    sid, _count, head, version, write_number = a._append_heads[key]
    a._append_heads[key] = (sid, MAX_STORED_NUMBER + 1, head, version, write_number)
    with pytest.raises(kf.StoreFullError, match=f"numbered up to {MAX_STORED_NUMBER}"):
        sf.append_message(1)
    assert key not in a._append_heads  # dropped: the next append reads the subfeed's end
    assert sf.get_num_local_messages() == 1
    assert sf.append_message(1) == 1
    assert sf.append_message(2) == 2
    _check_chain(sf)


def test_a_single_append_after_another_store_objects_write_goes_the_usual_way(two):
    """Signed against the cached head, a single append whose one-statement insert finds that
    another connection committed since (here: b's append to another subfeed of the same
    feed) is inserted under the lock after the check, with the signature it already has."""
    a, b = two
    feed = a.create_feed()
    sf = feed.load_subfeed("log")
    other = b.load_feed(feed.feed_id).load_subfeed("other")
    for i in range(3):
        assert sf.append_message(i) == i
        other.append_message(i)
    assert b.load_subfeed(sf.uri).get_messages() == [0, 1, 2]
    _check_chain(sf)


@pytest.mark.parametrize("meta", [None, {"by": "me"}, "some", "only the first"])
@pytest.mark.parametrize("succession", [None, b'["rec"]'])
@pytest.mark.parametrize("prev", [None, bytes(range(32))])
@pytest.mark.parametrize("count", [1, 4])
def test_build_bodies_writes_what_build_body_writes(meta, succession, prev, count):
    feed_id, sh = "ab" * 32, "cd" * 20
    payloads = [orjson.dumps(p) for p in ({"x": "100%"}, [1, "two"], "three", None)][:count]
    if meta == "some":  # metadata on some messages (one format each way)
        metas = [None, b'{"by":"me"}', None, b'{"by":"%d"}'][:count]
    elif meta == "only the first":
        metas = [b'{"by":"me"}', None, None, None][:count]
    else:
        metas = [None if meta is None else orjson.dumps(meta)] * len(payloads)
    first = 0 if prev is None else 7
    rows, last = build_bodies(feed_id, sh, first, prev, 1234, payloads, metas, succession)
    expected, h = [], prev
    for i, (pj, mj) in enumerate(zip(payloads, metas, strict=True)):
        body = build_body(feed_id, sh, first + i, h, 1234, pj, mj, succession if i == 0 else None)
        expected.append((first + i, body))
        h = message_hash(body)
    assert rows == expected and last == h
    with pytest.raises(ValueError):
        build_bodies(feed_id, sh, 0, None, 1, [], [])
    with pytest.raises(ValueError):
        build_bodies(feed_id, sh, 0, None, 1, payloads, metas + [None])


def test_metadata_one_for_all_a_list_per_message_or_none(tmp_path):
    sf = kf.open_store(tmp_path / "a.db").create_feed().load_subfeed("log")
    shared = {"by": "me"}
    sf.append_messages([1, 2], metadata=shared)
    sf.append_messages([3, 4, 5], metadata=[None, shared, {"by": "you"}])
    sf.append_messages([6])
    assert [r.metadata for r in sf.get_records()] == [
        shared, shared, None, shared, {"by": "you"}, None]
    with pytest.raises(kf.InvalidPayloadError, match="2 entries for 3 messages"):
        sf.append_messages([7, 8, 9], metadata=[None, None])
    with pytest.raises(kf.InvalidPayloadError, match="JSON object"):
        sf.append_messages([7, 8], metadata=[None, "by me"])
    assert sf.get_num_local_messages() == 6


def test_the_size_limit_is_per_message_in_a_batch(tmp_path):
    sf = kf.open_store(tmp_path / "a.db").create_feed().load_subfeed("log")
    half = kf.MAX_MESSAGE_BYTES // 2
    # A large payload and, on another message, a large metadata: each message is under the limit.
    assert sf.append_messages(["a" * (half + 1000), "b"], metadata=[None, {"m": "c" * (half + 1000)}]) == 1
    with pytest.raises(kf.InvalidPayloadError, match="over the"):
        sf.append_messages(["small", "a" * kf.MAX_MESSAGE_BYTES])
    with pytest.raises(kf.InvalidPayloadError, match="over the"):
        sf.append_messages(["a" * (half + 1000)], metadata={"m": "c" * (half + 1000)})
    assert sf.get_num_local_messages() == 2


def test_a_cut_by_this_store_objects_own_repair_is_seen(two):
    """The store's own writes do not change its connection's data_version: the fast path must
    notice them another way (a repair through this store object cuts the subfeed back)."""
    from kachery_feeds.audit import cut_subfeed_for_repair

    a, _b = two
    feed = a.create_feed()
    sf = feed.load_subfeed("log")
    for i in range(5):
        sf.append_message(i)
    assert cut_subfeed_for_repair(a, feed.feed_id, sf.subfeed_hash, 3) == 3
    assert sf.append_message("after the cut") == 3  # not 5: that would leave a gap
    assert sf.get_messages() == [0, 1, 2, "after the cut"]
    _check_chain(sf)
    assert a.verify().ok
    a.delete_feed(feed.feed_id)  # and a deletion through this store object
    with pytest.raises(kf.NotWriteableError):
        sf.append_message("gone")


def _statements(store: kf.Store, action) -> list[str]:
    seen: list[str] = []
    store._conn.set_trace_callback(seen.append)
    try:
        action()
    finally:
        store._conn.set_trace_callback(None)
    return seen


def _top_level(statements: list[str]) -> list[str]:
    """The first word of each statement run, without those SQLite runs inside them ("-- ...")."""
    return [s.split()[0] for s in statements if not s.startswith("--")]


def test_an_append_writes_only_its_messages(two):
    """Schema version 3: a fast-path single append is one INSERT whose condition reads
    data_version (no subfeed row to update), a batch BEGIN, the data_version read, the INSERTs
    and COMMIT; after another connection's commit (elsewhere in the file) the INSERT inserts
    nothing and one query checks the subfeed's end instead, and the append still needs no other
    write."""
    a, b = two
    sf = a.create_feed().load_subfeed("log")
    sf.append_message(0)
    sf.append_message(1)
    quiet = _statements(a, lambda: sf.append_message(2))
    assert _top_level(quiet) == ["INSERT"], quiet
    assert "data_version" in quiet[0]
    batch = _statements(a, lambda: sf.append_messages([3, 4]))
    assert _top_level(batch) == ["BEGIN", "PRAGMA", "INSERT", "INSERT", "COMMIT"], batch
    b.create_feed().load_subfeed("elsewhere").append_message("x")  # another connection commits
    after = _statements(a, lambda: sf.append_message(5))
    assert _top_level(after) == ["INSERT", "BEGIN", "PRAGMA", "SELECT", "INSERT", "COMMIT"], after
    assert _top_level(_statements(a, lambda: sf.append_message(6))) == ["INSERT"]
    assert sf.get_messages() == [0, 1, 2, 3, 4, 5, 6]
    _check_chain(sf)
    assert a.verify().ok


def test_another_message_at_the_same_number_is_seen(two):
    """The subfeed ends at the number this store appended last, but with another message there
    (cut behind its back, then appended by another store object): the check compares hashes, so
    the next append links to the message that is there now."""
    a, b = two
    sf_a = a.create_feed().load_subfeed("log")
    sf_a.append_message(0)
    sf_a.append_message("mine")
    with sqlite3.connect(a.path) as c:
        c.execute("DELETE FROM messages WHERE n=1")
    assert b.load_subfeed(sf_a.uri).append_message("theirs") == 1
    assert sf_a.append_message(2) == 2
    assert sf_a.get_messages() == [0, "theirs", 2]
    _check_chain(sf_a)
    assert a.verify().ok


def test_sign_hash_signs_as_pynacl_does():
    """sign_hash calls libsodium through PyNaCl's own binding (not its wrapper): the signature is
    the wrapper's, and it verifies."""
    import nacl.bindings

    from kachery_feeds.messages import SIGNATURE_CONTEXT, sign_hash, signature_is_valid

    for seed in (bytes(32), bytes(range(32))):
        pk, sk = nacl.bindings.crypto_sign_seed_keypair(seed)
        for h in (bytes(32), message_hash(b"x")):
            sig = sign_hash(sk, h)
            assert sig == nacl.bindings.crypto_sign(SIGNATURE_CONTEXT + h, sk)[:64]
            assert signature_is_valid(pk, h, sig) and not signature_is_valid(pk, bytes(31) + b"\1", sig)

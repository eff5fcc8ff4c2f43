"""Appending, reading, the cursor API and bad input, through the public API."""

from __future__ import annotations

import datetime
import os
import sqlite3
import stat

import pytest

import kachery_feeds as kf


@pytest.fixture
def store(tmp_path):
    s = kf.open_store(tmp_path / "deep" / "folder" / "feeds.db")
    yield s
    s.close()


def test_create_append_read(store):
    feed = store.create_feed()
    assert len(feed.feed_id) == 64 and feed.uri == f"feed://{feed.feed_id}" and feed.is_writeable
    sf = feed.load_subfeed("primes")
    assert sf.is_writeable and sf.uri == f"feed://{feed.feed_id}/primes"
    assert sf.get_num_local_messages() == 0
    assert sf.append_message({"p": 2}) == 0
    assert sf.append_messages([{"p": 3}, {"p": 5}]) == 2
    assert sf.get_num_local_messages() == 3
    assert sf.get_messages() == [{"p": 2}, {"p": 3}, {"p": 5}]
    assert sf.get_messages(start=1, end=2) == [{"p": 3}]
    records = sf.get_records()
    assert [r.number for r in records] == [0, 1, 2]
    assert all(r.metadata is None for r in records)
    assert abs(records[0].timestamp_ms - __import__("time").time() * 1000) < 60_000


def test_any_json_payload_and_metadata(store):
    sf = store.create_feed().load_subfeed({"name": "curation", "sortingId": 3})
    payloads = [1, "text ✓ 😀", None, [1, 2.5, {"a": []}], {"nested": {"deep": [True, False]}}]
    for p in payloads:
        sf.append_message(p, metadata={"by": "me"})
    assert sf.get_messages() == payloads
    assert {r.metadata["by"] for r in sf.get_records()} == {"me"}
    assert sf.uri.split("/")[-1] == "~" + kf.subfeed_hash({"name": "curation", "sortingId": 3})


@pytest.mark.parametrize(
    "bad",
    [
        float("nan"),
        {"x": float("inf")},
        [float("-inf")],
        {1: "non-string key"},
        {"when": datetime.datetime(2024, 1, 1)},
        {"s": {1, 2}},
        b"bytes",
        2**70,
        object(),
    ],
)
def test_invalid_payloads_are_refused_and_change_nothing(store, bad):
    sf = store.create_feed().load_subfeed("x")
    sf.append_message({"ok": 1})
    with pytest.raises(kf.InvalidPayloadError):
        sf.append_message(bad)
    with pytest.raises(kf.InvalidPayloadError):
        sf.append_messages([{"fine": 1}, bad])  # one bad payload refuses the whole batch
    assert sf.get_messages() == [{"ok": 1}]


def test_size_limit(store):
    sf = store.create_feed().load_subfeed("x")
    sf.append_message("a" * (kf.MAX_MESSAGE_BYTES - 1000))  # just under
    with pytest.raises(kf.InvalidPayloadError, match="limit"):
        sf.append_message("a" * kf.MAX_MESSAGE_BYTES)
    with pytest.raises(kf.InvalidPayloadError):
        sf.append_messages([])
    assert sf.get_num_local_messages() == 1


def test_bad_metadata(store):
    sf = store.create_feed().load_subfeed("x")
    for bad in ["not a dict", {"x": float("nan")}, [1]]:
        with pytest.raises(kf.InvalidPayloadError):
            sf.append_message(1, metadata=bad)
    assert sf.get_num_local_messages() == 0


def test_cursor_api(store):
    sf = store.create_feed().load_subfeed("x")
    sf.append_messages([1, 2, 3])
    assert sf.get_next_messages(wait_msec=0) == [1, 2, 3]
    assert sf.get_next_messages(wait_msec=0) == []
    assert sf.get_next_message(wait_msec=50) is None
    sf.set_position(1)
    assert sf.get_next_message(wait_msec=0) == 2
    assert sf.get_next_messages(max_num_messages=5) == [3]
    sf.set_position(0)
    assert sf.get_next_messages(max_num_messages=2) == [1, 2]
    assert sf.position == 2


def test_read_only_replica_cannot_append(tmp_path, store):
    sf = store.create_feed().load_subfeed("x")
    sf.append_message(1)
    other = kf.open_store(tmp_path / "other.db")
    replica = other.load_subfeed(sf.uri)
    assert not replica.is_writeable and not other.load_feed(sf.feed_id).is_writeable
    with pytest.raises(kf.NotWriteableError, match="private key"):
        replica.append_message(2)
    assert replica.get_num_local_messages() == 0


def test_persistence_and_named_feeds(tmp_path):
    path = tmp_path / "feeds.db"
    with kf.open_store(path) as s:
        feed = s.create_feed(name="notebook")
        feed.load_subfeed("entries").append_messages([{"i": i} for i in range(10)])
        with pytest.raises(kf.InvalidUriError, match="already exists"):
            s.create_feed(name="notebook")
    with kf.open_store(path) as s:
        again = s.load_feed("notebook")
        assert again.feed_id == feed.feed_id and again.is_writeable
        sf = again.load_subfeed("entries")
        assert sf.get_num_local_messages() == 10
        assert sf.append_message({"i": 10}) == 10
        assert s.load_feed(feed.uri).get_subfeed_hashes() == [kf.subfeed_hash("entries")]
        assert [f["name"] for f in s.list_feeds()] == ["notebook"]


def test_delete_feed_removes_everything(store):
    feed = store.create_feed()
    feed.load_subfeed("a").append_messages([1, 2])
    feed.delete()
    assert store.list_feeds() == []
    assert store.load_feed(feed.feed_id).load_subfeed("a").get_num_local_messages() == 0
    assert store.db.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
    with pytest.raises(kf.UnknownFeedError):
        store.delete_feed(feed.feed_id)


def test_store_file_is_owner_only(tmp_path):
    s = kf.open_store(tmp_path / "feeds.db")
    s.create_feed().load_subfeed("x").append_message(1)
    for suffix in ["", "-wal", "-shm"]:
        mode = os.stat(str(tmp_path / "feeds.db") + suffix).st_mode
        assert not mode & (stat.S_IRWXG | stat.S_IRWXO), suffix


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "feeds.db"
    kf.open_store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 999")
    conn.commit()
    conn.close()
    with pytest.raises(kf.StoreVersionError, match="upgrade"):
        kf.open_store(path)


def test_follow_in_process_with_timeout(store):
    sf = store.create_feed().load_subfeed("x")
    sf.append_messages(list(range(2500)))  # more than one page
    assert list(sf.follow(start=0, timeout=0.05)) == list(range(2500))
    assert [r.number for r in sf.follow(start=2498, timeout=0.05, records=True)] == [2498, 2499]


def test_a_refused_first_import_leaves_no_stale_subfeed_id(tmp_path):
    """A subfeed created inside an import that is then refused (rolled back) must not keep its
    id in the store's cache: SQLite hands the id to the next subfeed created, whose messages
    the first would then read as its own (found by the witness benchmark: a fork "at message 0"
    between two subfeeds)."""
    source = kf.open_store(tmp_path / "src.db").create_feed()
    a, b = source.load_subfeed("a"), source.load_subfeed("b")
    a.append_message({"a": 0})
    a.append_message({"a": 1})
    b.append_message({"b": 0})
    replica = kf.open_store(tmp_path / "replica.db")
    ra = replica.load_feed(source.feed_id).load_subfeed("~" + a.subfeed_hash)
    with pytest.raises(kf.MissingMessagesError):
        ra.add_signed_messages(a.get_signed_messages(1))  # starts past the end: refused
    rb = replica.load_feed(source.feed_id).load_subfeed("~" + b.subfeed_hash)
    assert rb.add_signed_messages(b.get_signed_messages()) == 1
    assert ra.get_num_local_messages() == 0
    assert ra.add_signed_messages(a.get_signed_messages()) == 2
    assert rb.get_messages() == [{"b": 0}] and ra.get_messages() == [{"a": 0}, {"a": 1}]


def test_an_import_stores_each_signature_or_null_as_its_source_does(tmp_path):
    """An imported range mixes runs of unsigned and signed messages (parse_range gives them two
    row shapes, inserted run by run): the copy holds exactly the source's rows, in order."""
    src = kf.open_store(tmp_path / "src.db").create_feed().load_subfeed("log")
    src.append_message(0)  # signed
    src.append_messages([1, 2, 3])  # unsigned, unsigned, signed
    src.append_message(4)
    src.append_message(5)  # two signed in a row
    src.append_messages([6, 7])
    lines = src.get_signed_messages()
    assert [line.endswith(b"\t") for line in lines] == [False, True, True, False, False, False, True, False]
    dst = kf.open_store(tmp_path / "dst.db").load_subfeed(src.uri)
    assert dst.add_signed_messages(lines[:2] + lines[2:4]) == 4  # 0-3, then the rest on top
    assert dst.add_signed_messages(lines) == 4
    assert dst.get_signed_messages() == lines
    assert dst.get_messages() == list(range(8))
    assert dst._store.verify().ok


def test_a_subfeed_row_past_the_message_keys_bound_is_refused_and_nothing_is_written(store):
    from kachery_feeds.schema import MAX_SUBFEED_ROW_ID

    feed = store.create_feed()
    feed.load_subfeed("kept").append_message({"i": 0})
    with sqlite3.connect(store.path) as c:  # the next subfeed row gets the id past the bound
        c.execute("INSERT INTO subfeeds(id, feed_id, subfeed_hash) VALUES (?, ?, ?)",
                  (MAX_SUBFEED_ROW_ID, feed.feed_id, kf.subfeed_hash("empty")))
    with pytest.raises(kf.StoreFullError, match="cannot hold another subfeed"):
        feed.load_subfeed("new").append_message({"i": 0})
    assert [s["name"] for s in feed.list_subfeeds()] == ["kept"]
    with sqlite3.connect(store.path) as c:
        rows = c.execute("SELECT count(*) FROM subfeeds WHERE feed_id = ?", (feed.feed_id,)).fetchone()
    assert rows == (2,)  # "kept" and the one inserted above: no row for "new"
    assert store.verify().ok


def test_a_message_number_past_the_message_keys_bound_is_refused(tmp_path):
    from kachery_feeds.schema import MAX_STORED_NUMBER

    path = tmp_path / "feeds.db"
    store = kf.open_store(path)
    sf = store.create_feed().load_subfeed("log")
    sf.append_message({"i": 0})
    uri = sf.uri
    store.close()
    with sqlite3.connect(path) as c:  # as if the subfeed held 2^40 messages: its last is the last key
        c.execute("UPDATE messages SET message_key = message_key + ?", (MAX_STORED_NUMBER,))
    store = kf.open_store(path)
    sf = store.load_subfeed(uri)
    assert sf.get_num_local_messages() == MAX_STORED_NUMBER + 1
    for append in (lambda: sf.append_message({"i": 1}), lambda: sf.append_messages([{"i": 1}, {"i": 2}])):
        with pytest.raises(kf.StoreFullError, match=f"numbered up to {MAX_STORED_NUMBER}"):
            append()
    assert sf.get_num_local_messages() == MAX_STORED_NUMBER + 1
    store.close()


def test_counts_reads_several_subfeeds_as_get_num_local_messages_does(tmp_path):
    """Store.counts: known subfeeds, one never written (0), one another store object creates
    after this one looked for it, more subfeeds than one statement takes, a key given twice."""
    from kachery_feeds.store import COUNTS_PER_STATEMENT

    store = kf.open_store(tmp_path / "feeds.db")
    other = kf.open_store(tmp_path / "feeds.db")
    feed = store.create_feed()
    subfeeds = [feed.load_subfeed(f"s{i}") for i in range(COUNTS_PER_STATEMENT + 6)]
    for i, sf in enumerate(subfeeds):
        if i % 3:
            sf.append_messages([{"i": k} for k in range(i)])
    keys = [(sf.feed_id, sf.subfeed_hash) for sf in subfeeds]
    late = feed.load_subfeed("late")
    late_key = (late.feed_id, late.subfeed_hash)
    assert store.counts([*keys, late_key, keys[1]]) == {
        **{key: sf.get_num_local_messages() for key, sf in zip(keys, subfeeds, strict=True)}, late_key: 0}
    assert store.counts([late_key]) == {late_key: 0}  # looked for, not there
    other.load_subfeed(late.uri).append_messages([{"a": 1}, {"a": 2}])
    assert store.counts([keys[2], late_key]) == {keys[2]: 2, late_key: 2}
    assert store.counts([]) == {}
    other.close()
    store.close()

"""A store made by schema version 2's code (fixtures/store-v2.sqlite, made by
fixtures/make_store_v2.py at c6c87f5) opens with today's: the subfeed rows lose their recorded
count and head hash (version 3 reads both from the last message), the messages move to a table
keyed by one integer (version 4), and everything reads, verifies, appends and imports as
before."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest

import kachery_feeds as kf
from kachery_feeds.schema import SCHEMA_VERSION

FIXTURE = Path(__file__).parent / "fixtures" / "store-v2.sqlite"


@pytest.fixture
def migrated(tmp_path):
    path = tmp_path / "feeds.db"
    shutil.copyfile(FIXTURE, path)
    path.chmod(0o600)
    with sqlite3.connect(path) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == 2
        columns = {r[1] for r in c.execute("PRAGMA table_info(subfeeds)")}
        assert {"count", "head_hash"} <= columns
    store = kf.open_store(path)
    yield store
    store.close()


def test_a_version_2_store_is_migrated_and_reads_as_before(migrated):
    with sqlite3.connect(migrated.path) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        columns = [r[1] for r in c.execute("PRAGMA table_info(subfeeds)")]
        # table_xinfo lists generated columns too: (name, primary key position, hidden kind)
        message_columns = [(r[1], r[5], r[6]) for r in c.execute("PRAGMA table_xinfo(messages)")]
        # the old columns read as before, computed from the key
        rows = c.execute("SELECT message_key, subfeed_id, n FROM messages ORDER BY message_key").fetchall()
        assert c.execute("SELECT count(*) FROM sqlite_master WHERE name = 'messages_v3'").fetchone() == (0,)
    assert columns == ["id", "feed_id", "subfeed_hash", "name", "succession_seq"]
    assert message_columns == [("message_key", 1, 0), ("body", 0, 0), ("sig", 0, 0),
                               ("subfeed_id", 0, 2), ("n", 0, 2)]  # 2: a virtual generated column
    assert len(rows) == 7 + 1 + 5
    assert all(key == (sid << 40) + n for key, sid, n in rows)
    assert migrated.verify().ok
    feeds = {f["name"]: f for f in migrated.list_feeds()}
    mine = migrated.load_feed("mine")
    assert mine.list_subfeeds() == [
        {"subfeed_hash": kf.subfeed_hash("log"), "name": "log", "num_messages": 7},
        {"subfeed_hash": kf.subfeed_hash({"kind": "other"}), "name": {"kind": "other"},
         "num_messages": 1},
    ]  # the empty subfeed row is not listed
    assert mine.get_subfeed_hashes() == [kf.subfeed_hash("log"), kf.subfeed_hash({"kind": "other"})]
    log = mine.load_subfeed("log")
    assert log.get_messages() == [{"i": i} for i in range(7)]
    (theirs_id,) = [f["feed_id"] for name, f in feeds.items() if name is None]
    assert not feeds[None]["is_writeable"]
    theirs = migrated.load_feed(theirs_id)
    assert [s["num_messages"] for s in theirs.list_subfeeds()] == [5]


def test_a_migrated_store_appends_and_imports_where_its_subfeeds_end(migrated, tmp_path):
    log = migrated.load_feed("mine").load_subfeed("log")
    assert log.append_message({"i": 7}) == 7  # links to message 6 (verify checks the chain)
    assert log.append_messages([{"i": 8}, {"i": 9}]) == 9
    assert migrated.verify().ok
    # The whole subfeed, old and new messages, is accepted by a fresh store.
    copy = kf.open_store(tmp_path / "copy.db").load_subfeed(log.uri)
    assert copy.add_signed_messages(log.get_signed_messages()) == 10
    # And the migrated store takes the rest of a range it already holds the start of.
    back = kf.open_store(tmp_path / "back.db")
    again = back.load_subfeed(log.uri)
    again.add_signed_messages(log.get_signed_messages())
    assert migrated.load_subfeed(log.uri).add_signed_messages(again.get_signed_messages(5)) == 0



def _old_store(tmp_path: Path) -> Path:
    path = tmp_path / "feeds.db"
    shutil.copyfile(FIXTURE, path)
    path.chmod(0o600)
    return path


def _converting(path: Path) -> sqlite3.Connection:
    """Another process in the middle of converting the store: its write lock held."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA journal_mode=WAL")
    other.execute("BEGIN IMMEDIATE")
    return other


def test_an_opener_waits_past_the_busy_timeout_for_another_process_converting_the_store(
        tmp_path, monkeypatch, caplog):
    """Before: a store whose conversion took longer than the busy timeout (60 s: a store of
    over ~6M messages) made a second opener fail with "database is locked"."""
    from kachery_feeds import schema
    from kachery_feeds import store as store_module

    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_SECONDS", 0.1)
    path = _old_store(tmp_path)
    other = _converting(path)
    opened: list[kf.Store | BaseException] = []

    def open_it() -> None:
        try:
            opened.append(kf.open_store(path))
        except BaseException as exc:  # reported by the assertion below
            opened.append(exc)

    caplog.set_level("WARNING", logger="kachery.feeds")
    opener = threading.Thread(target=open_it)
    opener.start()
    try:
        deadline = time.monotonic() + 30
        while "waiting for another process" not in caplog.text:  # past its busy timeout
            assert time.monotonic() < deadline and opener.is_alive(), opened
            time.sleep(0.01)
        for step in schema.MIGRATIONS[2:]:  # the other process finishes its conversion
            step(other)
        other.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        other.execute("COMMIT")
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()
        opener.join(30)
    (store,) = opened
    assert isinstance(store, kf.Store), store
    try:
        assert store.load_feed("mine").load_subfeed("log").get_messages() == [{"i": i} for i in range(7)]
        assert store.verify().ok
    finally:
        store.close()


def test_an_opener_that_waited_too_long_for_the_converter_raises_store_busy_and_changes_nothing(
        tmp_path, monkeypatch):
    from kachery_feeds import schema
    from kachery_feeds import store as store_module

    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_SECONDS", 0.05)
    monkeypatch.setattr(schema, "MIGRATION_WAIT_SECONDS", 0.3)
    path = _old_store(tmp_path)
    other = _converting(path)
    try:
        with pytest.raises(kf.StoreBusyError, match="converting the store"):
            kf.open_store(path)
    finally:
        other.execute("ROLLBACK")
        other.close()
    with sqlite3.connect(path) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == 2
    with kf.open_store(path) as store:  # and it converts once the lock is free
        assert store.load_feed("mine").load_subfeed("log").get_num_local_messages() == 7

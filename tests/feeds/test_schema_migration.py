"""A store made by schema version 2's code (fixtures/store-v2.sqlite, made by
fixtures/make_store_v2.py at c6c87f5) opens with today's: the subfeed rows lose their recorded
count and head hash (version 3 reads both from the last message), the messages move to a table
keyed by one integer (version 4), and everything reads, verifies, appends and imports as
before."""

from __future__ import annotations

import shutil
import sqlite3
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


"""Key backups and the restoring state of a store (spec/feeds.md §8), without a network."""

from __future__ import annotations

import sqlite3

import orjson
import pytest

import kachery_feeds as kf


@pytest.fixture
def owner(tmp_path):
    store = kf.open_store(tmp_path / "a.db")
    sf = store.create_feed("notebook").load_subfeed("main")
    sf.append_messages([1, 2, 3])
    yield store, sf
    store.close()


def test_a_restored_key_appends_only_after_the_store_caught_up(owner, tmp_path):
    store_a, sf_a = owner
    backup = store_a.export_key(sf_a.feed_id)
    store_c = kf.open_store(tmp_path / "c.db")
    feed = store_c.restore_key(backup)
    assert feed.feed_id == sf_a.feed_id and feed.is_writeable and store_c.is_restoring(feed.feed_id)
    sf_c = store_c.load_subfeed(sf_a.uri)
    with pytest.raises(kf.FeedRestoringError, match="restored from a backup"):
        sf_c.append_message(4)
    with pytest.raises(kf.RestoreIncompleteError) as info:
        store_c.finish_restore(feed.feed_id, {sf_a.subfeed_hash: 3})
    assert info.value.missing == {sf_a.subfeed_hash: (0, 3)}
    assert store_c.is_restoring(feed.feed_id)
    sf_c.add_signed_messages(sf_a.get_signed_messages())
    # Another process ends the restore: this store's next append sees it.
    other = kf.open_store(tmp_path / "c.db")
    other.finish_restore(feed.feed_id, {sf_a.subfeed_hash: 3})
    assert sf_c.append_message(4) == 3
    sf_a.add_signed_messages(sf_c.get_signed_messages(3))  # chains onto the owner's history
    assert sf_a.get_messages() == [1, 2, 3, 4]
    assert store_c.load_feed("notebook").feed_id == feed.feed_id  # the local name came along
    assert not store_c.verify().problems


def test_unchecked_finish_and_restoring_an_already_held_key(owner, tmp_path):
    store_a, sf_a = owner
    backup = store_a.export_key(sf_a.feed_id)
    assert store_a.restore_key(backup).feed_id == sf_a.feed_id  # held: nothing changes
    assert not store_a.is_restoring(sf_a.feed_id) and sf_a.append_message(4) == 3
    store_c = kf.open_store(tmp_path / "c.db")
    store_c.restore_key(backup)
    store_c.finish_restore(sf_a.feed_id, {sf_a.subfeed_hash: 3}, unchecked=True)
    assert not store_c.is_restoring(sf_a.feed_id)


@pytest.mark.parametrize("change, match", [
    (lambda d: d.update(seed="00" * 32), "not the key of its feed"),
    (lambda d: d.update(seed="AB" * 32), "'seed' is not 64 lowercase hex"),
    (lambda d: d.update(type="something"), "not a kachery feed key backup"),
    (lambda d: d.update(extra=1), "not a kachery feed key backup"),
    (lambda d: d.update(v=2), "unsupported key backup version"),
])
def test_a_damaged_backup_is_refused_and_changes_nothing(owner, tmp_path, change, match):
    store_a, sf_a = owner
    d = orjson.loads(store_a.export_key(sf_a.feed_id))
    change(d)
    store_c = kf.open_store(tmp_path / "c.db")
    with pytest.raises(kf.VerificationError, match=match):
        store_c.restore_key(orjson.dumps(d))
    assert store_c.list_feeds() == []


def test_a_version_1_store_is_migrated(tmp_path):
    import sqlite_utils

    from kachery_feeds.schema import MIGRATIONS

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    MIGRATIONS[0](sqlite_utils.Database(conn))  # the schema as version 1 left it
    conn.execute("INSERT INTO feeds(feed_id, created_ms) VALUES ('ab', 1)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    kf.open_store(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT restoring_since_ms FROM feeds").fetchall() == [(None,)]
    assert conn.execute("SELECT count(*) FROM feed_successions").fetchone() == (0,)

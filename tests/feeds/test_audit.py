"""Store.verify(): a store edited behind kachery_feeds' back is found out, per subfeed, and the
audit changes nothing (issue 11, "local reads never re-verify")."""

from __future__ import annotations

import sqlite3

import pytest

import kachery_feeds as kf


@pytest.fixture
def store(tmp_path):
    s = kf.open_store(tmp_path / "feeds.db")
    feed = s.create_feed()
    log = feed.load_subfeed("log")
    log.append_message({"i": 0})
    log.append_messages([{"i": i} for i in range(1, 6)])  # 1..5, only 5 signed
    log.append_message({"i": 6})
    feed.load_subfeed({"kind": "other"}).append_message("x")
    yield s
    s.close()


def _sql(store: kf.Store, *statements: str, args: tuple = ()) -> None:
    with sqlite3.connect(store.path) as c:
        for statement in statements:
            c.execute(statement, args)


def _dump(store: kf.Store) -> list[str]:
    with sqlite3.connect(store.path) as c:
        return list(c.iterdump())


def test_a_sound_store_verifies(store) -> None:
    before = _dump(store)
    report = store.verify()
    assert report.ok and report.problems == []
    assert (report.feeds, report.subfeeds, report.messages) == (1, 2, 8)
    assert _dump(store) == before


LOG = "(SELECT subfeed_id FROM messages GROUP BY subfeed_id HAVING count(*) = 7)"

EDITS = {
    # what was edited -> (SQL, the first message blamed (None: the subfeed's records), words)
    "an unsigned message's body": (
        f"UPDATE messages SET body = replace(body, '\"i\":3', '\"i\":33') WHERE n = 3 AND subfeed_id = {LOG}",
        3, "do not link"),
    "a signed message's body": (
        f"UPDATE messages SET body = replace(body, '\"i\":5', '\"i\":55') WHERE n = 5 AND subfeed_id = {LOG}",
        5, "do not link"),
    "the last message's body": (
        f"UPDATE messages SET body = replace(body, '\"i\":6', '\"i\":66') WHERE n = 6 AND subfeed_id = {LOG}",
        6, "bad signature"),
    "a signature": (f"UPDATE messages SET sig = zeroblob(64) WHERE n = 5 AND subfeed_id = {LOG}",
                    5, "bad signature"),
    "a deleted message": (f"DELETE FROM messages WHERE n = 2 AND subfeed_id = {LOG}", 2, "missing"),
    "the last two messages deleted": (f"DELETE FROM messages WHERE n >= 5 AND subfeed_id = {LOG}", 4,
                                      "not signed"),
    "a removed signature": (f"UPDATE messages SET sig = NULL WHERE n = 6 AND subfeed_id = {LOG}",
                            6, "not signed"),
    "the subfeed's name": (f"UPDATE subfeeds SET name = '\"other\"' WHERE id = {LOG}", None,
                           "does not hash"),
}


@pytest.mark.parametrize("what", list(EDITS))
def test_edits_are_found_per_subfeed(store, what: str) -> None:
    sql, position, words = EDITS[what]
    _sql(store, sql)
    before = _dump(store)
    report = store.verify()
    assert not report.ok
    log = store.list_feeds()[0]["feed_id"], kf.subfeed_hash("log")
    assert set(report.by_subfeed()) == {log}, report.problems  # the other subfeed is sound
    assert report.first_bad_position(*log) == position, report.problems
    assert any(words in p.message for p in report.problems), report.problems
    assert _dump(store) == before  # the audit changed nothing


def test_a_replaced_private_key_is_found(store) -> None:
    _sql(store, "UPDATE feeds SET private_key = zeroblob(32)")
    report = store.verify()
    assert [p.message for p in report.problems] == [
        "the private key stored for this feed is not its key"]


def test_orphan_messages_and_bad_fork_proofs_are_found(store, tmp_path) -> None:
    _sql(store, "INSERT INTO messages (message_key, body, sig) VALUES (999 << 40, x'7b7d', NULL)")
    _sql(store, "INSERT INTO fork_proofs (feed_id, subfeed_hash, position, proof_sha256, proof, "
                "detected_ms) VALUES (?, ?, 0, x'00', x'7b7d', 0)",
         args=("ab" * 32, "cd" * 20))
    messages = [p.message for p in store.verify().problems]
    assert any("belong to no subfeed" in m for m in messages), messages
    assert any("fork proof" in m and "invalid" in m for m in messages), messages


def test_a_tail_cut_back_to_a_signed_message_is_a_shorter_sound_subfeed(store) -> None:
    """Schema version 3 records no count apart from the messages (a subfeed ends at its last
    message), so a cut back to a signed message leaves a sound, shorter subfeed: only a peer or
    a witnessed checkpoint can tell that it was longer. The next append links to what is left."""
    _sql(store, f"DELETE FROM messages WHERE n = 6 AND subfeed_id = {LOG}")
    assert store.verify().ok
    log = store.load_feed(store.list_feeds()[0]["feed_id"]).load_subfeed("log")
    assert log.get_num_local_messages() == 6
    assert log.append_message({"i": "after the cut"}) == 6
    assert store.verify().ok

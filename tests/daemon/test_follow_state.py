"""The daemon's remembered follows and provided subscriptions (SQLite tables written row by row):
what an older daemon's JSON files become, and what each write changes."""

from __future__ import annotations

import json
import time

from kachery_node.daemon.provided_subscriptions import ProvidedSubscriptions
from kachery_node.protocol.feed_messages import SavedSubscription, SaveSubscriptions
from kachery_node.storage.followed_subfeeds import FollowedSubfeed, FollowedSubfeeds, read_followed

FEED, SUB, OTHER = "ab" * 32, "cd" * 20, "ef" * 20


def test_an_older_daemons_followed_list_moves_into_the_table_once(tmp_path):
    legacy = tmp_path / "followed-subfeeds.json"
    legacy.write_text(json.dumps([
        {"feed_id": FEED, "subfeed_hash": SUB, "channel": "lab", "last_read": 1000.5},
        {"feed_id": FEED, "subfeed_hash": OTHER, "channel": None},  # older still: no last_read
    ]))
    before = time.time()
    rows = read_followed(tmp_path)
    assert [(r.subfeed_hash, r.channel) for r in rows] == [(SUB, "lab"), (OTHER, None)]
    assert rows[0].last_read == 1000.5 and rows[1].last_read >= before
    assert not legacy.exists()  # taken in, then removed
    # A file that reappears after the move (a crash between the commit and the removal) is
    # only removed, not taken in again over later changes.
    table = FollowedSubfeeds(tmp_path)
    assert table.remove(FEED, SUB) and not table.remove(FEED, SUB)
    table.close()
    legacy.write_text(json.dumps([{"feed_id": FEED, "subfeed_hash": SUB, "channel": "lab"}]))
    assert [r.subfeed_hash for r in read_followed(tmp_path)] == [OTHER] and not legacy.exists()


def test_follows_are_written_row_by_row_in_the_order_first_followed(tmp_path):
    assert read_followed(tmp_path) == []  # nothing followed: no table either
    table = FollowedSubfeeds(tmp_path)
    hashes = [f"{i:040x}" for i in range(3000)]
    table.put(FollowedSubfeed(FEED, h, None, 1.0) for h in hashes)
    table.put([FollowedSubfeed(FEED, hashes[0], "lab", 2.0)])  # updated in place
    table.set_last_read(FEED, hashes[1], 3.0)
    table.set_last_read(FEED, SUB, 3.0)  # not followed: nothing
    table.close()
    rows = read_followed(tmp_path)
    assert [r.subfeed_hash for r in rows] == hashes
    assert (rows[0].channel, rows[0].last_read, rows[1].last_read) == ("lab", 2.0, 3.0)


def test_provided_subscriptions_save_what_changed_and_drop_the_expired(tmp_path):
    legacy = tmp_path / "provided-subscriptions.json"
    legacy.write_text(json.dumps([{"channel": "lab", "feed_id": FEED, "subfeed_hash": SUB,
                                   "expires": 2000.0}]))
    saved = ProvidedSubscriptions(tmp_path / "provided-subscriptions.db")
    assert saved.load() == [SavedSubscription("lab", FEED, SUB, 2000.0)] and not legacy.exists()
    saved.save(SaveSubscriptions((SavedSubscription("lab", FEED, OTHER, 3000.0),), expired_before=1000.0))
    assert sorted(saved.load(), key=lambda r: r.expires) == [SavedSubscription("lab", FEED, SUB, 2000.0),
                                                             SavedSubscription("lab", FEED, OTHER, 3000.0)]
    saved.save(SaveSubscriptions((SavedSubscription("lab", FEED, OTHER, 3100.0),), expired_before=2000.0))
    assert saved.load() == [SavedSubscription("lab", FEED, OTHER, 3100.0)]  # renewed; SUB expired
    saved.close()
    reopened = ProvidedSubscriptions(tmp_path / "provided-subscriptions.db")
    assert reopened.load() == [SavedSubscription("lab", FEED, OTHER, 3100.0)]
    reopened.close()
    nowhere = ProvidedSubscriptions(None)  # no storage: nothing kept, nothing raised
    nowhere.save(SaveSubscriptions((SavedSubscription("lab", FEED, SUB, 1.0),)))
    assert nowhere.load() == []

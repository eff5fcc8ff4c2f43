"""Published feeds (issue 14): an owner keeps a feed's bucket copy current whether or not anyone
follows it, so a reader catches up while the owner is offline, even with no daemon of its own."""

from __future__ import annotations

import json
import time

import kachery_feeds as kf
from kachery_node.protocol.bucket_layout import subfeed_head_path, subfeed_segment_path
from kachery_node.protocol.feed_bucket import parse_head
from tests.network.conftest import ALL_ROLES


def wait_bucket_count(lab, node, feed_id: str, subfeed_hash: str, count: int, timeout: float = 20) -> None:
    """Wait until the channel bucket's head of the subfeed says ``count`` messages."""
    head = lab.bucket_object(subfeed_head_path(lab.channel, feed_id, subfeed_hash))
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        if head.exists():
            seen = parse_head(head.read_bytes()).count
            if seen == count:
                return
        time.sleep(0.1)
    raise AssertionError(f"bucket head count {seen}, expected {count}\n{node.log()[-3000:]}")


def test_published_feed_is_kept_current_in_the_bucket_with_no_follower(lab):
    alice = lab.add_node("alice", ALL_ROLES)
    store = kf.open_store(alice.storage_dir / "feeds.db")
    feed = store.create_feed()
    notes = feed.load_subfeed("notes")
    notes.append_messages([{"i": i} for i in range(1500)])
    # The CLI: one subfeed, and the whole feed (a subfeed created later is published too).
    alice.run("feed", "publish", notes.uri, "--channel", lab.channel)
    alice.run("feed", "publish", feed.uri, "--channel", lab.channel)
    listed = alice.json("feed", "published")["published"]
    assert {"uri": feed.uri, "channel": lab.channel} in listed and len(listed) == 2
    wait_bucket_count(lab, alice, feed.feed_id, notes.subfeed_hash, 1500)
    assert lab.bucket_object(subfeed_segment_path(lab.channel, feed.feed_id, notes.subfeed_hash, 0)).exists()
    notes.append_message({"i": 1500})  # each append reaches the bucket, nobody subscribed
    wait_bucket_count(lab, alice, feed.feed_id, notes.subfeed_hash, 1501)
    later = feed.load_subfeed("later")
    later.append_message("made after publishing the feed")
    wait_bucket_count(lab, alice, feed.feed_id, later.subfeed_hash, 1)

    # Remembered across restarts: appended while the daemon is down, uploaded once it is back.
    alice.stop()
    notes.append_message({"i": 1501})
    alice.start()
    wait_bucket_count(lab, alice, feed.feed_id, notes.subfeed_hash, 1502)

    # Unpublishing stops the updates of that publication (the whole feed's still covers notes).
    assert alice.json("feed", "unpublish", feed.uri)["removed"] == 1
    later.append_message("not uploaded")
    notes.append_message({"i": 1502})
    wait_bucket_count(lab, alice, feed.feed_id, notes.subfeed_hash, 1503)
    head = lab.bucket_object(subfeed_head_path(lab.channel, feed.feed_id, later.subfeed_hash))
    assert parse_head(head.read_bytes()).count == 1


def test_publish_refuses_what_it_cannot_do(lab):
    alice = lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ALL_ROLES, start=False)
    sf = kf.open_store(alice.storage_dir / "feeds.db").create_feed().load_subfeed("x")
    sf.append_message(1)
    # Not the owner: refused, nothing written.
    proc = bob.run("feed", "publish", sf.uri, "--channel", lab.channel, check=False)
    assert proc.returncode != 0 and "does not own" in proc.stderr, proc.stderr
    assert not (bob.storage_dir / "published-feeds.json").exists()
    # A channel not joined: refused.
    proc = alice.run("feed", "publish", sf.uri, "--channel", "elsewhere", check=False)
    assert proc.returncode != 0 and "not joined" in proc.stderr, proc.stderr
    assert json.loads(alice.run("feed", "published", "--json").stdout) == {"published": []}
    proc = alice.run("feed", "unpublish", sf.uri, check=False)
    assert proc.returncode != 0 and "not published" in proc.stderr

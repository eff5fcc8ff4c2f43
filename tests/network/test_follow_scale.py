"""Following many subfeeds (issue 15 item 5): a bulk follow through the real daemon, what is
remembered when daemons are killed, and renewals that cost one message per feed and batch, not
one per subfeed."""

from __future__ import annotations

import json
import sqlite3
import time

import httpx
import pytest

import kachery_feeds as kf
from kachery_node.protocol.bucket_layout import subfeed_checkpoint_path
from kachery_node.protocol.witness_gate import POLICY_SUBFEED_HASH
from tests.network.conftest import ALL_ROLES
from tests.network.test_faults import wait_until


def _make_subfeeds(node, n: int) -> tuple[kf.Feed, list[kf.Subfeed]]:
    feed = kf.open_store(node.storage_dir / "feeds.db").create_feed()
    subfeeds = [feed.load_subfeed(f"s{i}") for i in range(n)]
    for i, sf in enumerate(subfeeds):
        sf.append_message({"i": i})
    return feed, subfeeds


def _held(node, feed_id: str, at_least: int = 1) -> int:
    """How many subfeeds of the feed ``node`` holds at least ``at_least`` messages of."""
    listed = kf.open_store(node.storage_dir / "feeds.db").load_feed(feed_id).list_subfeeds()
    return sum(1 for s in listed if s["num_messages"] >= at_least)


def _bulk_follow(node, uris: list[str]) -> tuple[dict, float]:
    started = time.monotonic()
    answer = node.client.request("POST", "/api/feeds/follow", json_body={"uris": uris}, timeout=120)
    return answer, time.monotonic() - started


def _saved_subscriptions(node) -> list[tuple[str, float]]:
    """(subfeed hash, wall-clock expiry) of the provider's saved subscriptions (its table), but
    the feed's witness policy subfeed's, which every follower follows too."""
    conn = sqlite3.connect(node.storage_dir / "provided-subscriptions.db", timeout=30)
    try:
        return conn.execute("SELECT subfeed_hash, expires FROM subscriptions WHERE subfeed_hash != ?",
                            (POLICY_SUBFEED_HASH,)).fetchall()
    finally:
        conn.close()


def _relay_messages_in(owner) -> int:
    status = json.loads(owner.run("hub", "status", "--json").stdout)
    return sum(ch["relay"]["messages_in"] for ch in status["channels"])


@pytest.mark.slow
def test_following_2000_subfeeds_is_one_quick_request_remembered_through_a_kill(lab):
    n = 2000
    alice = lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ["request-feeds"])
    feed, subfeeds = _make_subfeeds(alice, n)
    uris = [sf.uri for sf in subfeeds]

    answer, took = _bulk_follow(bob, uris)
    assert answer == {"following": ["lab"], "followed": n, "local": []}
    # One request, one write of 2000 rows (it was one request and one rewrite of the whole
    # list per subfeed: O(N^2)); generous for a loaded machine.
    assert took < 30, f"following {n} subfeeds took {took:.1f} s"

    # Killed at once: every follow answered is remembered.
    bob.kill()
    wait_until(lambda: not bob.client.is_running(), 10, "bob's daemon to die")
    listed = bob.json("feed", "followed")["followed"]
    assert sorted(row["uri"] for row in listed) == sorted(f"feed://{feed.feed_id}/~{sf.subfeed_hash}"
                                                          for sf in subfeeds)

    bob.start()
    lab.wait_connected(bob)
    wait_until(lambda: _held(bob, feed.feed_id) == n, 240, f"bob holding all {n} subfeeds", alice, bob)
    # They are followed live: a new message on any of them comes.
    picked = [0, n // 2, n - 1]
    for i in picked:
        subfeeds[i].append_message({"i": i, "live": True})
    replica = kf.open_store(bob.storage_dir / "feeds.db")
    wait_until(lambda: all(replica.load_subfeed(uris[i]).get_num_local_messages() == 2 for i in picked),
               30, "the live messages", alice, bob)


def test_a_bad_uri_in_a_bulk_follow_follows_none(lab):
    alice = lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ["request-feeds"])
    _feed, subfeeds = _make_subfeeds(alice, 3)
    token = (bob.storage_dir / "daemon-token").read_text().strip()
    for body in ({"uris": [subfeeds[0].uri, "feed://nope"]}, {"uris": subfeeds[0].uri},
                 {"uris": [subfeeds[0].uri], "uri": subfeeds[1].uri}):
        r = httpx.post(f"{bob.client.base_url}/api/feeds/follow", json=body,
                       headers={"Authorization": "Bearer " + token}, timeout=10)
        assert r.status_code == 400, (body, r.text)
    assert bob.json("feed", "followed")["followed"] == []
    # The owner's own subfeeds need no following: said, not followed.
    answer = alice.client.request("POST", "/api/feeds/follow", json_body={"uris": [subfeeds[0].uri]})
    assert answer == {"following": [], "followed": 0, "local": [subfeeds[0].uri]}


@pytest.mark.slow
def test_renewals_of_many_subfeeds_travel_batched_and_survive_a_provider_kill(lab):
    n = 600  # more than one subscribeToSubfeeds holds (500)
    alice = lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ["request-feeds"])
    feed, subfeeds = _make_subfeeds(alice, n)
    answer, _took = _bulk_follow(bob, [sf.uri for sf in subfeeds])
    assert answer["followed"] == n
    wait_until(lambda: _held(bob, feed.feed_id) == n, 180, f"bob holding all {n} subfeeds", alice, bob)
    # The provider's bucket work settles (each head's checkpoint witnessed and announced) before
    # counting: those announcements are not renewals.
    checkpoints = [lab.bucket_object(subfeed_checkpoint_path("lab", feed.feed_id, sf.subfeed_hash))
                   for sf in subfeeds]
    wait_until(lambda: all(c.exists() for c in checkpoints), 180, "every checkpoint in the bucket",
               alice, bob)
    saved = _saved_subscriptions(alice)
    assert len(saved) == n

    # Wait for every subscription to be renewed (its saved expiry moved past any set before),
    # counting what the relay carried meanwhile: a renewal of n subfeeds of one feed is
    # ceil(n / 500) messages, not n.
    since = time.time()
    before = _relay_messages_in(alice)
    wait_until(lambda: min(e for _h, e in _saved_subscriptions(alice)) > since + 60, 60,
               "every subscription renewed", alice, bob)
    carried = _relay_messages_in(alice) - before
    assert carried < n // 10, f"{carried} relay messages for one renewal of {n} subfeeds"

    # The provider is killed right after those saves: it lost none of them, and after its
    # restart the reader keeps getting live messages without having to subscribe again.
    alice.kill()
    wait_until(lambda: not alice.client.is_running(), 10, "alice's daemon to die")
    killed_at = time.time()
    rows = _saved_subscriptions(alice)
    assert len(rows) == n and min(e for _h, e in rows) > killed_at
    alice.start()
    lab.wait_connected(alice)
    picked = [0, 499, 500, n - 1]  # in both batches
    for i in picked:
        subfeeds[i].append_message({"i": i, "live": True})
    replica = kf.open_store(bob.storage_dir / "feeds.db")
    wait_until(lambda: all(replica.load_subfeed(subfeeds[i].uri).get_num_local_messages() == 2
                           for i in picked), 15, "the live messages after the restart", alice, bob)

"""Unfollowing remote subfeeds (issue 14): by hand, and by the daemon when nobody reads one."""

from __future__ import annotations

import time

import pytest

import kachery_feeds as kf
from kachery_node.storage.followed_subfeeds import read_followed
from tests.network.conftest import ALL_ROLES


def _followed(node) -> list[str]:
    return [r.subfeed_hash for r in read_followed(node.storage_dir)]


def _wait(predicate, what: str, node, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s\n{node.log()[-3000:]}")
        time.sleep(0.1)


#: [daemon.feeds] unfollow_idle for the test (default 7 days): long enough for the two commands
#: between the idle subfeed's last read and the check that it is still followed, even on a loaded
#: machine (a command takes 1-3 s there); every second of it is waited for.
IDLE_S = 15


@pytest.mark.slow
def test_unfollow_by_hand_and_after_idling(lab):
    alice = lab.add_node("alice", ALL_ROLES)
    feed = kf.open_store(alice.storage_dir / "feeds.db").create_feed()
    kept, idle = feed.load_subfeed("kept"), feed.load_subfeed("idle")
    kept.append_messages([1, 2, 3])
    idle.append_messages([1, 2, 3])
    bob = lab.add_node("bob", ["request-feeds"], start=False)
    with open(bob.storage_dir / "config.toml", "a") as f:
        f.write(f"\n[daemon.feeds]\nunfollow_idle = {IDLE_S}\n")
    bob.start()
    lab.wait_connected(bob)
    assert bob.run("feed", "tail", kept.uri).stdout.split() == ["1", "2", "3"]
    assert bob.run("feed", "tail", idle.uri).stdout.split() == ["1", "2", "3"]
    assert set(_followed(bob)) == {kept.subfeed_hash, idle.subfeed_hash}
    listed = bob.json("feed", "followed")["followed"]
    expected = {f"feed://{feed.feed_id}/~{s.subfeed_hash}" for s in (kept, idle)}
    assert {row["uri"] for row in listed} == expected
    assert all(row["channel"] is None and time.time() - row["last_read"] < 60 for row in listed)

    # By hand: no longer followed (also after a restart), its messages still here.
    assert bob.json("feed", "unfollow", kept.uri) == {"uri": kept.uri, "unfollowed": True}
    assert _followed(bob) == [idle.subfeed_hash]
    proc = bob.run("feed", "unfollow", kept.uri, check=False)
    assert proc.returncode != 0 and "is not followed" in proc.stderr
    assert bob.run("feed", "tail", kept.uri, "--channel", "*local*").stdout.split() == ["1", "2", "3"]

    # Idle: nobody read it for IDLE_S s, so the daemon stops following it; its messages stay.
    # (Up to `_followed(bob) == [idle...]` above, the steps take two commands after its last read.)
    _wait(lambda: _followed(bob) == [], "the idle subfeed was not unfollowed", bob, timeout=60)
    assert f"nobody read it for {IDLE_S} s" in bob.log()
    replica = kf.open_store(bob.storage_dir / "feeds.db").load_subfeed(idle.uri)
    assert replica.get_messages() == [1, 2, 3]
    # Reading it again follows it again (and catches up).
    idle.append_message(4)
    assert bob.run("feed", "tail", idle.uri).stdout.split()[:3] == ["1", "2", "3"]
    assert _followed(bob) == [idle.subfeed_hash]

    # Without a daemon, unfollow edits the daemon's list itself.
    bob.stop()
    assert bob.json("feed", "unfollow", idle.uri)["unfollowed"] is True
    assert _followed(bob) == []


def test_a_bad_unfollow_setting_stops_the_daemon_from_starting(lab):
    alice = lab.add_node("alice", ALL_ROLES, start=False)
    with open(alice.storage_dir / "config.toml", "a") as f:
        f.write("\n[daemon.feeds]\nunfollow_idle = -1\n")
    proc = alice.run("node", "start", check=False)
    assert proc.returncode != 0
    assert "unfollow_idle" in proc.stderr + alice.log(), proc.stderr

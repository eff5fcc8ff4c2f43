"""Live feeds between two real nodes through a real hub, relay and bucket."""

from __future__ import annotations

import time

import kachery_feeds as kf
from tests.network.conftest import ALL_ROLES


def test_follow_a_remote_feed_live(lab):
    alice = lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ["request-feeds", "request-files"])
    source = kf.open_store(alice.storage_dir / "feeds.db").create_feed().load_subfeed("notes")
    source.append_messages([{"i": i} for i in range(2500)])  # more than two bucket segments
    answer = bob.client.request("POST", "/api/feeds/follow", json_body={"uri": source.uri})
    assert answer["following"] == ["lab"]
    replica = kf.open_store(bob.storage_dir / "feeds.db").load_subfeed(source.uri)
    got = []
    for m in replica.follow(start=0, timeout=15):  # ends early only if messages stop coming
        got.append(m["i"])
        if len(got) == 2500:
            break
    assert got == list(range(2500))
    # Live: each new append reaches bob's store within milliseconds.
    latencies = []
    for i in range(30):
        n = replica.get_num_local_messages()  # before the append: a fast push can beat this read
        t0 = time.monotonic()
        source.append_message({"live": i})
        while replica.get_num_local_messages() <= n:
            assert time.monotonic() - t0 < 10, bob.log()[-2000:]
            time.sleep(0.0005)
        latencies.append((time.monotonic() - t0) * 1000)
    latencies.sort()
    assert latencies[len(latencies) // 2] < 200, latencies
    assert replica.get_messages(2500) == [{"live": i} for i in range(30)]
    assert not replica.is_writeable


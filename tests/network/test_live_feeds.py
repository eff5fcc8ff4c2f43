"""Live feeds between two real nodes through a real hub, relay and bucket."""

from __future__ import annotations

import json
import time

import orjson
import trio

import kachery_feeds as kf
from kachery_node.identity import load_node_key
from kachery_node.protocol.feed_messages import NewSubfeedMessages
from kachery_node.protocol.node_messages import seal_unsigned_push
from kachery_node.protocol.roles import ROLE_BANDS, band_name
from kachery_node.transport.hub_client import HubClient
from kachery_node.transport.pubsub.open_pubsub import open_pubsub
from tests.network.conftest import ALL_ROLES
from tests.network.test_faults import follow, wait_until


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
    if lab.backends.startswith("embedded"):  # (NATS and Ably echo on every band)
        # Every message on the channel reached exactly one node (bob's subscriptions alice,
        # alice's pushes and announcements bob): nodes subscribe to the feed bands without echo,
        # so alice's pushes do not come back to her (spec/pubsub.md). One may have reached
        # nobody: alice's providerConnected, published as she connected, before bob was there.
        status = json.loads(alice.run("hub", "status", "--json").stdout)
        relay = next(ch["relay"] for ch in status["channels"])
        assert relay["messages_in"] - 1 <= relay["messages_out"] <= relay["messages_in"], relay
        assert relay["messages_out"] > 30, relay



def test_unsigned_pushes_carry_the_feed_and_a_forged_one_is_rejected(lab):
    """Live pushes between nodes of this version go without an envelope signature
    (spec/node-protocol.md, Unsigned pushes): what protects them is the feed's signatures. A
    member who may provide feeds publishes, through the real pub-sub service with its own
    credentials, an unsigned push holding a tampered message: the follower rejects it and stores
    nothing; the same message untampered is stored (it is the owner's); an unsigned message of
    another type is dropped as forged."""
    alice = lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ["request-feeds", "request-files"])
    mallory = lab.add_node("mallory", ["provide-feeds"], start=False)
    scratch = kf.open_store(lab.root / "scratch-owner.db").create_feed().load_subfeed("notes")
    for i in range(5):
        scratch.append_message({"i": i})  # each signed: each verifies alone
    lines = scratch.get_signed_messages(0, 5)
    # Alice provides a verified copy of the first 3 messages; bob follows it live.
    kf.open_store(alice.storage_dir / "feeds.db").load_subfeed(scratch.uri).add_signed_messages(lines[:3])
    follow(bob, scratch.uri)
    replica = kf.open_store(bob.storage_dir / "feeds.db").load_subfeed(scratch.uri)
    wait_until(lambda: replica.get_num_local_messages() == 3, 20, "bob to catch up", bob)
    tampered = lines[3].replace(b'"i":3', b'"i":9')
    assert tampered != lines[3]
    publish_as(lab, mallory, [push_body(scratch, tampered)])
    rejected = (f"rejected messages for feed://{scratch.feed_id}/~{scratch.subfeed_hash} "
                f"from {mallory.node_id[:12]}")
    wait_until(lambda: rejected in bob.log(), 20, "bob to reject the tampered push", bob)
    assert replica.get_num_local_messages() == 3
    forged = (b"\x03" + orjson.dumps({"type": "subfeedUploaded", "feed_id": scratch.feed_id,
                                      "subfeed_hash": scratch.subfeed_hash, "count": 5}) + b"\nx")
    publish_as(lab, mallory, [forged, push_body(scratch, lines[3])])
    wait_until(lambda: replica.get_num_local_messages() == 4, 20, "bob to store the genuine push", bob)
    assert "only newSubfeedMessages on provide-feeds may go unsigned" in bob.log()
    assert replica.get_messages() == [{"i": i} for i in range(4)]


def push_body(subfeed: kf.Subfeed, line: bytes) -> bytes:
    message = NewSubfeedMessages(subfeed.feed_id, subfeed.subfeed_hash, (line,))
    return seal_unsigned_push(band="provide-feeds", body=message.to_body(), attachment=message.attachment())


def publish_as(lab, node, messages: list[bytes]) -> None:
    """Publish ``messages`` as they are on provide-feeds, with ``node``'s own fresh pub-sub
    credentials (an Ably token request is good once)."""
    with HubClient(lab.hub.url, node_key=load_node_key(node.storage_dir)) as hub:
        credentials = hub.pubsub_credentials("lab")
    trio.run(_publish, credentials, messages)


async def _publish(credentials, messages: list[bytes]) -> None:
    with trio.fail_after(10):
        async with open_pubsub(credentials) as pubsub:
            for data in messages:
                await pubsub.publish(band_name("lab", ROLE_BANDS["provide-feeds"][0]), data, ack=True)

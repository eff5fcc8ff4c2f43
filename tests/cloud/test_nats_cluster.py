# ruff: noqa: E501
"""Two clustered nats-servers: nodes on different members exchange a live feed."""

from __future__ import annotations

import time

import httpx

import kachery_feeds as kf
from tests.hub.conftest import HubProcess
from tests.network.conftest import ALL_ROLES, Lab
from tests.standins import NatsCluster


def test_two_nodes_on_different_cluster_members_exchange_a_live_feed(tmp_path):
    """Alice's daemon connects to member 0, then the owner points the channel at member 1 and Bob
    connects there: the feed crosses the cluster route."""
    cluster = NatsCluster(tmp_path / "nats", size=2)
    hub = HubProcess(tmp_path / "hub")
    seed = cluster.seed_file(tmp_path / "seed")
    lab = Lab(tmp_path, hub, create_args=("--pubsub", cluster.url(0), "--nats-account-seed", str(seed)))
    try:
        alice = lab.add_node("alice", ALL_ROLES)
        lab.owner.run("channel", "configure", "lab", "--pubsub", cluster.url(1), "--nats-account-seed", str(seed))
        bob = lab.add_node("bob", ["request-feeds"])
        assert cluster.url(1) in lab.owner.run("channel", "show", "lab").stdout
        assert _connections(cluster, 0) == 1 and _connections(cluster, 1) == 1  # one daemon on each member
        source = kf.open_store(alice.storage_dir / "feeds.db").create_feed().load_subfeed("notes")
        source.append_messages([{"i": i} for i in range(3)])
        bob.client.request("POST", "/api/feeds/follow", json_body={"uri": source.uri})
        replica = kf.open_store(bob.storage_dir / "feeds.db").load_subfeed(source.uri)
        got = []
        for m in replica.follow(start=0, timeout=15):
            got.append(m)
            if len(got) == 3:
                break
        assert got == [{"i": i} for i in range(3)]
        for i in range(5):
            n = replica.get_num_local_messages()
            source.append_message({"live": i})
            deadline = time.monotonic() + 10
            while replica.get_num_local_messages() <= n:
                assert time.monotonic() < deadline, bob.log()[-2000:]
                time.sleep(0.002)
        assert replica.get_messages(3) == [{"live": i} for i in range(5)]
    finally:
        lab.stop()
        hub.stop()
        cluster.stop()


def _connections(cluster: NatsCluster, member: int) -> int:
    return httpx.get(f"http://127.0.0.1:{cluster.monitor_ports[member]}/connz", timeout=5).json()["num_connections"]


def test_owner_moves_a_live_channel_from_the_embedded_relay_to_nats(tmp_path):
    cluster = NatsCluster(tmp_path / "nats")
    hub = HubProcess(tmp_path / "hub")
    lab = Lab(tmp_path, hub)
    try:
        alice = lab.add_node("alice", ALL_ROLES)
        bob = lab.add_node("bob", ["request-feeds"])
        source = kf.open_store(alice.storage_dir / "feeds.db").create_feed().load_subfeed("notes")
        source.append_message({"before": 0})
        bob.client.request("POST", "/api/feeds/follow", json_body={"uri": source.uri})
        replica = kf.open_store(bob.storage_dir / "feeds.db").load_subfeed(source.uri)
        _wait(lambda: replica.get_num_local_messages() == 1, "the first message", bob)
        assert _connections(cluster, 0) == 0
        seed = cluster.seed_file(tmp_path / "seed")
        out = lab.owner.run("channel", "configure", "lab", "--pubsub", cluster.url(), "--nats-account-seed", str(seed))
        assert "pub-sub nats" in out.stdout
        _wait(lambda: _connections(cluster, 0) == 2, "both daemons on NATS", alice)
        lab.wait_connected(alice)
        lab.wait_connected(bob)
        for i in range(3):
            n = replica.get_num_local_messages()
            source.append_message({"after": i})
            _wait(lambda n=n: replica.get_num_local_messages() > n, f"live message {i} through NATS", bob)
        assert replica.get_messages(1) == [{"after": i} for i in range(3)]
    finally:
        lab.stop()
        hub.stop()
        cluster.stop()


def _wait(cond, what: str, node, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{node.log()[-2000:]}"
        time.sleep(0.05)

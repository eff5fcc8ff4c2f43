"""Witnessed checkpoints and forks as channel knowledge (spec/witness.md), on a real hub, relay,
bucket and daemons as processes."""

from __future__ import annotations

import sqlite3
import time

import httpx

import kachery_feeds as kf
from kachery_feeds.checkpoints import parse_witnessed_checkpoint
from kachery_node.protocol.bucket_layout import subfeed_checkpoint_path, subfeed_fork_path
from tests.network.conftest import ALL_ROLES


def _wait(what: str, check, timeout: float = 30, logs=()) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n" + "\n".join(n.log()[-3000:] for n in logs))
        time.sleep(0.05)


def _checkpoint(lab, sf):
    obj = lab.bucket_object(subfeed_checkpoint_path(lab.channel, sf.feed_id, sf.subfeed_hash))
    return parse_witnessed_checkpoint(obj.read_bytes()) if obj.exists() else None


def _restore_key(source: kf.Subfeed, target_db) -> kf.Subfeed:
    """The owner's key and messages restored from a backup into another storage's store."""
    with sqlite3.connect(source._store.path) as src:
        (key,) = src.execute("SELECT private_key FROM feeds WHERE feed_id=?", (source.feed_id,)).fetchone()
    store = kf.open_store(target_db)
    copy = store.load_subfeed(source.uri)
    copy.add_signed_messages(source.get_signed_messages())
    with sqlite3.connect(target_db) as dst:
        dst.execute("UPDATE feeds SET private_key=? WHERE feed_id=?", (key, source.feed_id))
    return kf.open_store(target_db).load_subfeed(source.uri)


def test_the_hub_witnesses_provided_subfeeds(lab):
    alice = lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ["request-feeds", "request-files"])
    hub_witness = httpx.get(f"{lab.hub.url}/api/hub", timeout=10).json()["witness"]
    source = kf.open_store(alice.storage_dir / "feeds.db").create_feed().load_subfeed("notes")
    source.append_messages([{"i": i} for i in range(1500)])
    bob.client.request("POST", "/api/feeds/follow", json_body={"uri": source.uri})
    cp = _wait("a witnessed checkpoint at 1500",
               lambda: (c := _checkpoint(lab, source)) and c.checkpoint.size == 1500 and c, logs=[alice])
    assert cp.witnesses() == [hub_witness]
    source.append_message({"i": "later"})
    cp = _wait("the checkpoint to follow",
               lambda: (c := _checkpoint(lab, source)) and c.checkpoint.size == 1501 and c)
    assert cp.witnesses() == [hub_witness]
    t = cp.cosignatures[0].timestamp
    assert abs(t - time.time()) < 60
    # the timeline, from the command line: when message 1500 existed, and who says so
    out = bob.run("feed", "verify", source.uri, "--witnesses").stdout
    assert "1501 messages" in out and "witnessed by the hub" in out, out


def test_a_split_view_is_detected_and_proven_channel_wide(lab):
    alice = lab.add_node("alice", ALL_ROLES)
    carol = lab.add_node("carol", ALL_ROLES)  # will hold alice's key, restored from a backup
    bob = lab.add_node("bob", ["request-feeds", "request-files"])
    source = kf.open_store(alice.storage_dir / "feeds.db").create_feed().load_subfeed("notes")
    source.append_messages([{"i": i} for i in range(3)])
    bob.client.request("POST", "/api/feeds/follow", json_body={"uri": source.uri})
    _wait("the checkpoint at 3", lambda: (c := _checkpoint(lab, source)) and c.checkpoint.size == 3,
          logs=[alice])
    restored = _restore_key(source, carol.storage_dir / "feeds.db")
    # The owner shows two histories: alice's and carol's message 3 differ.
    source.append_message({"i": 3, "from": "alice"})
    restored.append_message({"i": 3, "from": "carol"})
    fork_object = lab.bucket_object(subfeed_fork_path(lab.channel, source.feed_id, source.subfeed_hash))
    _wait("the fork proof in the bucket", fork_object.exists, logs=[alice, carol, bob])
    assert kf.verify_fork_proof(fork_object.read_bytes()).position == 3
    # Every member holds a verified proof, and so does the hub's witness.
    for node in (alice, bob, carol):
        store = kf.open_store(node.storage_dir / "feeds.db")
        _wait(f"{node.label} to know the fork", lambda s=store: s.get_fork_proofs(source.feed_id),
              logs=[node])
    witness_store = kf.open_store(lab.hub.dir / "witness" / "witness-feeds.db")
    _wait("the witness to know the fork", lambda: witness_store.get_fork_proofs(source.feed_id))
    # Neither branch goes on: the witness refuses alice's next checkpoint, bob takes nothing past 3.
    source.append_message({"i": 4, "from": "alice"})
    _wait("the witness to refuse", lambda: "the witness refused" in alice.log(), logs=[alice])
    bob_copy = kf.open_store(bob.storage_dir / "feeds.db").load_subfeed(source.uri)
    _wait("bob to refuse message 4", lambda: "no message at or past the fork" in bob.log(), logs=[bob])
    assert bob_copy.get_num_local_messages() <= 4
    info = bob.json("feed", "info", source.uri, "--json")
    assert info["fork"]["position"] == 3, info
    assert "FORK" in bob.run("feed", "info", source.uri).stdout
    # A member who was not there learns it from the bucket when it starts following.
    erin = lab.add_node("erin", ["request-feeds", "request-files"])
    erin.client.request("POST", "/api/feeds/follow", json_body={"uri": source.uri})
    erin_store = kf.open_store(erin.storage_dir / "feeds.db")
    _wait("erin to learn the fork", lambda: erin_store.get_fork_proofs(source.feed_id), logs=[erin])
    assert erin_store.load_subfeed(source.uri).get_num_local_messages() <= 3


def _join_other(lab, label: str, channel: str, roles: list[str]):
    """A node on a second channel of the same hub (the owner's user creates it first)."""
    from tests.nodes import TestNode

    node = TestNode(lab.root, label)
    node.env["KACHERY_HUB_URL"] = lab.hub.url
    node.run("node", "join", channel, "--roles", ",".join(roles))
    lab.owner.run("channel", "grant", channel, node.node_id, *roles)
    lab.nodes[label] = node
    node.start()
    lab.wait_connected(node)
    return node


def test_the_witness_catches_a_split_view_across_channels(lab):
    """The owner shows one history on channel lab (to bob) and another on channel other (to
    dave): no member sees both, but both channels' providers ask the same witness, the hub."""
    alice = lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ["request-feeds", "request-files"])
    alice.run("channel", "create", "other")
    carol = _join_other(lab, "carol", "other", ALL_ROLES)
    dave = _join_other(lab, "dave", "other", ["request-feeds", "request-files"])
    source = kf.open_store(alice.storage_dir / "feeds.db").create_feed().load_subfeed("notes")
    source.append_messages([{"i": i} for i in range(3)])
    restored = _restore_key(source, carol.storage_dir / "feeds.db")
    bob.client.request("POST", "/api/feeds/follow", json_body={"uri": source.uri})
    dave.client.request("POST", "/api/feeds/follow", json_body={"uri": source.uri})

    def witnessed_at(channel: str, size: int):
        obj = lab.bucket_object(subfeed_checkpoint_path(channel, source.feed_id, source.subfeed_hash))
        return obj.exists() and parse_witnessed_checkpoint(obj.read_bytes()).checkpoint.size == size

    _wait("both channels' checkpoints at 3", lambda: witnessed_at("lab", 3) and witnessed_at("other", 3),
          logs=[alice, carol])
    source.append_message({"i": 3, "to": "bob"})
    _wait("bob's branch witnessed", lambda: witnessed_at("lab", 4), logs=[alice])
    restored.append_message({"i": 3, "to": "dave"})
    # The witness refuses carol's branch with a proof, which carol spreads on her channel.
    _wait("the witness to refuse carol", lambda: "the witness refused" in carol.log(), logs=[carol])
    other_fork = lab.bucket_object(subfeed_fork_path("other", source.feed_id, source.subfeed_hash))
    _wait("the proof in the other bucket", other_fork.exists, logs=[carol])
    assert kf.verify_fork_proof(other_fork.read_bytes()).position == 3
    dave_store = kf.open_store(dave.storage_dir / "feeds.db")
    _wait("dave to know the fork", lambda: dave_store.get_fork_proofs(source.feed_id), logs=[dave])
    # Channel lab learns when alice's branch next asks the witness, which now refuses it too.
    source.append_message({"i": 4, "to": "bob"})
    lab_fork = lab.bucket_object(subfeed_fork_path("lab", source.feed_id, source.subfeed_hash))
    _wait("the proof in the lab bucket", lab_fork.exists, logs=[alice])
    bob_store = kf.open_store(bob.storage_dir / "feeds.db")
    _wait("bob to know the fork", lambda: bob_store.get_fork_proofs(source.feed_id), logs=[bob])
    assert "FORK at message 3" in bob.run("feed", "verify", source.uri, check=False).stdout


def test_nodes_that_opt_in_witness_too(lab):
    alice = lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ["request-feeds", "request-files"])
    witnesses = []
    for label in ("wit1", "wit2"):
        node = lab.add_node(label, ["request-feeds"], start=False)
        assert "is a witness" in node.run("node", "witness", "on").stdout
        node.start()
        lab.wait_connected(node)
        witnesses.append(node)
    source = kf.open_store(alice.storage_dir / "feeds.db").create_feed().load_subfeed("notes")
    source.append_messages([{"i": i} for i in range(20)])
    bob.client.request("POST", "/api/feeds/follow", json_body={"uri": source.uri})
    expected = {lab_hub_id(lab), *(w.node_id for w in witnesses)}
    cp = _wait("three witnesses", lambda: (c := _checkpoint(lab, source)) and set(c.witnesses()) == expected
               and c, logs=[alice, *witnesses])
    assert cp.checkpoint.size == 20
    out = bob.run("feed", "verify", source.uri, "--witnesses").stdout
    assert "newest witnessed checkpoint: 20 messages, witnessed by the hub and 2 nodes" in out, out
    # the witnesses followed the subfeed to check it, and recorded what they signed
    for w in witnesses:
        copy = kf.open_store(w.storage_dir / "feeds.db").load_subfeed(source.uri)
        assert copy.get_num_local_messages() == 20


def lab_hub_id(lab) -> str:
    return httpx.get(f"{lab.hub.url}/api/hub", timeout=10).json()["hub_id"]


def test_an_owner_can_require_witnesses(lab):
    alice = lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ["request-feeds", "request-files"])
    wit = lab.add_node("wit", ["request-feeds"], start=False)
    wit.run("node", "witness", "on")
    source = kf.open_store(alice.storage_dir / "feeds.db").create_feed().load_subfeed("notes")
    source.append_message({"i": 0})
    out = alice.run("feed", "require-witnesses", source.uri, "2").stdout
    assert "witnessed by 2 witnesses" in out
    bob.client.request("POST", "/api/feeds/follow", json_body={"uri": source.uri})
    bob_store = kf.open_store(bob.storage_dir / "feeds.db")
    policy = bob_store.load_feed(source.feed_id).load_subfeed("kachery.witness-policy")
    _wait("bob to learn the policy", lambda: policy.get_num_local_messages() == 1, logs=[bob])
    source.append_messages([{"i": i} for i in range(1, 5)])
    # Only the hub witnesses: the checkpoint at 5 is published, and bob still waits for a second.
    _wait("the hub's checkpoint at 5", lambda: (c := _checkpoint(lab, source)) and c.checkpoint.size == 5,
          logs=[alice])
    replica = bob_store.load_subfeed(source.uri)
    assert replica.get_num_local_messages() < 5
    # A second witness arrives: it cosigns, and bob accepts the messages.
    wit.start()
    lab.wait_connected(wit)
    source.append_message({"i": 5})
    _wait("bob to accept the witnessed messages", lambda: replica.get_num_local_messages() == 6,
          logs=[bob, wit, alice])
    cp = _checkpoint(lab, source)
    assert cp.checkpoint.size == 6 and len(cp.witnesses()) == 2


def _mtime(path) -> float:
    return path.stat().st_mtime


def test_a_bulk_backlog_is_witnessed_after_its_readers_catch_up(lab):
    """spec/witness.md §4.2: an owner that requires no witnesses sends a long backlog to the
    hub's witness only after a delay (readers catching it up from the bucket go first); the
    checkpoint still comes, cosigned, and covers all of it."""
    from kachery_node.daemon.witness_driver import BULK_WITNESS_DELAY, BULK_WITNESS_MESSAGES
    from kachery_node.protocol.bucket_layout import subfeed_head_path

    alice = lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ["request-feeds", "request-files"])
    n = BULK_WITNESS_MESSAGES + 2000
    source = kf.open_store(alice.storage_dir / "feeds.db").create_feed().load_subfeed("bulk")
    for start in range(0, n, 1000):
        source.append_messages([{"i": i} for i in range(start, start + 1000)])
    bob.client.request("POST", "/api/feeds/follow", json_body={"uri": source.uri})
    replica = kf.open_store(bob.storage_dir / "feeds.db").load_subfeed(source.uri)
    _wait("bob to catch up", lambda: replica.get_num_local_messages() == n, logs=[bob, alice])
    cp = _wait(f"the hub's checkpoint at {n}",
               lambda: (c := _checkpoint(lab, source)) and c.checkpoint.size == n and c, logs=[alice])
    assert cp.witnesses() == [lab_hub_id(lab)]
    assert f"witnessing {n} messages of feed://{source.feed_id}/" in alice.log()
    # The hub read the backlog from its bucket's segments rather than receiving it again.
    assert f"read the messages it lacked below {n} from its bucket" in alice.log()
    # Asked only after the delay, counted from the head's upload (which comes before the
    # witness's first answer tells alice how long the backlog is).
    head = lab.bucket_object(subfeed_head_path(lab.channel, source.feed_id, source.subfeed_hash))
    checkpoint = lab.bucket_object(subfeed_checkpoint_path(lab.channel, source.feed_id, source.subfeed_hash))
    assert _mtime(checkpoint) - _mtime(head) >= BULK_WITNESS_DELAY[0] - 0.05
    # What follows the backlog is witnessed as before, without a delay.
    source.append_message({"i": "later"})
    _wait("the checkpoint to follow",
          lambda: (c := _checkpoint(lab, source)) and c.checkpoint.size == n + 1, logs=[alice])
    assert alice.log().count("(no witnesses required") == 1


def test_a_bulk_backlog_is_witnessed_at_once_when_witnesses_are_required(lab):
    """A follower that requires a witness waits for the checkpoint: no delay then."""
    from kachery_node.daemon.witness_driver import BULK_WITNESS_MESSAGES

    alice = lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ["request-feeds", "request-files"])
    n = BULK_WITNESS_MESSAGES + 2000
    source = kf.open_store(alice.storage_dir / "feeds.db").create_feed().load_subfeed("bulk")
    source.append_message({"i": 0})
    assert "witnessed by 1 witness" in alice.run("feed", "require-witnesses", source.uri, "1").stdout
    for start in range(1, n, 1000):
        source.append_messages([{"i": i} for i in range(start, min(n, start + 1000))])
    bob.client.request("POST", "/api/feeds/follow", json_body={"uri": source.uri})
    replica = kf.open_store(bob.storage_dir / "feeds.db").load_subfeed(source.uri)
    _wait("bob to accept the witnessed messages", lambda: replica.get_num_local_messages() == n,
          logs=[bob, alice])
    _wait(f"the hub's checkpoint at {n}",
          lambda: (c := _checkpoint(lab, source)) and c.checkpoint.size == n, logs=[alice])
    assert "(no witnesses required" not in alice.log()

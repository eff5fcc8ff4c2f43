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

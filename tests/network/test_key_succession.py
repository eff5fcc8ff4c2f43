"""Key succession across real nodes (spec/feeds.md §9, issue 18 part 4): a rotated feed keeps
its URI and its followers; a leaked old key's later messages are refused as a fork."""

from __future__ import annotations

import time

import kachery_feeds as kf
from kachery_node.protocol.bucket_layout import subfeed_head_path
from kachery_node.protocol.feed_bucket import parse_head
from tests.network.conftest import ALL_ROLES


def _wait(predicate, what: str, node, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}\n{node.log()[-3000:]}"
        time.sleep(0.05)


def test_a_rotated_feed_keeps_its_uri_and_followers_and_refuses_the_old_key(lab, tmp_path):
    a = lab.add_node("a", ALL_ROLES)
    b = lab.add_node("b", ["request-feeds"])
    feed_uri = a.run("feed", "create", "--name", "notebook").stdout.strip()
    uri = f"{feed_uri}/main"
    a.run("feed", "append", uri, '"before 0"', '"before 1"', '"before 2"')
    old_backup = tmp_path / "old.key"
    a.run("feed", "export-key", "notebook", "--out", str(old_backup))  # later leaked

    assert b.client.request("POST", "/api/feeds/follow", json_body={"uri": uri})["following"] == ["lab"]
    replica = kf.open_store(b.storage_dir / "feeds.db").load_subfeed(uri)
    _wait(lambda: replica.get_num_local_messages() == 3, "b did not get the first messages", b)

    rotated = a.json("feed", "rotate-key", "notebook")
    assert rotated["uri"] == feed_uri and rotated["seq"] == 1
    assert rotated["key"] != feed_uri.removeprefix("feed://")
    a.run("feed", "append", uri, '"after 3"')
    a.run("feed", "append", uri, '"after 4"')
    _wait(lambda: replica.get_num_local_messages() == 5, "b did not follow the new key", b)
    assert replica.uri == uri
    assert replica.get_messages() == ["before 0", "before 1", "before 2", "after 3", "after 4"]
    b_store = kf.open_store(b.storage_dir / "feeds.db")
    assert b_store.current_key(replica.feed_id).hex() == rotated["key"]
    assert b_store.verify().ok  # every stored signature checks out under the key chain

    # A reader that starts now gets it all from the bucket: the carried records come along.
    head = lab.bucket_object(subfeed_head_path(lab.channel, replica.feed_id, replica.subfeed_hash))
    _wait(lambda: head.exists() and parse_head(head.read_bytes()).count == 5, "no bucket copy", a)
    d = lab.add_node("d", ["request-feeds"])
    d.client.request("POST", "/api/feeds/follow", json_body={"uri": uri})
    d_store = kf.open_store(d.storage_dir / "feeds.db")
    d_replica = d_store.load_subfeed(uri)
    _wait(lambda: d_replica.get_num_local_messages() == 5, "d did not catch up from the bucket", d)
    assert "from the lab bucket" in d.log()  # the bucket, not inline pushes, brought them
    assert d_store.key_succession(replica.feed_id) == b_store.key_succession(replica.feed_id)
    d.stop()

    # Someone with the leaked old key writes their own continuation and provides it.
    m = lab.add_node("m", ALL_ROLES, start=False)
    m.run("feed", "restore", str(old_backup), "--offline-ok")
    m_store = kf.open_store(m.storage_dir / "feeds.db")
    forged = m_store.load_subfeed(uri)
    a_sub = kf.open_store(a.storage_dir / "feeds.db").load_subfeed(uri)
    forged.add_signed_messages(a_sub.get_signed_messages(0, 3))  # what m saw before the rotation
    forged.append_messages(["forged 3", "forged 4", "forged 5"])
    m.start()
    lab.wait_connected(m)
    # b subscribes again (a restarted daemon follows what it followed): m pushes message 5.
    b.stop()
    b.start()
    lab.wait_connected(b)
    _wait(lambda: b_store.get_fork_proofs(), "b never refused the old key's message", b)
    proof = b_store.get_fork_proofs()[0]
    assert kf.verify_fork_proof(proof) == (replica.feed_id, replica.subfeed_hash, 5)
    assert b"kachery-succession-violation" in proof
    assert replica.get_messages() == ["before 0", "before 1", "before 2", "after 3", "after 4"]
    assert "FORK" in b.log()
    # The owner keeps appending under the new key, and b keeps following.
    a.run("feed", "append", uri, '"after 5"')
    _wait(lambda: replica.get_num_local_messages() == 6, "b stopped following after the fork", b)
    assert replica.get_messages(5) == ["after 5"]

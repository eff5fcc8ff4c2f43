"""Faults a kachery network must survive, with real processes (issue 5).

Each test builds a small network (a real `kachery hub serve` and nodes with real daemons),
breaks something the way it breaks in practice (SIGKILL, restart, tampering on disk,
revocation) and checks what a user would notice: every message present exactly once and in
order, files intact or a clear error with nothing stored, and the daemon log saying why.

Each scenario runs on the backend combinations where its behaviour depends on the backend
(tests/network/conftest.py): the pub-sub side for what breaks and heals connections and
credentials (hub restart, killed daemons, revocation: every pub-sub service over the embedded
bucket), the bucket side for what is read, rejected and uploaded again (tampered objects,
uploads cut short: every bucket under the embedded relay). The other side's code is the same
for every backend there (messages are opaque bytes to the pub-sub service; bucket objects are
read and written through the same signed-URL HTTP calls whatever carries the messages), and
nats+gcs, both at once, is in the rest of the shared suite.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

import kachery_feeds as kf
import kachery_node as kn
from kachery_node.protocol.bucket_layout import file_path, subfeed_head_path, subfeed_segment_path
from tests.network.conftest import ALL_ROLES, BUCKET_COMBINATIONS, PUBSUB_COMBINATIONS, QUICK_ANSWERS
from tests.nodes import free_port

pytestmark = pytest.mark.slow  # 10-30 s each

FEED_ROLES = ["request-feeds", "request-files"]
# A dead uploader is noticed after `stall` s without its heartbeats (default 30 s; 3 s here).
FAST_FILE_TIMEOUTS = "\n[daemon.files]\nstall = 3\nheartbeat = 0.5\nanswer = 1\n"


# ---------------------------------------------------------------------------------- helpers
def wait_until(condition, timeout: float, what: str, *nodes) -> None:
    """Poll ``condition`` every 20 ms; fail with the nodes' log tails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {n.label} ---\n{n.log()[-2500:]}" for n in nodes)
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs}")
        time.sleep(0.02)


def follow(node, uri: str) -> kf.Subfeed:
    answer = node.client.request("POST", "/api/feeds/follow", json_body={"uri": uri})
    assert answer["following"] == ["lab"], answer
    return kf.open_store(node.storage_dir / "feeds.db").load_subfeed(uri)


def wait_for_messages(replica: kf.Subfeed, expected: list, timeout: float, *nodes) -> None:
    """Wait until ``replica`` holds exactly ``expected``: in order, none lost, none twice."""
    wait_until(lambda: replica.get_num_local_messages() >= len(expected), timeout,
               f"{len(expected)} messages in {replica.uri}", *nodes)
    assert replica.get_messages() == expected


def fetch(node, uri: str, timeout: float = 90) -> list[dict]:
    """``POST /api/files/fetch``: the NDJSON lines (progress..., then finished or error)."""
    token = (node.storage_dir / "daemon-token").read_text().strip()
    lines = []
    with httpx.stream("POST", f"{node.client.base_url}/api/files/fetch", json={"uri": uri},
                      headers={"Authorization": f"Bearer {token}"}, timeout=timeout) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            lines.append(json.loads(line))
    return lines


# ------------------------------------------------------------------ hub and relay restarted
# Pub-sub: each service's reconnection and re-subscription after the hub (and its relay, or the
# credentials it issues for NATS and Ably) went away.
@pytest.mark.lab_combinations(*PUBSUB_COMBINATIONS)
def test_hub_restart_while_two_nodes_follow_loses_and_duplicates_nothing(make_lab):
    lab = make_lab("--port", str(free_port()))  # the same URL after the restart
    alice = lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", FEED_ROLES)
    carol = lab.add_node("carol", FEED_ROLES)
    source = kf.open_store(alice.storage_dir / "feeds.db").create_feed().load_subfeed("log")
    expected = [{"i": i} for i in range(10)]
    source.append_messages(expected)
    replicas = [follow(bob, source.uri), follow(carol, source.uri)]
    for replica in replicas:
        wait_for_messages(replica, expected, 15, alice, bob, carol)

    os.kill(_pid(alice), signal.SIGSTOP)  # the provider will be the last to reconnect
    try:
        lab.hub.stop()
        more = [{"i": i} for i in range(10, 20)]
        for m in more:  # appended while the hub and relay are down
            source.append_message(m)
        expected += more
        lab.hub.start()
        for node in (bob, carol):  # the readers re-subscribe while the provider is away
            lab.wait_connected(node, timeout=20)
    finally:
        os.kill(_pid(alice), signal.SIGCONT)
    lab.wait_connected(alice, timeout=20)
    # Caught up promptly: well before a subscription renewal (20 s) would have done it.
    for replica in replicas:
        wait_for_messages(replica, expected, 10, alice, bob, carol)

    live = [{"i": i} for i in range(20, 30)]
    for m in live:
        source.append_message(m)
    expected += live
    for replica in replicas:
        wait_for_messages(replica, expected, 10, alice, bob, carol)


# ------------------------------------------------------------------ daemons killed and restarted
# Pub-sub: a restarted daemon connects and subscribes again on each service.
@pytest.mark.lab_combinations(*PUBSUB_COMBINATIONS)
def test_killed_daemons_resume_following_where_they_were(lab):
    alice = lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", FEED_ROLES)
    source = kf.open_store(alice.storage_dir / "feeds.db").create_feed().load_subfeed("log")
    expected = [{"i": i} for i in range(5)]
    source.append_messages(expected)
    replica = follow(bob, source.uri)
    wait_for_messages(replica, expected, 15, alice, bob)

    # The follower's daemon crashes; the writer goes on; the follower restarts and resumes.
    bob.kill()
    wait_until(lambda: not bob.client.is_running(), 10, "bob's daemon to die")
    more = [{"i": i} for i in range(5, 15)]
    source.append_messages(more)
    expected += more
    bob.start()
    wait_for_messages(replica, expected, 15, alice, bob)

    # The provider's daemon crashes; a script goes on appending to its store; it restarts.
    alice.kill()
    wait_until(lambda: not alice.client.is_running(), 10, "alice's daemon to die")
    more = [{"i": i} for i in range(15, 25)]
    for m in more:
        source.append_message(m)
    expected += more
    alice.start()
    lab.wait_connected(alice)
    wait_for_messages(replica, expected, 10, alice, bob)  # well before a renewal (20 s)
    source.append_message({"i": 25})
    wait_for_messages(replica, expected + [{"i": 25}], 10, alice, bob)


# ------------------------------------------------------------------ tampered bucket objects
# Bucket: each bucket's reads are checked and rejected, and its object overwritten by a provider.
@pytest.mark.lab_combinations(*BUCKET_COMBINATIONS)
def test_tampered_file_in_the_bucket_is_rejected_and_nothing_is_stored(lab, tmp_path):
    alice = lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ["request-files"])
    content = b"measured values\n" * 1000
    uri = kn.open_storage(alice.storage_dir).store_bytes(content, "values.txt")
    sha1 = kn.parse_uri(uri).sha1
    alice.client.request("POST", "/api/files/upload", json_body={"uri": uri, "channel": "lab"})
    obj = lab.bucket_object(file_path("lab", sha1))
    good = obj.read_bytes()
    assert good == content
    obj.write_bytes(good.replace(b"measured", b"MEASURED", 1))  # same size, other bytes
    alice.stop()  # no provider to heal it

    lines = fetch(bob, uri)
    assert lines[-1]["type"] == "error", lines
    assert lines[-1]["kind"] == "NotFoundError"
    assert "corrupted" in lines[-1]["error"] and "nothing stored" in lines[-1]["error"]
    assert not kn.open_storage(bob.storage_dir).has_file(uri)
    assert "rejected bucket object" in bob.log()
    assert not list((bob.storage_dir / "tmp").rglob("*" + sha1 + "*"))

    # With a provider back, the requester reports the bad object and the provider replaces it.
    alice.start()
    lab.wait_connected(alice)
    lines = fetch(bob, uri)
    assert lines[-1]["type"] == "finished", lines
    assert Path(lines[-1]["path"]).read_bytes() == content
    assert obj.read_bytes() == content


@pytest.mark.lab_combinations(*BUCKET_COMBINATIONS)
def test_tampered_feed_in_the_bucket_is_rejected_and_nothing_is_stored(lab):
    alice = lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", FEED_ROLES)
    carol = lab.add_node("carol", FEED_ROLES)
    source = kf.open_store(alice.storage_dir / "feeds.db").create_feed().load_subfeed("log")
    expected = [{"i": i} for i in range(1300)]  # one full segment plus a head with 300
    source.append_messages(expected)
    wait_for_messages(follow(bob, source.uri), expected, 15, alice, bob)
    head = lab.bucket_object(subfeed_head_path("lab", source.feed_id, source.subfeed_hash))
    segment = lab.bucket_object(subfeed_segment_path("lab", source.feed_id, source.subfeed_hash, 0))
    wait_until(head.exists, 10, "the subfeed head in the bucket", alice)
    wait_until(lambda: json.loads(head.read_bytes())["count"] == 1300, 10, "the head")
    alice.stop()
    good_head, good_segment = head.read_bytes(), segment.read_bytes()
    head.write_bytes(_tamper(good_head, b'{\\"i\\":1207}', b'{\\"i\\":1208}'))
    segment.write_bytes(_tamper(good_segment, b'{"i":7}', b'{"i":8}'))

    replica = follow(carol, source.uri)
    wait_until(lambda: "rejected bucket data" in carol.log(), 10, "carol to reject it", carol)
    assert replica.get_num_local_messages() == 0  # nothing stored, not even the untampered part

    # The provider comes back: it replaces the bad head on its own, and the bad segment when
    # the reader's next subscription says the bucket's copy was rejected.
    alice.start()
    lab.wait_connected(alice)
    wait_for_messages(replica, expected, 15, alice, carol)
    assert head.read_bytes() == good_head and segment.read_bytes() == good_segment
    assert "replacing a bad head" in alice.log()
    assert "rejected the lab bucket's copy" in alice.log()


def _tamper(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1, old
    return data.replace(old, new)


# ------------------------------------------------------------------ provider killed mid-upload
# Bucket: a chunked upload to each bucket cut short, then finished or retried.
@pytest.mark.lab_combinations(*BUCKET_COMBINATIONS)
def test_provider_killed_mid_upload_another_provider_finishes_it(lab, tmp_path):
    alice = lab.add_node("alice", ALL_ROLES, start=False)
    carol = lab.add_node("carol", ["provide-files"], start=False)
    bob = lab.add_node("bob", ["request-files"], start=False)
    big = tmp_path / "big.dat"
    big.write_bytes(os.urandom(45_000_000))  # three chunks
    for node in (alice, carol, bob):
        with open(node.storage_dir / "config.toml", "a") as f:
            f.write(FAST_FILE_TIMEOUTS)
        if node is not bob:
            uri = kn.open_storage(node.storage_dir).store_file(big)
        node.start()
        lab.wait_connected(node)

    result: dict = {}
    fetcher = threading.Thread(target=lambda: result.update(lines=fetch(bob, uri, timeout=60)))
    fetcher.start()
    try:
        # Freeze both providers the moment one says it is uploading (a localhost upload lasts
        # tens of milliseconds, hence the tight poll), find the one whose upload is in flight,
        # kill it and let the other go on. If the upload finished before the freeze, let them
        # go and catch the next chunk.
        providers = (alice, carol)
        uploader = None
        deadline = time.monotonic() + 20
        while uploader is None:
            assert time.monotonic() < deadline, "no chunk upload was caught in flight"
            if not any(_uploads_in_flight(node) for node in providers):
                time.sleep(0.001)
                continue
            for node in providers:
                os.kill(_pid(node), signal.SIGSTOP)
            try:
                busy = [node for node in providers if _uploads_in_flight(node)]
                if busy:
                    uploader = busy[0]
                    uploader.kill()
                    killed_at = time.monotonic()
            finally:
                for node in providers:
                    if node is not uploader:
                        os.kill(_pid(node), signal.SIGCONT)
    finally:
        fetcher.join(timeout=60)
    assert not fetcher.is_alive(), "the fetch did not end"
    lines = result["lines"]
    assert lines[-1]["type"] == "finished", lines
    recovered = time.monotonic() - killed_at
    assert Path(lines[-1]["path"]).read_bytes() == big.read_bytes()
    survivor = carol if uploader is alice else alice
    assert "taking over" in survivor.log() or "uploaded " in survivor.log()
    assert recovered < 20, recovered  # the stall timeout (3 s) plus an upload
    for node in (survivor, bob):  # file messages are not mistaken for malformed feed messages
        assert "not a feed ID" not in node.log()
    print(f"fetch finished {recovered:.1f} s after the kill")


@pytest.mark.lab_combinations(*BUCKET_COMBINATIONS)
def test_sole_provider_killed_mid_upload_the_retry_after_its_restart_succeeds(lab, tmp_path):
    alice = lab.add_node("alice", ALL_ROLES, start=False)
    bob = lab.add_node("bob", ["request-files"], start=False)
    big = tmp_path / "big.dat"
    big.write_bytes(os.urandom(45_000_000))
    uri = kn.open_storage(alice.storage_dir).store_file(big)
    for node in (alice, bob):
        with open(node.storage_dir / "config.toml", "a") as f:
            f.write(FAST_FILE_TIMEOUTS)
        node.start()
        lab.wait_connected(node)

    result: dict = {}
    fetcher = threading.Thread(target=lambda: result.update(lines=fetch(bob, uri, timeout=60)))
    fetcher.start()
    try:
        wait_until(lambda: _uploads_in_flight(alice), 20, "alice to start uploading", alice, bob)
        alice.kill()
    finally:
        fetcher.join(timeout=60)
    assert not fetcher.is_alive(), "the fetch did not end"
    error = result["lines"][-1]
    assert error["type"] == "error" and error["kind"] == "NotFoundError", result["lines"]
    assert "stalled" in error["error"] or "no provider answered" in error["error"], error
    assert not kn.open_storage(bob.storage_dir).has_file(uri)

    alice.start()
    lab.wait_connected(alice)
    lines = fetch(bob, uri)
    assert lines[-1]["type"] == "finished", lines
    assert Path(lines[-1]["path"]).read_bytes() == big.read_bytes()


def _pid(node) -> int:
    return json.loads((node.storage_dir / "daemon.json").read_text())["pid"]


def _uploads_in_flight(node) -> set[str]:
    """The objects ``node``'s daemon has started uploading and not finished (its log: bucket-neutral)."""
    started, ended = set(), set()
    for line in node.log().splitlines():
        if " uploading " in line:
            started.add(line.split(" uploading ", 1)[1].split(" ", 1)[0])
        elif " uploaded " in line:
            ended.add(line.split(" uploaded ", 1)[1].split(" ", 1)[0])
        elif " upload of " in line and " failed" in line:
            ended.add(line.split(" upload of ", 1)[1].split(" ", 1)[0])
    return started - ended


# ------------------------------------------------------------------ a node removed from the channel
# Pub-sub: each service learns of the revocation its own way (relay at once, NATS at the token's
# expiry, Ably through the hub's revokeTokens).
@pytest.mark.lab_combinations(*PUBSUB_COMBINATIONS)
def test_removed_node_is_not_served_within_one_token_lifetime(make_lab):
    ttl = 5
    lab = make_lab("--token-ttl", str(ttl))
    alice = lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ["request-files", "request-feeds"], config=QUICK_ANSWERS)
    storage = kn.open_storage(alice.storage_dir)
    before = storage.store_bytes(b"shared while bob was a member\n", "before.txt")
    after = storage.store_bytes(b"stored after bob was removed\n", "after.txt")
    assert fetch(bob, before)[-1]["type"] == "finished"

    lab.owner.run("channel", "revoke", "lab", bob.node_id, "request-files", "request-feeds")
    if lab.backends.startswith("nats+"):
        # NATS learns of the revocation when bob's token expires (it cannot revoke with the
        # account key alone); until then the providers' membership checks stand in his way.
        time.sleep(ttl)
    if lab.backends.startswith("ably+"):
        # The hub has Ably revoke bob's token from a background queue, moments after the
        # owner's command returns; the channel's activity says when Ably confirmed it.
        confirmed = f"ably revoked node {bob.node_id[:12]}…'s credentials"
        wait_until(lambda: confirmed in lab.owner.run("channel", "show", "lab", "--json").stdout,
                   15, "Ably to confirm the revocation", lab.owner)
    # The embedded relay narrows bob's connection at once; Ably has dropped him.
    lines = fetch(bob, after, timeout=30)
    assert lines[-1]["type"] == "error" and lines[-1]["kind"] == "NotFoundError", lines
    assert not lab.bucket_object(file_path("lab", kn.parse_uri(after).sha1)).exists()
    assert not kn.open_storage(bob.storage_dir).has_file(after)
    # The node learns it has no roles left; asking again gives the reason at once.
    wait_until(lambda: not bob.client.status()["channels"][0]["roles"], 15, "bob to lose his roles", bob)
    lines = fetch(bob, after, timeout=30)
    assert lines[-1]["type"] == "error" and "request-files role" in lines[-1]["error"], lines

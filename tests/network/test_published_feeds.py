"""Published feeds (issue 14): an owner keeps a feed's bucket copy current whether or not anyone
follows it, so a reader catches up while the owner is offline, even with no daemon of its own."""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import kachery_feeds as kf
from kachery_node.protocol.bucket_layout import subfeed_head_path, subfeed_segment_path
from kachery_node.protocol.feed_bucket import parse_head
from tests.network.conftest import ALL_ROLES
from tests.nodes import KACHERY


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
    # A channel where this node did not ask for provide-feeds (needed to upload): refused.
    carol = lab.add_node("carol", ["request-feeds"], start=False)
    mine = kf.open_store(carol.storage_dir / "feeds.db").create_feed().load_subfeed("x")
    proc = carol.run("feed", "publish", mine.uri, "--channel", lab.channel, check=False)
    assert proc.returncode != 0 and "--add-roles provide-feeds" in proc.stderr, proc.stderr
    assert json.loads(alice.run("feed", "published", "--json").stdout) == {"published": []}
    # Reading from a channel not joined: a configuration error, before anything is asked.
    proc = bob.run("feed", "tail", sf.uri, "--channel", "elsewhere", check=False)
    assert proc.returncode != 0 and "has not joined channel 'elsewhere'" in proc.stderr, proc.stderr
    proc = alice.run("feed", "unpublish", sf.uri, check=False)
    assert proc.returncode != 0 and "not published" in proc.stderr


def _script(node, code: str, timeout: float = 120) -> str:
    """Run a Python script as ``node`` (its storage, no daemon unless the node's runs)."""
    result = subprocess.run([sys.executable, "-c", code], env=node.env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr + node.log()[-2000:]
    return result.stdout


def _published_and_owner_offline(lab, count: int):
    """alice owns and publishes a subfeed of ``count`` messages, then goes offline."""
    alice = lab.add_node("alice", ALL_ROLES)
    sf = kf.open_store(alice.storage_dir / "feeds.db").create_feed().load_subfeed("notes")
    sf.append_messages([{"i": i} for i in range(count)])
    alice.run("feed", "publish", sf.uri, "--channel", lab.channel)
    wait_bucket_count(lab, alice, sf.feed_id, sf.subfeed_hash, count)
    alice.stop()
    return alice, sf


def test_a_published_subfeed_is_read_with_no_daemon_while_its_owner_is_offline(lab):
    alice, sf = _published_and_owner_offline(lab, 2500)
    bob = lab.add_node("bob", ["request-feeds"], start=False)  # bob never runs a daemon
    out = _script(bob, f"""
import kachery_node as kn
sf = kn.load_subfeed({sf.uri!r})
msgs = sf.get_messages()
print(len(msgs), msgs[0], msgs[-1], sf.is_writeable)
""")
    assert out.split(" ", 1)[0] == "2500" and out.strip().endswith("{'i': 2499} False"), out
    # Stored, verified (the chain checks out in bob's own store).
    replica = kf.open_store(bob.storage_dir / "feeds.db").load_subfeed(sf.uri)
    assert replica.get_num_local_messages() == 2500
    assert kf.open_store(bob.storage_dir / "feeds.db").verify().ok
    # The owner comes back for a while and appends across a segment boundary: the next read
    # takes only what is new (segments 2 and 3, then the tail).
    alice.start()
    sf.append_messages([{"i": i} for i in range(2500, 4200)])
    wait_bucket_count(lab, alice, sf.feed_id, sf.subfeed_hash, 4200)
    alice.stop()
    out = _script(bob, f"""
import kachery_node as kn
sf = kn.load_subfeed({sf.uri!r})
print(sf.get_num_local_messages(), sf.get_messages(4199)[0])
""")
    assert out.strip() == "4200 {'i': 4199}", out
    assert kf.open_store(bob.storage_dir / "feeds.db").verify().ok


def _tamper(obj, old: bytes, new: bytes) -> bytes:
    """Replace ``old`` by ``new`` (same length) in a bucket object; returns the original bytes."""
    data = obj.read_bytes()
    assert old in data and len(old) == len(new)
    obj.write_bytes(data.replace(old, new, 1))
    return data


@pytest.mark.parametrize("what", ["segment", "head"])
def test_a_tampered_bucket_copy_is_refused_with_a_typed_error(lab, what):
    _alice, sf = _published_and_owner_offline(lab, 1500)  # segment 0 and a tail of 500 in the head
    bob = lab.add_node("bob", ["request-feeds"], start=False)
    if what == "segment":
        obj = lab.bucket_object(subfeed_segment_path(lab.channel, sf.feed_id, sf.subfeed_hash, 0))
        _tamper(obj, b'{"i":7}', b'{"i":8}')
    else:
        obj = lab.bucket_object(subfeed_head_path(lab.channel, sf.feed_id, sf.subfeed_hash))
        _tamper(obj, b'{\\"i\\":1234}', b'{\\"i\\":4321}')
    out = _script(bob, f"""
import kachery_node as kn
try:
    kn.load_subfeed({sf.uri!r})
except kn.TamperedDataError as exc:
    print(type(exc).__name__, isinstance(exc, kn.RemoteProtocolError))
    print(exc)
""")
    kind, message = out.split("\n", 1)
    assert kind == "BucketDataRejectedError True", out
    assert "failed verification" in message and "channel lab's bucket" in message, message
    stored = kf.open_store(bob.storage_dir / "feeds.db").load_subfeed(sf.uri).get_num_local_messages()
    assert stored == 0  # one batch of 1500, signed at its end: nothing verifies, nothing is stored


def test_feed_tail_of_an_unreachable_subfeed_fails_saying_what_it_tried(lab):
    alice = lab.add_node("alice", ALL_ROLES)
    sf = kf.open_store(alice.storage_dir / "feeds.db").create_feed().load_subfeed("quiet")
    sf.append_message("never published")
    alice.stop()
    bob = lab.add_node("bob", ["request-feeds"], start=False)
    proc = bob.run("feed", "tail", sf.uri, check=False)
    assert proc.returncode != 0 and proc.stdout == ""
    for said in ("local store: no messages", "daemon: none running",
                 "channel lab's bucket: nothing published", "kachery feed publish"):
        assert said in proc.stderr, proc.stderr
    # The Python API raises the same, typed.
    out = _script(bob, f"""
import kachery_node as kn
try:
    kn.load_subfeed({sf.uri!r})
except kn.NotFoundError as exc:
    print(type(exc).__name__, exc.attempts)
""")
    assert out.startswith("SubfeedNotFoundError ['local store: no messages'"), out


class _Lines:
    """The lines of a child's pipe, read by a thread (select on a buffered pipe misses lines
    already read into its buffer)."""

    def __init__(self, pipe) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self.queue.put(line) for line in pipe], daemon=True).start()

    def take(self, n: int, timeout: float) -> list[str]:
        lines, deadline = [], time.monotonic() + timeout
        try:
            while len(lines) < n:
                lines.append(self.queue.get(timeout=max(0.0, deadline - time.monotonic())).strip())
        except queue.Empty:
            raise AssertionError(f"only {lines} within {timeout} s") from None
        return lines


@pytest.mark.slow  # two nodes started, one of them twice
@pytest.mark.parametrize("reader_daemon", [False, True], ids=["no-daemon", "daemon"])
def test_feed_tail_follow_waits_for_an_offline_owner_then_gets_live_messages(lab, reader_daemon):
    alice = lab.add_node("alice", ALL_ROLES)
    sf = kf.open_store(alice.storage_dir / "feeds.db").create_feed().load_subfeed("later")
    sf.append_message({"n": 0})
    alice.stop()
    if not reader_daemon:  # with no daemon to subscribe, only the bucket can bring messages:
        alice.run("feed", "publish", sf.uri, "--channel", lab.channel)  # uploaded once she is back
    bob = lab.add_node("bob", ["request-feeds"], start=reader_daemon)
    proc = subprocess.Popen([KACHERY, "feed", "tail", sf.uri, "--follow"], env=bob.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = _Lines(proc.stdout), _Lines(proc.stderr)
    try:
        [status] = stderr.take(1, 30)
        assert status.startswith("owner offline; nothing published yet; waiting"), status
        alice.start()  # the owner is back: her daemon uploads the publication / answers bob's
        # With a daemon, bob's has subscribed; hers says she is back (providerConnected) and
        # his renews at once, instead of 20 to 25 s after his last subscription.
        assert stdout.take(1, 5 if reader_daemon else 60) == ['{"n": 0}']
        source = kf.open_store(alice.storage_dir / "feeds.db").load_subfeed(sf.uri)
        source.append_messages([{"n": 1}, {"n": 2}])
        assert stdout.take(2, 60) == ['{"n": 1}', '{"n": 2}']
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(10)
    assert stderr.queue.empty()  # one status line, nothing else


def test_readme_reader_example_runs_with_no_daemon_while_the_owner_is_offline(lab):
    """README's daemon-less reader (the ```py block of "Feeds across nodes") as written, with a
    real subfeed's URI in place of feed://…/readings."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## Feeds across nodes", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"```py\n(.*?)```", section, flags=re.S)
    _alice, sf = _published_and_owner_offline(lab, 1200)
    bob = lab.add_node("bob", ["request-feeds"], start=False)
    out = _script(bob, block.replace("feed://…/readings", sf.uri))
    assert out.splitlines() == ["1200 messages; the last: {'i': 1199}", "{'i': 1199}"], out


def test_publishes_at_the_same_time_are_all_kept(lab):
    alice = lab.add_node("alice", ALL_ROLES, start=False)
    feed = kf.open_store(alice.storage_dir / "feeds.db").create_feed()
    uris = [feed.load_subfeed(f"s{i}").uri for i in range(6)]
    procs = [subprocess.Popen([KACHERY, "feed", "publish", uri, "--channel", lab.channel], env=alice.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for uri in uris]
    for proc in procs:
        assert proc.wait(60) == 0, proc.stderr.read()
    listed = alice.json("feed", "published")["published"]
    hashes = {kf.parse_feed_uri(row["uri"]).subfeed_hash for row in listed}
    assert hashes == {kf.parse_feed_uri(uri).subfeed_hash for uri in uris}

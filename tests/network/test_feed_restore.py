"""Fork-safe restore (spec/feeds.md §8, issue 18 part 3): a key backup restored on another
machine cannot append until that machine has caught up with what the old one published."""

from __future__ import annotations

import json
import time

import pytest

import kachery_feeds as kf
from kachery_node.errors import DaemonError
from kachery_node.protocol.bucket_layout import subfeed_head_path
from kachery_node.protocol.feed_bucket import parse_head
from tests.network.conftest import ALL_ROLES


def _wait_bucket_count(lab, feed_id: str, subfeed_hash: str, count: int, timeout: float = 30) -> None:
    """Wait until the channel's bucket head of the subfeed says ``count`` messages."""
    obj = lab.bucket_object(subfeed_head_path(lab.channel, feed_id, subfeed_hash))
    deadline = time.monotonic() + timeout
    while True:
        if obj.exists() and parse_head(obj.read_bytes()).count >= count:
            return
        assert time.monotonic() < deadline, f"the bucket never held {count} messages of {subfeed_hash}"
        time.sleep(0.1)


def test_an_old_backup_restored_elsewhere_catches_up_before_appending(lab, tmp_path):
    a = lab.add_node("a", ALL_ROLES)
    b = lab.add_node("b", ["request-feeds"])  # a follower: the owner publishes what b follows
    c = lab.add_node("c", ALL_ROLES, start=False)

    feed_uri = a.run("feed", "create", "--name", "notebook").stdout.strip()
    feed_id = feed_uri.removeprefix("feed://")
    a.run("feed", "append", f"{feed_uri}/main", '{"i": 0}', '{"i": 1}', '{"i": 2}')
    backup = tmp_path / "notebook.key"
    a.run("feed", "export-key", "notebook", "--out", str(backup))
    assert backup.stat().st_mode & 0o777 == 0o600
    # After the backup: more messages, and a subfeed the backup's machine never saw.
    a.run("feed", "append", f"{feed_uri}/main", '{"i": 3}', '{"i": 4}')
    a.run("feed", "append", f"{feed_uri}/later", '"begun after the backup"')
    store_a = kf.open_store(a.storage_dir / "feeds.db")
    main_a = store_a.load_subfeed(f"{feed_uri}/main")
    later_a = store_a.load_subfeed(f"{feed_uri}/later")
    for sf in (main_a, later_a):
        b.client.request("POST", "/api/feeds/follow", json_body={"uri": sf.uri})
    _wait_bucket_count(lab, feed_id, main_a.subfeed_hash, 5)
    _wait_bucket_count(lab, feed_id, later_a.subfeed_hash, 1)

    # c takes the old backup while its daemon is down: the feed is restoring, appends refused.
    failed = c.run("feed", "restore", str(backup), check=False)
    assert failed.returncode != 0 and "no kachery daemon runs" in failed.stderr, failed.stderr
    refused = c.run("feed", "append", f"{feed_uri}/main", '{"i": "too early"}', check=False)
    assert refused.returncode != 0
    assert "restored from a backup" in refused.stderr and "kachery feed restore --resume" in refused.stderr
    store_c = kf.open_store(c.storage_dir / "feeds.db")
    main_c = store_c.load_subfeed(f"{feed_uri}/main")
    try:
        main_c.append_message({"i": "too early"})
        raise AssertionError("a restoring feed accepted an append")
    except kf.FeedRestoringError as exc:
        assert exc.feed_id == feed_id
    assert main_c.get_num_local_messages() == 0

    # With its daemon up, c catches up with every subfeed the channel knows, then may append.
    c.start()  # right after the start: the catch-up waits for the channel to connect
    done = json.loads(c.run("feed", "restore", "--resume", "notebook", "--timeout", "60", "--json").stdout)
    assert done["restoring"] is False
    assert done["caught_up"] == {main_a.subfeed_hash: 5, later_a.subfeed_hash: 1}
    assert main_c.get_messages() == [{"i": i} for i in range(5)]
    assert store_c.load_subfeed(f"{feed_uri}/later").get_messages() == ["begun after the backup"]
    assert c.run("feed", "append", f"{feed_uri}/main", '{"i": 5}').stdout.strip() == "5"

    # No fork: the old machine takes c's message as the next one of its own history.
    lines = main_c.get_signed_messages(0)
    assert lines[:5] == main_a.get_signed_messages(0)
    assert main_a.add_signed_messages(lines[5:]) == 1
    assert main_a.get_messages(5) == [{"i": 5}]
    assert store_a.get_fork_proofs() == [] and store_c.get_fork_proofs() == []


def test_offline_ok_ends_a_restore_without_catching_up_and_warns(lab, tmp_path):
    a = lab.add_node("a", ALL_ROLES, start=False)
    feed_uri = a.run("feed", "create").stdout.strip()
    a.run("feed", "append", f"{feed_uri}/main", "1")
    backup = tmp_path / "k"
    a.run("feed", "export-key", feed_uri, "--out", str(backup))
    c = lab.add_node("c", ALL_ROLES, start=False)
    done = c.run("feed", "restore", str(backup), "--offline-ok")
    assert "WARNING" in done.stderr and "FORKS" in done.stderr
    assert c.run("feed", "append", f"{feed_uri}/main", "2").stdout.strip() == "0"  # knew nothing


def test_an_unreadable_head_keeps_the_feed_restoring_until_it_is_rewritten(lab, tmp_path):
    a = lab.add_node("a", ALL_ROLES)
    b = lab.add_node("b", ["request-feeds"])
    feed_uri = a.run("feed", "create").stdout.strip()
    feed_id = feed_uri.removeprefix("feed://")
    backup = tmp_path / "k"
    a.run("feed", "export-key", feed_uri, "--out", str(backup))
    a.run("feed", "append", f"{feed_uri}/main", "1", "2")
    sf = kf.open_store(a.storage_dir / "feeds.db").load_subfeed(f"{feed_uri}/main")
    b.client.request("POST", "/api/feeds/follow", json_body={"uri": sf.uri})
    _wait_bucket_count(lab, feed_id, sf.subfeed_hash, 2)
    head = lab.bucket_object(subfeed_head_path(lab.channel, feed_id, sf.subfeed_hash))
    head.write_bytes(b"not a head")  # someone with write access to the bucket

    c = lab.add_node("c", ALL_ROLES)
    failed = c.run("feed", "restore", str(backup), "--timeout", "30", check=False)
    assert failed.returncode != 0 and "cannot be read" in failed.stderr, failed.stderr
    assert kf.open_store(c.storage_dir / "feeds.db").is_restoring(feed_id)
    # c's follower rejected the head, so the owner rewrites it; then the restore goes through.
    deadline = time.monotonic() + 30
    while c.run("feed", "restore", "--resume", feed_id, "--timeout", "30", check=False).returncode:
        assert time.monotonic() < deadline, c.log()[-3000:]
        time.sleep(0.5)
    assert c.run("feed", "append", f"{feed_uri}/main", "3").stdout.strip() == "2"
    for bad in ({"feed": "nope"}, {}, {"feed": feed_id, "channel": "not-joined"}):
        with pytest.raises(DaemonError) as refused:
            c.client.request("POST", "/api/feeds/catch-up", json_body=bad)
        assert refused.value.status in (400, 404) and refused.value.reason

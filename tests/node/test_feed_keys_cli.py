"""`kachery feed export-key | restore | rotate-key | set-recovery-key | recover` as a user runs
them (spec/feeds.md §8-9); messages move between the nodes' stores as a follower's would."""

from __future__ import annotations

import json

import kachery_feeds as kf
from tests.nodes import TestNode


def _sync(src: TestNode, dst: TestNode, uri: str) -> None:
    a = kf.open_store(src.storage_dir / "feeds.db").load_subfeed(uri)
    b = kf.open_store(dst.storage_dir / "feeds.db").load_subfeed(uri)
    start = b.get_num_local_messages()
    if a.get_num_local_messages() > start:
        b.add_signed_messages(a.get_signed_messages(start))


def test_a_lost_key_is_recovered_with_the_committed_recovery_key(tmp_path):
    owner, helper = TestNode(tmp_path, "owner"), TestNode(tmp_path, "helper")
    feed_uri = owner.run("feed", "create", "--name", "lab").stdout.strip()
    uri = f"{feed_uri}/main"
    owner.run("feed", "append", uri, '"a"')
    recovery_file = tmp_path / "recovery.key"
    committed = owner.json("feed", "set-recovery-key", "lab", "--out", str(recovery_file))
    assert recovery_file.stat().st_mode & 0o777 == 0o600 and len(committed["recovery_public_key"]) == 64
    owner.run("feed", "append", uri, '"b"')  # carries the commitment to followers
    _sync(owner, helper, uri)

    # The owner's key is lost; the helper, holding the recovery key, hands the feed to a new key.
    wrong = tmp_path / "wrong.key"
    wrong.write_text(recovery_file.read_text().replace(feed_uri[7:], "0" * 64))
    refused = helper.run("feed", "recover", feed_uri, "--recovery-key", str(wrong), check=False)
    assert refused.returncode != 0 and "recovery key of feed" in refused.stderr
    recovered = helper.json("feed", "recover", feed_uri, "--recovery-key", str(recovery_file))
    assert recovered["uri"] == feed_uri and recovered["seq"] == 2
    info = helper.json("feed", "info", feed_uri)
    assert info["is_writeable"] and info["current_key"] == recovered["key"] and info["key_successions"] == 2
    assert helper.run("feed", "append", uri, '"c"').stdout.strip() == "2"

    # The old machine learns of it from the feed itself and may no longer append.
    _sync(helper, owner, uri)
    refused = owner.run("feed", "append", uri, '"old key"', check=False)
    assert refused.returncode != 0 and "replaced by a key succession" in refused.stderr
    assert json.loads(owner.run("fsck", "--json").stdout)["ok"]

    # A backup made after the succession restores the new key with its chain.
    backup = tmp_path / "new.key"
    helper.run("feed", "export-key", feed_uri, "--out", str(backup))
    third = TestNode(tmp_path, "third")
    third.run("feed", "restore", str(backup), "--offline-ok")
    _sync(helper, third, uri)
    assert third.run("feed", "append", uri, '"d"').stdout.strip() == "3"
    rotated = third.json("feed", "rotate-key", feed_uri)
    assert rotated["seq"] == 3 and rotated["key"] != recovered["key"]
    assert third.run("feed", "append", uri, '"e"').stdout.strip() == "4"
    _sync(third, helper, uri)
    assert kf.open_store(helper.storage_dir / "feeds.db").load_subfeed(uri).get_messages() == list("abcde")

"""``Storage.verify`` and ``kachery fsck``: a storage edited or rotted behind kachery's back is
found out, the audit changes nothing, and ``--repair --channel`` fetches good copies again through
the daemon (issue 11, "local reads never re-verify")."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from pathlib import Path

import pytest

import kachery_feeds as kf
import kachery_node as kn
from kachery_node.storage.file_index import stat_signature
from kachery_node.storage.manifest import CHUNK_SIZE


def _tree(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file's (mode, mtime_ns, bytes), to show that an audit changed nothing."""
    out = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.name.endswith(("-wal", "-shm", "-notify")):
            st = path.stat()
            out[str(path)] = (st.st_mode, st.st_mtime_ns, path.read_bytes())
    return out


def _sqlite3(db: Path, sql: str) -> None:
    """Edit a database with the sqlite3 command, as a person (or an intruder) would."""
    subprocess.run(["sqlite3", str(db), sql], check=True, capture_output=True, timeout=30)


@pytest.fixture
def filled(storage: kn.Storage, tmp_path: Path) -> dict:
    """A storage with a small file, a large one (manifest), a link, mutables and a feed."""
    small = storage.store_text("hello")
    big_path = tmp_path / "big.bin"
    big_path.write_bytes(os.urandom(CHUNK_SIZE + 1000))
    big = storage.store_file(big_path)
    linked_path = tmp_path / "linked.txt"
    linked_path.write_text("linked")
    linked = storage.link_file(linked_path)
    storage.set("key", {"value": [1, 2]})
    sf = storage.create_feed().load_subfeed("log")
    sf.append_messages([{"i": i} for i in range(5)])
    storage.close()
    return {"small": small, "big": big, "linked": linked, "linked_path": linked_path, "log": sf}


def test_a_sound_storage_verifies_and_nothing_changes(storage: kn.Storage, filled) -> None:
    before = _tree(storage.directory)
    for hashes in (False, True):
        report = storage.verify(hashes=hashes)
        assert report.ok, (report.problems, report.feeds.problems)
        assert (report.files, report.links, report.mutables) == (3, 1, 1)  # big's manifest too
        assert report.feeds.messages == 5
    assert report.bytes_hashed >= CHUNK_SIZE + 1000
    storage.close()
    assert _tree(storage.directory) == before


def _damage(storage: kn.Storage, filled: dict, what: str) -> str:
    """Damage the storage; return the SHA-1 (or path) the report must name."""
    small = kn.parse_uri(filled["small"]).sha1
    big = kn.parse_uri(filled["big"])
    if what == "deleted file":
        storage.path_for(small).unlink()
        return small
    if what == "truncated file":
        path = storage.path_for(small)
        path.chmod(0o600)
        path.write_bytes(b"hell")
        return small
    if what == "missing manifest":
        storage.path_for(big.manifest_sha1).unlink()
        return big.sha1
    if what == "changed link":
        filled["linked_path"].write_text("LINKED")
        return kn.parse_uri(filled["linked"]).sha1
    if what == "deleted link":
        filled["linked_path"].unlink()
        return kn.parse_uri(filled["linked"]).sha1
    if what == "mutable that is not JSON":
        _sqlite3(storage.directory / "mutables.db", "UPDATE mutables SET value = '{not json'")
        return "mutables.db"
    raise AssertionError(what)


@pytest.mark.parametrize("what", ["deleted file", "truncated file", "missing manifest",
                                  "changed link", "deleted link", "mutable that is not JSON"])
def test_damage_is_found_without_rehashing(storage: kn.Storage, filled, what: str) -> None:
    named = _damage(storage, filled, what)
    before = _tree(storage.directory)
    report = storage.verify()
    assert not report.ok
    assert any(named in (p.sha1 or "") or named in (p.path or "") for p in report.problems), \
        report.problems
    storage.close()
    assert _tree(storage.directory) == before


def test_rot_with_the_same_stat_needs_hashes(storage: kn.Storage, filled) -> None:
    """A flipped byte that keeps size and mtime (bit rot, or a careful edit) is not seen by a
    load (the stat signature did not change, so nothing is rehashed), nor by a quick audit; the
    --files audit finds it and, unlike load_file, deletes nothing."""
    sha1 = kn.parse_uri(filled["big"]).sha1
    path = storage.path_for(sha1)
    st = path.stat()
    path.chmod(0o600)
    with open(path, "r+b") as f:
        f.seek(CHUNK_SIZE + 10)
        byte = f.read(1)
        f.seek(CHUNK_SIZE + 10)
        f.write(bytes([byte[0] ^ 1]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    storage.index.set_verified(sha1, stat_signature(os.stat(path)))  # as if unchanged
    assert storage.verify().ok
    report = storage.verify(hashes=True)
    assert [(p.kind, p.sha1) for p in report.problems] == [("file", sha1)]
    assert "corrupted" in report.problems[0].message
    assert path.exists()  # reported, not deleted


def test_unindexed_files_are_hashed_too(storage: kn.Storage, filled) -> None:
    """A file under sha1/ that the index does not know (copied from an original kachery
    storage): checked against its name with --files."""
    fake = "ab" * 20
    path = storage.path_for(fake)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not what the name says")
    assert storage.verify().ok
    assert [p.sha1 for p in storage.verify(hashes=True).problems] == [fake]


# -- kachery fsck ---------------------------------------------------------------------------------
def test_fsck_finds_an_edited_feeds_db_row(cli, storage_dir: Path) -> None:
    """The owner's feeds.db edited with the sqlite3 command: `kachery fsck` says which subfeed
    and message, and exits 1. Before the edit it exits 0."""
    cli.run("init")
    feed = cli.json("feed", "create")["uri"]
    cli.run("feed", "append", f"{feed}/log", '{"amount": 10}', '{"amount": 20}', '{"amount": 30}')
    ok = cli.run("fsck")
    assert ok.returncode == 0 and ok.stdout.strip().endswith("ok"), ok.stdout
    _sqlite3(storage_dir / "feeds.db",
             "UPDATE messages SET body = replace(body, '\"amount\":20', '\"amount\":2000') WHERE n = 1")
    before = _tree(storage_dir)
    bad = cli.run("fsck", check=False)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert f"subfeed {kf.subfeed_hash('log')} message 1" in bad.stdout, bad.stdout
    assert "hash chain broken" in bad.stdout and "problems found" in bad.stdout
    report = json.loads(cli.run("fsck", "--json", check=False).stdout)
    assert not report["ok"] and report["feeds"]["problems"][0]["position"] == 1
    assert _tree(storage_dir) == before  # fsck without --repair changes nothing
    # The same for any signature, the key and the last signature.
    for sql, words in [("UPDATE messages SET sig = zeroblob(64) WHERE sig IS NOT NULL", "bad signature"),
                       ("UPDATE feeds SET private_key = zeroblob(32)", "private key"),
                       ("UPDATE messages SET sig = NULL WHERE n = 2", "not signed")]:
        _sqlite3(storage_dir / "feeds.db", sql)
        out = cli.run("fsck", check=False)
        assert out.returncode == 1 and words in out.stdout, out.stdout


def test_fsck_repair_needs_a_channel_and_a_daemon(cli, storage_dir: Path, tmp_path: Path) -> None:
    cli.run("init")
    f = tmp_path / "f.txt"
    f.write_text("content")
    uri = cli.run("store", str(f)).stdout.strip()
    path = kn.open_storage(storage_dir).path_for(kn.parse_uri(uri).sha1)
    path.chmod(0o600)
    path.write_text("CONTENT")
    usage = cli.run("fsck", "--repair", check=False)
    assert usage.returncode == 2 and "--channel" in usage.stderr
    out = cli.run("fsck", "--files", "--repair", "--channel", "lab", check=False)
    assert out.returncode == 1 and "kachery node start" in out.stderr, out.stderr
    assert path.read_text() == "CONTENT"  # nothing deleted when nothing can be fetched


# -- repair from a channel ------------------------------------------------------------------------
@pytest.fixture
def lab(tmp_path):
    """A hub and a channel of real processes (tests/network's Lab), ended whatever happens."""
    from tests.hub.conftest import HubProcess
    from tests.network.conftest import Lab

    lab = Lab(tmp_path, HubProcess(tmp_path / "hub"))
    yield lab
    lab.stop()
    lab.hub.stop()


@pytest.mark.slow
def test_fsck_repairs_files_and_followed_subfeeds_from_the_channel(lab, tmp_path: Path) -> None:
    from tests.network.conftest import ALL_ROLES

    alice = lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ["request-files", "request-feeds"])
    original = tmp_path / "data.txt"
    original.write_text("the original bytes\n")
    uri = kn.open_storage(alice.storage_dir).store_file(original)
    source = kf.open_store(alice.storage_dir / "feeds.db").create_feed().load_subfeed("notes")
    source.append_messages([{"i": i} for i in range(30)])
    # bob gets copies of both from the channel
    bob.run("load", uri)
    bob.client.request("POST", "/api/feeds/follow", json_body={"uri": source.uri})
    replica = kf.open_store(bob.storage_dir / "feeds.db").load_subfeed(source.uri)
    # The first 30 (islice: follow() ends only after `timeout` s without a new message).
    assert [m["i"] for m in itertools.islice(replica.follow(timeout=20), 30)] == list(range(30))
    # ... which rot on bob's disk
    bob_storage = kn.open_storage(bob.storage_dir)
    path = bob_storage.path_for(kn.parse_uri(uri).sha1)
    path.chmod(0o600)
    path.write_text("the 0riginal bytes\n")
    _sqlite3(bob.storage_dir / "feeds.db",
             "UPDATE messages SET body = replace(body, '\"i\":12', '\"i\":99') WHERE n = 12")
    assert bob.run("fsck", "--files", check=False).returncode == 1

    out = bob.run("fsck", "--files", "--repair", "--channel", "lab", check=False, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"REPAIRED sha1://{kn.parse_uri(uri).sha1}" in out.stdout
    assert f"REPAIRED feed://{source.feed_id}/~{source.subfeed_hash}" in out.stdout
    assert out.stdout.strip().endswith("ok")
    assert path.read_text() == "the original bytes\n"
    assert replica.get_messages() == source.get_messages()
    assert bob.run("fsck", "--files").returncode == 0

    # The owner's own feed cannot come back from the channel through its own daemon: said so.
    _sqlite3(alice.storage_dir / "feeds.db",
             "UPDATE messages SET body = replace(body, '\"i\":3', '\"i\":33') WHERE n = 3")
    out = alice.run("fsck", "--repair", "--channel", "lab", check=False)
    assert out.returncode == 1 and "NOT REPAIRED" in out.stdout and "owns the feed" in out.stdout

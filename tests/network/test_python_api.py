"""The Python API reaches the network through the daemon: what a script on another node sees."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

import kachery_node as kn
from tests.network.conftest import ALL_ROLES, BUCKET_COMBINATIONS, QUICK_ANSWERS


def _script(node, code: str, timeout: float = 60) -> str:
    result = subprocess.run([sys.executable, "-c", code], env=node.env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr + node.log()[-2000:]
    return result.stdout


def test_scripts_load_files_and_follow_feeds_across_nodes(lab, tmp_path):
    alice = lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ["request-files", "request-feeds"])
    out = _script(alice, """
import kachery_node as kn
print(kn.store_json({"gain": 0.5}))
feed = kn.create_feed()
sf = feed.load_subfeed("notes")
sf.append_messages([{"n": i} for i in range(5)])
print(sf.uri)
""")
    json_uri, sub_uri = out.split()
    got = _script(bob, f"""
import itertools
import kachery_node as kn
print(kn.load_json({json_uri!r}))
sf = kn.load_subfeed({sub_uri!r})
print([m["n"] for m in itertools.islice(sf.follow(start=0, timeout=5), 5)])  # not 5 s more
""")
    assert got.splitlines() == ["{'gain': 0.5}", "[0, 1, 2, 3, 4]"]


# Bucket: an upload through the hub's signed URLs and a load from the bucket alone; no message
# goes over the pub-sub service (the file is in the bucket when bob asks).
@pytest.mark.lab_combinations(*BUCKET_COMBINATIONS)
def test_upload_file_then_fetch_without_the_provider(lab, tmp_path):
    alice = lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ["request-files"])
    data = tmp_path / "result.txt"
    data.write_text("computed once\n")
    upload = f"import kachery_node as kn; print(kn.upload_file({str(data)!r}, channel='lab'))"
    uri = _script(alice, upload).strip()
    alice.stop()  # the bucket has it now: no provider needed
    load = f"import kachery_node as kn; print(kn.load_text({uri!r}), end='')"
    assert _script(bob, load) == "computed once\n"


@pytest.mark.lab_combinations(*BUCKET_COMBINATIONS)
def test_upload_large_file_then_fetch_without_the_provider(lab, tmp_path):
    """A file above 20 MB goes up as its manifest and chunks; another node loads it from the
    bucket alone (issue 11, defect 6: every upload above 20 MB failed)."""
    from kachery_node.protocol.bucket_layout import file_path
    from kachery_node.storage.file_uris import parse_uri

    alice = lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ["request-files"])
    data = tmp_path / "big.dat"
    data.write_bytes(os.urandom(45_000_123))  # three chunks: 20 MB, 20 MB, 5 MB
    upload = f"import kachery_node as kn; print(kn.upload_file({str(data)!r}, channel='lab'))"
    uri = _script(alice, upload, timeout=120).strip()
    key = parse_uri(uri)
    assert key.manifest_sha1, uri
    for sha1 in (key.manifest_sha1, *[c.sha1 for c in _manifest(alice, key.manifest_sha1).chunks]):
        assert lab.bucket_object(file_path("lab", sha1)).exists(), sha1
    alice.stop()  # the bucket has it now: no provider needed
    load = f"import kachery_node as kn; print(kn.load_file({uri!r}, channel='lab'))"
    path = _script(bob, load, timeout=120).strip()
    assert _sha1_of(path) == key.sha1 == _sha1_of(data)


def test_a_script_uses_the_path_the_daemon_fetched_without_looking_it_up_again(lab, tmp_path):
    """kn.load_file looks in the storage once (not there), has the daemon fetch the file, and
    returns the path the daemon verified and stored: no second look-up (issue 12, item 4)."""
    alice = lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ["request-files"])
    uri = kn.open_storage(alice.storage_dir).store_bytes(b"fetched once\n", "once.txt")
    copy = tmp_path / "copy.txt"
    out = _script(bob, f"""
from pathlib import Path
import kachery_node as kn
from kachery_node.storage.node_storage import Storage
looks = []
original = Storage.load_file
def counted(self, *args, **kwargs):
    looks.append(args[0])
    return original(self, *args, **kwargs)
Storage.load_file = counted
path = kn.load_file({uri!r})
print(len(looks), Path(path).read_text(), end="")
print(Path(kn.load_file({uri!r}, dest={str(copy)!r})).read_text(), end="")  # local now
""")
    assert out == "1 fetched once\nfetched once\n"
    assert copy.read_text() == "fetched once\n"


def _manifest(node, manifest_sha1: str):
    from kachery_node.storage.manifest import parse_manifest

    return parse_manifest(kn.open_storage(node.storage_dir).load_bytes(f"sha1://{manifest_sha1}"))


def _sha1_of(path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def test_not_found_says_what_was_tried(lab):
    lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ["request-files"], config=QUICK_ANSWERS)
    out = _script(bob, """
import kachery_node as kn
try:
    kn.load_text("sha1://" + "cd" * 20 + "/x.txt")
except kn.NotFoundError as e:
    print("NotFoundError:", e)
""")
    assert "NotFoundError:" in out and "lab" in out


def test_without_daemon_the_error_says_to_start_one(tmp_path):
    from tests.nodes import TestNode

    idle = TestNode(tmp_path, "idle")
    out = _script(idle, """
import kachery_node as kn
try:
    kn.load_text("sha1://" + "cd" * 20 + "/x.txt")
except kn.NotFoundError as e:
    print(e)
""")
    assert "kachery node start" in out
    assert kn.NotFoundError

"""The Python API reaches the network through the daemon: what a script on another node sees."""

from __future__ import annotations

import subprocess
import sys

import kachery_node as kn
from tests.network.conftest import ALL_ROLES


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
import kachery_node as kn
print(kn.load_json({json_uri!r}))
sf = kn.load_subfeed({sub_uri!r})
print([m["n"] for m in sf.follow(start=0, timeout=5)][:5])
""")
    assert got.splitlines() == ["{'gain': 0.5}", "[0, 1, 2, 3, 4]"]


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


def test_not_found_says_what_was_tried(lab):
    lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ["request-files"])
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

"""The `kachery` command across nodes: upload, load, cat and feed tail --follow of remote content."""

from __future__ import annotations

import json
import subprocess

import kachery_feeds as kf
from tests.network.conftest import ALL_ROLES
from tests.nodes import KACHERY


def test_cli_moves_files_and_follows_feeds(lab, tmp_path):
    alice = lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ["request-files", "request-feeds"])
    assert bob.json("info")["channels"] == [
        {"name": "lab", "hub": lab.hub.url, "roles": ["request-files", "request-feeds"]}]
    data = tmp_path / "table.csv"
    data.write_text("a,b\n1,2\n")
    uri = alice.run("upload", str(data), "--channel", "lab").stdout.strip()
    assert uri.startswith("sha1://") and uri.endswith("/table.csv")
    local = tmp_path / "fetched.csv"
    assert bob.run("load", uri, "--dest", str(local)).stdout.strip() == str(local)
    assert local.read_text() == "a,b\n1,2\n"
    assert bob.run("cat", uri).stdout == "a,b\n1,2\n"

    sf = kf.open_store(alice.storage_dir / "feeds.db").create_feed().load_subfeed("log")
    sf.append_messages([{"k": 0}, {"k": 1}])
    tail = subprocess.Popen([KACHERY, "feed", "tail", sf.uri, "--follow", "--timeout", "20"], env=bob.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert json.loads(tail.stdout.readline()) == {"k": 0}
        assert json.loads(tail.stdout.readline()) == {"k": 1}
        sf.append_message({"k": 2})
        assert json.loads(tail.stdout.readline()) == {"k": 2}
    finally:
        tail.kill()
        tail.wait(timeout=10)


def test_cli_errors_across_nodes(lab):
    lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ["request-files"])
    missing = bob.run("load", "sha1://" + "ef" * 20 + "/x", check=False)
    assert missing.returncode == 1 and "Error:" in missing.stderr and "lab" in missing.stderr
    wrong = bob.run("load", "sha1://" + "ef" * 20 + "/x", "--channel", "nope", check=False)
    assert wrong.returncode == 1 and "not joined" in wrong.stderr
    refused = bob.run("upload", __file__, "--channel", "lab", check=False)
    assert refused.returncode == 1 and "provide-files" in refused.stderr

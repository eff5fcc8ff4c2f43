"""Files between real nodes through a real hub, relay and bucket."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import httpx

import kachery_node as kn
from tests.network.conftest import ALL_ROLES, QUICK_ANSWERS


def _fetch(node, uri, channel=None):
    token = (node.storage_dir / "daemon-token").read_text().strip()
    lines = []
    with httpx.stream("POST", f"{node.client.base_url}/api/files/fetch",
                      json={"uri": uri, **({"channel": channel} if channel else {})},
                      headers={"Authorization": f"Bearer {token}"}, timeout=120) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            lines.append(json.loads(line))
    return lines


def test_small_and_large_files_move_between_nodes(lab, tmp_path):
    alice = lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ["request-files", "request-feeds"])
    small = tmp_path / "small.txt"
    small.write_text("hello from alice\n")
    big = tmp_path / "big.dat"
    big.write_bytes(os.urandom(45_000_000))
    alice_storage = kn.open_storage(alice.storage_dir)
    small_uri = alice_storage.store_file(small)
    big_uri = alice_storage.store_file(big)
    assert "manifest=" in big_uri

    lines = _fetch(bob, small_uri)
    assert lines[-1]["type"] == "finished", lines
    assert Path(lines[-1]["path"]).read_text() == "hello from alice\n"

    lines = _fetch(bob, big_uri, channel="lab")
    assert lines[-1]["type"] == "finished", lines
    assert any(x["type"] == "progress" for x in lines)
    with open(lines[-1]["path"], "rb") as f:
        assert hashlib.sha1(f.read()).hexdigest() == hashlib.sha1(big.read_bytes()).hexdigest()
    bob_storage = kn.open_storage(bob.storage_dir)
    assert bob_storage.load_bytes(big_uri, 19_999_990, 20_000_010) == big.read_bytes()[19_999_990:20_000_010]


def test_missing_file_is_a_clear_error(lab):
    lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ["request-files"], config=QUICK_ANSWERS)
    lines = _fetch(bob, "sha1://" + "ab" * 20 + "/nothing.txt")
    assert lines[-1]["type"] == "error" and lines[-1]["kind"] == "NotFoundError"
    assert "lab" in lines[-1]["error"]

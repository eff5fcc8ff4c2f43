"""A request made just after a grant (issue 14): it waits for the daemon to reconnect with its new
rights (bounded) instead of failing with "channel lab is not connected (connected)". Real hub and
daemons as processes."""

from __future__ import annotations

import time

import kachery_node as kn
from tests.network.conftest import ALL_ROLES
from tests.network.test_files import _fetch


def _provider_with_a_file(lab, tmp_path) -> str:
    alice = lab.add_node("alice", ALL_ROLES)
    path = tmp_path / "data.txt"
    path.write_text("served by alice\n")
    return kn.open_storage(alice.storage_dir).store_file(path)  # not in the bucket: alice must upload it


def _roles(node) -> list[str]:
    return node.client.status()["channels"][0]["roles"]


def test_a_file_request_right_after_the_grant_is_served(lab, tmp_path):
    uri = _provider_with_a_file(lab, tmp_path)
    bob = lab.add_node("bob", ["request-files", "provide-files"], grant=["provide-files"])
    assert _roles(bob) == ["provide-files"]
    lab.owner.run("channel", "grant", lab.channel, bob.node_id, "request-files")
    lines = _fetch(bob, uri)  # before bob's daemon has looked at the membership again
    assert lines[-1]["type"] == "finished", lines
    assert _roles(bob) == ["provide-files", "request-files"]


def test_a_request_while_the_daemon_reconnects_for_new_roles_waits_for_it(lab, tmp_path):
    uri = _provider_with_a_file(lab, tmp_path)
    bob = lab.add_node("bob", ["request-files", "provide-files"], grant=["provide-files"])
    lab.owner.run("channel", "grant", lab.channel, bob.node_id, "request-files")
    # Bob's daemon sees the grant at its periodic refresh (every 10 s) and reconnects for it:
    # ask at the moment it knows its new roles, while it is reconnecting.
    deadline = time.monotonic() + 20
    while "request-files" not in _roles(bob):
        assert time.monotonic() < deadline, bob.log()[-3000:]
        time.sleep(0.02)
    lines = _fetch(bob, uri)
    assert lines[-1]["type"] == "finished", lines
    assert "is not connected (connected)" not in str(lines)

"""Web views between real nodes (issue 16): what pages may make a node download through its
read-only browser token, and pages in headless Chromium that verify everything they show
(kachery.js), through a daemon from another origin and straight from the embedded bucket."""

from __future__ import annotations

import os
import tomllib

import httpx
import tomli_w

import kachery_node as kn
from tests.network.conftest import ALL_ROLES
from tests.nodes import TestNode


def _configure(node: TestNode, **daemon: object) -> None:
    path = node.storage_dir / "config.toml"
    settings = tomllib.loads(path.read_text())
    settings.setdefault("daemon", {}).update(daemon)
    path.write_text(tomli_w.dumps(settings))


def _browser_token(node: TestNode) -> str:
    return (node.storage_dir / "browser-token").read_text().strip()


def test_a_page_cannot_make_the_node_download_more_than_its_limit(lab):
    alice = lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ["request-files", "request-feeds"], start=False)
    _configure(bob, browser_max_fetch_bytes=100_000)
    bob.start()
    lab.wait_connected(bob)
    alice_storage = kn.open_storage(alice.storage_dir)
    small, big = os.urandom(60_000), os.urandom(300_000)
    small_uri = alice_storage.store_bytes(small, "small.bin")
    big_uri = alice_storage.store_bytes(big, "big.bin")
    base, token = bob.client.base_url, _browser_token(bob)
    r = httpx.get(f"{base}/api/files/read", params={"uri": big_uri, "token": token}, timeout=60)
    assert r.status_code == 413, r.text
    assert "browser_max_fetch_bytes" in r.json()["error"] and "100000" in r.json()["error"]
    assert not kn.open_storage(bob.storage_dir).has_file(big_uri)  # nothing kept
    r = httpx.get(f"{base}/api/files/read", params={"uri": small_uri, "token": token, "start": 10,
                                                      "end": 20}, timeout=60)
    assert r.status_code == 200 and r.content == small[10:20], r.text
    assert kn.open_storage(bob.storage_dir).has_file(small_uri)
    # The client (full token) still loads the big one; then pages read it from the node.
    bob_token = (bob.storage_dir / "daemon-token").read_text().strip()
    with httpx.stream("POST", f"{base}/api/files/fetch", json={"uri": big_uri}, timeout=60,
                      headers={"Authorization": f"Bearer {bob_token}"}) as resp:
        assert '"finished"' in list(resp.iter_lines())[-1]
    r = httpx.get(f"{base}/api/files/read", params={"uri": big_uri, "token": token}, timeout=60)
    assert r.status_code == 200 and r.content == big
    assert "refused a page's download" in bob.log()

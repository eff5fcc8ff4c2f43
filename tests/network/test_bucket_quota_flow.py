"""A file evicted from a channel's full bucket comes back from its provider (issue 13 item 6):
real hub and daemons, `kachery` commands."""

from __future__ import annotations

import json
import os

import kachery_node as kn
from kachery_node.protocol.bucket_layout import file_path
from tests.network.conftest import ALL_ROLES
from tests.network.test_files import _fetch


def _sha1_of(uri: str) -> str:
    return uri[len("sha1://"):].split("/", 1)[0].split("?", 1)[0]


def test_an_evicted_file_is_fetched_again_from_its_provider(lab, tmp_path):
    alice = lab.add_node("alice", ALL_ROLES)  # the channel's owner, and the files' provider
    out = alice.run("channel", "quota", "lab", "2.5MB").stdout
    assert "quota 2.5 MB (channel)" in out, out
    bob = lab.add_node("bob", ["request-files"])
    carol = lab.add_node("carol", ["request-files"])
    storage = kn.open_storage(alice.storage_dir)
    uris = []
    for i in range(3):
        path = tmp_path / f"f{i}.dat"
        path.write_bytes(os.urandom(1_000_000))
        uris.append(storage.store_file(path))
    objects = [lab.bucket_object(file_path("lab", _sha1_of(u))) for u in uris]

    for uri in uris:  # the third does not fit beside the first two: the first (least recently used) goes
        assert _fetch(bob, uri)[-1]["type"] == "finished"
    assert [o.exists() for o in objects] == [False, True, True]
    assert "bucket evicted 1 object(s), 1000000 bytes, of channel lab" in lab.hub.log()

    lines = _fetch(carol, uris[0])  # not in the bucket any more: requested, uploaded again by alice
    assert lines[-1]["type"] == "finished", lines
    assert kn.open_storage(carol.storage_dir).load_bytes(uris[0]) == (tmp_path / "f0.dat").read_bytes()
    assert [o.exists() for o in objects] == [True, False, True]

    status = json.loads(alice.run("hub", "status", "--json").stdout)
    [ch] = status["channels"]
    assert ch["bucket"]["bytes"] == 2_000_000 and ch["bucket"]["quota_bytes"] == 2_500_000
    assert ch["online"] == 3 and {n["label"] for n in ch["nodes"]} == {"alice", "bob", "carol"}
    assert ch["relay"]["messages_in"] > 0 and ch["relay"]["bytes_out"] > 0
    text = alice.run("hub", "status").stdout
    assert "lab\n    disk:  2 MB in 2 object(s) of 2.5 MB (channel)" in text, text
    assert "nodes: 3 of 3 online" in text and "relay:" in text
    assert "you own no channels" in bob.run("hub", "status").stdout  # not bob's channel: no figures


def test_an_upload_over_the_quota_fails_with_what_to_do(lab, tmp_path):
    alice = lab.add_node("alice", ALL_ROLES)
    alice.run("channel", "quota", "lab", "500kB")
    bob = lab.add_node("bob", ["request-files"])
    path = tmp_path / "big.dat"
    path.write_bytes(os.urandom(600_000))
    uri = kn.open_storage(alice.storage_dir).store_file(path)
    lines = _fetch(bob, uri)
    assert lines[-1]["type"] == "error" and lines[-1]["kind"] == "NotFoundError", lines
    error = lines[-1]["error"]
    assert "quota_exceeded" in error and "kachery channel quota lab" in error, error
    assert not lab.bucket_object(file_path("lab", _sha1_of(uri))).exists()

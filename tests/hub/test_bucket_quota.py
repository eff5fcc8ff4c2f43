# ruff: noqa: E501
"""Per-channel quotas of the embedded bucket (issue 13 item 6): a real hub, objects uploaded with
the signed URLs it hands a node, its disk seen from the outside."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

from kachery_node.errors import HubRequestError, MalformedRequestError, QuotaExceededError
from kachery_node.hub.bucket_quota import BucketQuota, format_size, parse_size
from kachery_node.hub.object_files import ObjectFiles
from kachery_node.hub.object_index import INDEX_NAME, ObjectIndex
from kachery_node.protocol.bucket_layout import pathify
from tests.nodes import free_port

from .conftest import HubProcess


def _sha1_path(data: bytes) -> str:
    return "sha1/" + pathify(hashlib.sha1(data).hexdigest())


HEAD = "feeds/" + pathify("ab" * 32) + "/subfeeds/" + pathify("cd" * 20) + "/head"
SEGMENT = HEAD[: -len("head")] + "segments/0"
TASK = "task_results/" + pathify("ef" * 32)


def _put(node, channel: str, path: str, data: bytes) -> httpx.Response:
    [url] = node.client.upload_urls(channel, [{"path": path, "size": len(data)}])
    return httpx.put(url, content=data, timeout=30)


def _get(hub, channel: str, path: str) -> int:
    return httpx.get(f"{hub.url}/bucket/{channel}/{path}", timeout=30).status_code


@pytest.fixture
def quota_hub(tmp_path):
    h = HubProcess(tmp_path / "hub", "--port", str(free_port()))  # the same port after a restart
    yield h
    h.stop()


def _member(make_actor_for, owner, channel):
    node = make_actor_for("uploader")
    roles = ["provide-files", "provide-feeds", "provide-tasks"]
    node.client.request_roles(channel, node.node_id, roles)
    owner.client.grant(channel, node.node_id, roles)
    return node


@pytest.fixture
def actors(quota_hub):
    from .conftest import Actor

    made = []

    def make(label):
        a = Actor(quota_hub.url, label)
        a.client.register_node(label)
        made.append(a)
        return a

    yield make
    for a in made:
        a.client.close()


def test_files_are_evicted_least_recently_used_and_the_rest_is_never(quota_hub, actors):
    owner = actors("owner")
    owner.client.create_channel("lab", quota=1000)
    node = _member(actors, owner, "lab")
    a, b = os.urandom(400), os.urandom(400)
    assert _put(node, "lab", _sha1_path(a), a).status_code == 200
    assert _put(node, "lab", _sha1_path(b), b).status_code == 200
    assert _get(quota_hub, "lab", _sha1_path(a)) == 200  # a is used now: b is the least recently used

    # A head of 300 bytes: 1100 > 1000, so b goes (and only b).
    r = _put(node, "lab", HEAD, b"h" * 300)
    assert r.status_code == 200 and r.json()["evicted"] == 1
    assert _get(quota_hub, "lab", _sha1_path(b)) == 404
    assert _get(quota_hub, "lab", _sha1_path(a)) == 200
    status = owner.client.hub_status()["channels"][0]["bucket"]
    assert (status["objects"], status["bytes"], status["refetchable_bytes"], status["quota_bytes"]) == (2, 700, 400, 1000)

    # A 900-byte segment cannot fit even without a (300 + 900 > 1000): refused, nothing evicted.
    r = _put(node, "lab", SEGMENT, b"s" * 900)
    assert r.status_code == 507 and r.json()["error"]["code"] == "quota_exceeded", r.text
    assert "never evicted" in r.json()["error"]["message"] and "kachery channel quota lab" in r.json()["error"]["message"]
    assert _get(quota_hub, "lab", _sha1_path(a)) == 200 and _get(quota_hub, "lab", SEGMENT) == 404
    assert owner.client.hub_status()["channels"][0]["bucket"]["bytes"] == 700

    # A task result and a replaced head fit by evicting a; then nothing evictable is left.
    assert _put(node, "lab", TASK, b"t" * 500).status_code == 200
    assert _get(quota_hub, "lab", _sha1_path(a)) == 404
    assert _put(node, "lab", HEAD, b"H" * 500).status_code == 200  # replaces 300 bytes: 1000 in all
    c = os.urandom(10)
    r = _put(node, "lab", _sha1_path(c), c)
    assert r.status_code == 507, r.text
    assert [_get(quota_hub, "lab", p) for p in (HEAD, TASK)] == [200, 200]
    assert "refused PUT /bucket/lab/sha1/" in quota_hub.log() and "507 quota_exceeded" in quota_hub.log()

    # The owner raises the quota; the write fits.
    assert owner.client.set_quota("lab", 2000)["bucket"]["quota_bytes"] == 2000
    assert _put(node, "lab", _sha1_path(c), c).status_code == 200


def test_an_upload_that_cannot_fit_is_refused_before_its_body(quota_hub, actors):
    owner = actors("owner")
    owner.client.create_channel("lab", quota=1000)
    node = _member(actors, owner, "lab")
    data = os.urandom(5000)
    [url] = node.client.upload_urls("lab", [{"path": _sha1_path(data), "size": len(data)}])
    parts = urlsplit(url)
    # Headers only: a hub that waited for the body would answer nothing (then 408, much later).
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
        s.sendall(f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: x\r\n"
                  f"Content-Length: {len(data)}\r\n\r\n".encode())
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < 50:
            chunk = s.recv(65536)  # within the socket's 10 s timeout, or the test fails
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 507") and b"quota_exceeded" in answer, answer


def test_only_the_owner_sees_and_sets_a_channels_figures(quota_hub, actors):
    owner, other = actors("owner"), actors("other")
    owner.client.create_channel("lab", quota=10**6)
    node = _member(actors, owner, "lab")
    other.client.request_roles("lab", other.node_id, ["request-files"])
    assert other.client.hub_status()["channels"] == []
    with pytest.raises(HubRequestError) as exc:
        other.client.set_quota("lab", 10**9)
    assert (exc.value.status, exc.value.code) == (403, "not_allowed")
    with pytest.raises(HubRequestError) as exc:
        owner.client.set_quota("lab", -5)
    assert exc.value.code == "malformed_request"
    [ch] = owner.client.hub_status()["channels"]
    assert ch["channel"] == "lab" and ch["bucket"]["quota_bytes"] == 10**6
    assert {n["node"] for n in ch["nodes"]} == {node.node_id, other.node_id}
    assert ch["relay"] == {"messages_in": 0, "bytes_in": 0, "messages_out": 0, "bytes_out": 0,
                           "messages_in_direct": 0}


def test_a_deleted_channels_objects_go_and_a_new_one_starts_empty(quota_hub, actors):
    owner = actors("owner")
    owner.client.create_channel("lab")
    node = _member(actors, owner, "lab")
    data = os.urandom(1000)
    assert _put(node, "lab", _sha1_path(data), data).status_code == 200
    assert _put(node, "lab", HEAD, b"head").status_code == 200
    [url] = node.client.upload_urls("lab", [{"path": TASK, "size": 4}])  # signed before the deletion
    owner.client.delete_channel("lab")
    assert _get(quota_hub, "lab", HEAD) == 404
    deadline = time.monotonic() + 20
    while (quota_hub.dir / "bucket" / "lab").exists() or any((quota_hub.dir / "bucket" / ".trash").iterdir()):
        assert time.monotonic() < deadline, "the deleted channel's objects stayed on disk"
        time.sleep(0.05)
    r = httpx.put(url, content=b"late", timeout=30)  # into a channel that is gone
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_channel"
    assert not (quota_hub.dir / "bucket" / "lab").exists()

    owner.client.create_channel("lab")
    [ch] = owner.client.hub_status()["channels"]
    assert (ch["bucket"]["objects"], ch["bucket"]["bytes"]) == (0, 0)
    assert _get(quota_hub, "lab", _sha1_path(data)) == 404


def test_the_index_survives_restarts_and_is_rebuilt_when_missing(quota_hub, actors):
    owner = actors("owner")
    owner.client.create_channel("lab", quota=1000)
    node = _member(actors, owner, "lab")
    old, new = os.urandom(400), os.urandom(400)
    assert _put(node, "lab", _sha1_path(old), old).status_code == 200
    assert _put(node, "lab", _sha1_path(new), new).status_code == 200
    assert _get(quota_hub, "lab", _sha1_path(old)) == 200  # now `new` is the least recently used
    before = owner.client.hub_status()["channels"][0]["bucket"]
    quota_hub.restart()  # a clean stop writes the pending access times
    assert owner.client.hub_status()["channels"][0]["bucket"] == before
    third = os.urandom(400)
    assert _put(node, "lab", _sha1_path(third), third).status_code == 200
    assert _get(quota_hub, "lab", _sha1_path(new)) == 404 and _get(quota_hub, "lab", _sha1_path(old)) == 200

    quota_hub.stop()
    (quota_hub.dir / "bucket" / INDEX_NAME).unlink()
    quota_hub.start()
    assert owner.client.hub_status()["channels"][0]["bucket"]["bytes"] == 800  # found by walking the bucket


def test_hub_default_quota_applies_to_channels_without_their_own(tmp_path):
    from .conftest import Actor

    h = HubProcess(tmp_path / "hub", "--channel-quota", "2kB")
    owner = Actor(h.url, "owner")
    try:
        owner.client.create_channel("lab.a")
        owner.client.create_channel("lab.b", quota=5000)
        figures = {c["channel"]: c["bucket"] for c in owner.client.hub_status()["channels"]}
        assert (figures["lab.a"]["quota_bytes"], figures["lab.a"]["quota_from"]) == (2000, "hub default")
        assert (figures["lab.b"]["quota_bytes"], figures["lab.b"]["quota_from"]) == (5000, "channel")
        owner.client.set_quota("lab.b", None)
        assert owner.client.hub_status()["channels"][1]["bucket"]["quota_bytes"] == 2000
    finally:
        owner.client.close()
        h.stop()


# ------------------------------------------------------------------ the pieces, without a hub
def test_sizes():
    assert [parse_size(s) for s in ("123", "10G", "1.5KiB", "2 MB", "3tb", "none", "Unlimited")] == [
        123, 10**10, 1536, 2 * 10**6, 3 * 10**12, None, None]
    for bad in ("", "-1", "10 parsecs", "1e9", "G"):
        with pytest.raises(MalformedRequestError):
            parse_size(bad)
    assert [format_size(n) for n in (None, 512, 12_000, 1_500_000_000)] == ["unlimited", "512 B", "12 kB", "1.5 GB"]


def test_quota_on_the_files_directly(tmp_path):
    files = ObjectFiles(tmp_path / "bucket")
    index = ObjectIndex(files)
    quota = BucketQuota(files, index, lambda channel: 100)

    def write(key: str, size: int) -> list[str]:
        evicted = quota.make_room(key.split("/")[0], key, size)
        tmp = files.new_tmp()
        tmp.write_bytes(b"x" * size)
        files.commit(tmp, key)
        index.record(key, size)
        return evicted

    keys = [f"ch/{_sha1_path(bytes([i]))}" for i in range(4)]
    later = int(time.time() * 1000) + 60_000
    for i, key in enumerate(keys[:3]):
        assert write(key, 30) == []
        index.note_access(key, now_ms=later + i)
    index.note_access(keys[0], now_ms=later + 10)  # 0 is the newest now: 1 then 2 go first
    assert write(keys[3], 50) == [keys[1], keys[2]]
    assert not files.path_of(keys[1]).exists() and not files.path_of(keys[1]).parent.exists()
    assert index.channel_usage("ch").bytes == 80
    with pytest.raises(QuotaExceededError):
        quota.make_room("ch", "ch/" + HEAD, 101)
    assert index.channel_usage("ch").objects == 2 and files.path_of(keys[0]).exists()
    assert write("other/" + HEAD, 100) == []  # another channel's quota is its own
    index.close()
    assert ObjectIndex(files).rebuilt is False

# ruff: noqa: E501
"""The embedded bucket from the outside: signed PUTs, public GETs with ranges, every refusal."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

import kachery_feeds as kf
from kachery_node.identity import Keypair
from kachery_node.protocol import feed_bucket
from kachery_node.protocol.bucket_layout import (
    file_path,
    subfeed_head_path,
    subfeed_segment_path,
    task_result_path,
)
from kachery_node.protocol.signed_urls import sign_upload_url

from .conftest import Actor


def sha1_path(data: bytes) -> str:
    h = hashlib.sha1(data).hexdigest()
    return f"sha1/{h[:2]}/{h[2:4]}/{h[4:6]}/{h}"


@pytest.fixture(scope="module")
def provider(hub):
    owner = Actor(hub.url, "owner")
    name = f"bucket.t{os.getpid()}"
    owner.client.create_channel(name)
    p = Actor(hub.url, "prov")
    p.client.register_node("prov")
    p.client.request_roles(name, p.node_id, ["provide-files", "provide-feeds"])
    owner.client.grant(name, p.node_id, ["provide-files", "provide-feeds"])
    return name, p


def test_put_then_public_get_range_head(hub, provider):
    ch, p = provider
    data = os.urandom(300_000)
    path = sha1_path(data)
    [url] = p.client.upload_urls(ch, [{"path": path, "size": len(data)}])
    r = httpx.put(url, content=data, timeout=30)
    assert r.status_code == 200 and r.json() == {"key": f"{ch}/{path}", "size": len(data)}
    obj = f"{hub.url}/bucket/{ch}/{path}"
    r = httpx.get(obj, timeout=30)  # no credentials: public
    assert r.content == data and r.headers["content-length"] == str(len(data)) and r.headers["etag"]
    r = httpx.get(obj, headers={"Range": "bytes=1000-1999"}, timeout=30)
    assert r.status_code == 206 and r.content == data[1000:2000]
    assert r.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    r = httpx.head(obj, timeout=30)
    assert r.status_code == 200 and r.headers["content-length"] == str(len(data)) and r.content == b""
    assert httpx.head(f"{hub.url}/bucket/{ch}/sha1/00/00/00/" + "0" * 40, timeout=30).status_code == 404
    r = httpx.get(f"{hub.url}/bucket-list", params={"prefix": f"{ch}/sha1/"}, timeout=30)
    assert f"{ch}/{path}" in r.json()["keys"]


def test_objects_are_readable_by_pages_from_any_origin(hub, provider):
    """CORS (spec/hub.md §7): a page on another origin reads objects and ranges, and sees why
    an object is absent; uploads stay without CORS headers."""
    ch, p = provider
    data = os.urandom(50_000)
    path = sha1_path(data)
    [url] = p.client.upload_urls(ch, [{"path": path, "size": len(data)}])
    r = httpx.put(url, content=data, timeout=30, headers={"Origin": "http://page.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    obj = f"{hub.url}/bucket/{ch}/{path}"
    origin = {"Origin": "http://page.example:8000"}
    preflight = httpx.options(obj, timeout=30, headers={
        **origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "range"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert {"GET", "HEAD"} <= set(preflight.headers["access-control-allow-methods"].replace(" ", "").split(","))
    assert "range" in preflight.headers["access-control-allow-headers"].lower()
    r = httpx.get(obj, timeout=30, headers={**origin, "Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == data[10:20]
    assert r.headers["access-control-allow-origin"] == "*"
    exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
    assert {"content-range", "content-length", "etag"} <= exposed
    r = httpx.head(obj, timeout=30, headers=origin)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
    r = httpx.get(f"{hub.url}/bucket/{ch}/sha1/00/00/00/" + "0" * 40, timeout=30, headers=origin)
    assert r.status_code == 404 and r.headers["access-control-allow-origin"] == "*"


def _refused(r: httpx.Response, status: int, code: str) -> None:
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text


def test_upload_refusals_change_nothing(hub, provider):
    ch, p = provider
    data = b"hello bucket" * 100
    path = sha1_path(data)
    [url] = p.client.upload_urls(ch, [{"path": path, "size": len(data)}])
    base, query = url.split("?")
    q = {k: v[0] for k, v in parse_qs(query).items()}
    obj_url = f"{hub.url}/bucket/{ch}/{path}"

    # over the signed size: by Content-Length, and while streaming (chunked, no length)
    _refused(httpx.put(url, content=data + b"x", timeout=30), 413, "too_large")
    def gen():
        yield data
        yield b"more"
    _refused(httpx.put(url, content=gen(), timeout=30), 413, "too_large")
    # the URL used for another path, or with a changed size or expiry
    other = sha1_path(b"other")
    _refused(httpx.put(f"{hub.url}/bucket/{ch}/{other}?{query}", content=b"other", timeout=30), 401, "bad_signature")
    _refused(httpx.put(f"{base}?{urlencode({**q, 'max_size': str(10**9)})}", content=data, timeout=30), 401, "bad_signature")
    _refused(httpx.put(f"{base}?{urlencode({**q, 'expires': str(int(q['expires']) + 3600)})}", content=data, timeout=30), 401, "bad_signature")
    # no signature at all, or a malformed one
    _refused(httpx.put(base, content=data, timeout=30), 401, "bad_signature")
    _refused(httpx.put(f"{base}?{urlencode({**q, 'sig': 'zz'})}", content=data, timeout=30), 400, "malformed_request")
    # signed by a key that is not the hub's
    forged = sign_upload_url(Keypair.generate(), f"{hub.url}/bucket", f"{ch}/{path}", max_size=len(data),
                             expires=int(time.time()) + 600, node_id=p.node_id)
    _refused(httpx.put(forged, content=data, timeout=30), 401, "bad_signature")
    # a URL genuinely signed by the hub (its key read from the hub's directory) but expired
    hub_key = Keypair.from_seed_hex((hub.dir / "hub.key").read_text().strip())
    expired = sign_upload_url(hub_key, f"{hub.url}/bucket", f"{ch}/{path}", max_size=len(data),
                              expires=int(time.time()) - 1, node_id=p.node_id)
    _refused(httpx.put(expired, content=data, timeout=30), 401, "expired")
    # content that does not match its sha1/ name
    [url2] = p.client.upload_urls(ch, [{"path": path, "size": len(data)}])
    _refused(httpx.put(url2, content=b"X" * len(data), timeout=30), 422, "hash_mismatch")
    assert httpx.head(obj_url, timeout=30).status_code == 404  # nothing was stored
    # path traversal in the URL itself
    for bad in (f"{ch}/../../hub.key", f"{ch}/%2e%2e/%2e%2e/hub.key", f"{ch}/sha1/..%2f..%2fhub.key",
                f"{ch}/.tmp/x", f"{ch}/sha1/a%5cb", f"{ch}/sha1/a%00b"):
        r = httpx.put(f"{hub.url}/bucket/{bad}?{query}", content=data, timeout=30)
        assert r.status_code in (400, 401, 404), (bad, r.status_code)
        r = httpx.get(f"{hub.url}/bucket/{bad}", timeout=30)
        assert r.status_code in (400, 404), (bad, r.status_code)
        assert b"hub" not in r.content[:20]
    assert not list((hub.dir / "bucket" / ".tmp").iterdir())  # no partial uploads left behind
    assert "refused PUT" in hub.log()
    # finally the genuine upload works
    assert httpx.put(url2, content=data, timeout=30).status_code == 200


def test_feeds_objects_need_no_hash_and_overwrite_atomically(hub, provider):
    ch, p = provider
    path = subfeed_head_path("", "ab" * 32, "12" * 20)[1:]
    big_a, big_b = b"a" * 8_000_000, b"b" * 8_000_000
    [u1, u2] = p.client.upload_urls(ch, [{"path": path, "size": len(big_a)}, {"path": path, "size": len(big_b)}])
    assert httpx.put(u1, content=big_a, timeout=30).status_code == 200
    seen: set[bytes] = set()
    stop = threading.Event()

    def reader():
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                body = c.get(f"{hub.url}/bucket/{ch}/{path}").content
                seen.add(body[:1] + body[-1:] + str(len(body)).encode())

    t = threading.Thread(target=reader)
    t.start()
    try:
        def slow():
            for i in range(0, len(big_b), 1_000_000):
                yield big_b[i:i + 1_000_000]
                time.sleep(0.02)
        assert httpx.put(u2, content=slow(), timeout=30).status_code == 200
        time.sleep(0.2)
    finally:
        stop.set()
        t.join(timeout=30)
    # readers saw the whole old object or the whole new one, never a mix or a prefix
    assert seen <= {b"aa8000000", b"bb8000000"} and b"bb8000000" in seen


def test_upload_url_is_bound_to_channel_prefix(hub, provider):
    ch, p = provider
    [url] = p.client.upload_urls(ch, [{"path": "sha1/aa/aa/aa/" + "a" * 40, "size": 5}])
    assert urlsplit(url).path.startswith(f"/bucket/{ch}/sha1/")


@pytest.fixture(scope="module")
def all_providers(hub):
    """A channel whose owner node and a second member may upload every kind of object."""
    roles = ["provide-files", "provide-feeds", "provide-tasks"]
    owner = Actor(hub.url, "owner")
    owner.client.register_node("owner")
    name = f"squat.t{os.getpid()}"
    owner.client.create_channel(name)
    squatter = Actor(hub.url, "squatter")
    squatter.client.register_node("squatter")
    for a in (owner, squatter):
        a.client.request_roles(name, a.node_id, roles)
        owner.client.grant(name, a.node_id, roles)
    yield name, owner, squatter
    owner.client.close()
    squatter.client.close()


def test_keys_outside_the_layout_are_refused_and_feeds_still_flow(hub, all_providers, tmp_path):
    """Issue 11, defect 1: a member planted `feeds/ab` (a file where the directory of every
    `feeds/ab/…` object must go) and blocked the channel's feeds. The hub signs only the layout's
    shapes (spec/bucket.md §1)."""
    from kachery_node.errors import HubRequestError

    ch, owner, squatter = all_providers
    source = kf.open_store(tmp_path / "a.db").create_feed().load_subfeed("log")
    source.append_messages([{"i": i} for i in range(1500)])
    feed, sub = source.feed_id, source.subfeed_hash
    head_path = subfeed_head_path("", feed, sub)[1:]
    squats = [f"feeds/{feed[:2]}", f"feeds/{feed[:2]}/{feed[2:4]}/head", f"feeds/{feed[:2]}/{feed[2:4]}",
              *(f"feeds/{i:02x}" for i in range(256)), *(f"task_results/{i:02x}" for i in range(256)),
              f"sha1/{'ab' * 20}", "sha1/aa/bb/cc/" + "a" * 40,  # p(h) not the hash's own prefix
              head_path + "/x", head_path.replace("/head", "/segments"), head_path.replace("/head", "/segments/01"),
              head_path.replace("/head", "/segments/-1"), head_path.replace("/head", "/tail"),
              head_path.replace(feed, feed.upper()), head_path.replace(feed, feed[:40]),
              task_result_path("", "ab" * 20)[1:], file_path("", "ab" * 32)[1:]]
    for path in squats:
        with pytest.raises(HubRequestError) as info:
            squatter.client.upload_urls(ch, [{"path": path, "size": 10}])
        assert (info.value.status, info.value.code) == (400, "invalid_path"), path
        assert "bucket layout" in info.value.message
    # One bad object refuses the whole request: nothing is signed.
    with pytest.raises(HubRequestError) as info:
        squatter.client.upload_urls(ch, [{"path": head_path, "size": 10}, {"path": f"feeds/{feed[:2]}", "size": 1}])
    assert info.value.code == "invalid_path"
    assert "refused POST /api/node (400 invalid_path)" in hub.log()
    r = httpx.get(f"{hub.url}/bucket-list", params={"prefix": f"{ch}/"}, timeout=30)
    assert r.json()["keys"] == []

    # The owner's subfeed goes into the bucket and comes out whole.
    seg_path = subfeed_segment_path("", feed, sub, 0)[1:]
    count, head = feed_bucket.head_for(source)
    segment = feed_bucket.segment_for(source, 0)
    urls = owner.client.upload_urls(ch, [{"path": seg_path, "size": len(segment)}, {"path": head_path, "size": len(head)}])
    for url, data in zip(urls, (segment, head), strict=True):
        assert httpx.put(url, content=data, timeout=30).status_code == 200
    replica = kf.open_store(tmp_path / "b.db").load_subfeed(source.uri)
    importer = feed_bucket.SegmentImporter(replica)
    got = feed_bucket.parse_head(httpx.get(f"{hub.url}/bucket/{ch}/{head_path}", timeout=30).content)
    for i in feed_bucket.segments_to_download(0, got):
        importer.add_segment(httpx.get(f"{hub.url}/bucket/{ch}/{subfeed_segment_path('', feed, sub, i)[1:]}",
                                       timeout=30).content)
    importer.add_lines(got.tail)
    assert importer.finish() == count == 1500
    assert replica.get_messages() == source.get_messages()
    # Every shape of the layout is signed for a node with its role.
    task = task_result_path("", "cd" * 32)[1:]
    assert len(squatter.client.upload_urls(ch, [{"path": task, "size": 5}, {"path": file_path("", "ef" * 20)[1:], "size": 5},
                                                {"path": subfeed_segment_path("", feed, sub, 10**15 - 1)[1:], "size": 5}])) == 3

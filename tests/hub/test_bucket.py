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

from kachery_node.channels.signed_urls import sign_upload_url
from kachery_node.identity import Keypair

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
    path = "feeds/ab/cd/ef/abcdef/subfeeds/12/34/56/123456/subfeed.json"
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
    [url] = p.client.upload_urls(ch, [{"path": "sha1/aa/bb/cc/" + "a" * 40, "size": 5}])
    assert urlsplit(url).path.startswith(f"/bucket/{ch}/sha1/")

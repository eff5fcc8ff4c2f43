"""The daemon's web-safe policy for pages (local_api_browser.py): the origin allow-list, what the
read-only browser token may make the node do, and kachery.js served at /js/."""

from __future__ import annotations

import hashlib
import tomllib

import httpx
import tomli_w

import kachery_feeds as kf
import kachery_node as kn
from tests.nodes import TestNode

ALLOWED = "http://127.0.0.1:9"  # a page origin in the allow-list (nothing needs to listen there)


def _configure(node: TestNode, **daemon: object) -> None:
    path = node.storage_dir / "config.toml"
    settings = tomllib.loads(path.read_text())
    settings.setdefault("daemon", {}).update(daemon)
    path.write_text(tomli_w.dumps(settings))


def _browser_token(node: TestNode) -> str:
    return (node.storage_dir / "browser-token").read_text().strip()


def test_pages_from_origins_not_allowed_are_refused_with_a_reason_and_logged(tmp_path):
    node = TestNode(tmp_path, "web")
    _configure(node, cors_origins=[ALLOWED])
    node.start()
    try:
        sf = kf.open_store(node.storage_dir / "feeds.db").create_feed().load_subfeed("s")
        sf.append_message({"x": 1})
        base, token = node.client.base_url, _browser_token(node)
        params = {"uri": sf.uri, "token": token}
        evil = {"Origin": "http://evil.example:8000"}
        r = httpx.get(f"{base}/api/feeds/messages", params=params, headers=evil, timeout=10)
        assert r.status_code == 403 and r.json()["kind"] == "OriginNotAllowed"
        assert "http://evil.example:8000" in r.json()["error"] and "cors_origins" in r.json()["error"]
        # The page may read why (nothing else): the refusal names its origin for CORS.
        assert r.headers["access-control-allow-origin"] == "http://evil.example:8000"
        r = httpx.get(f"{base}/api/feeds/messages", params=params, headers={"Origin": ALLOWED}, timeout=10)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ALLOWED
        assert r.json()["messages"][0]["payload"] == {"x": 1}
        # Without an Origin (scripts, curl) or from the daemon's own origin (its viewer): served.
        assert httpx.get(f"{base}/api/feeds/messages", params=params, timeout=10).status_code == 200
        own = {"Origin": base}
        r = httpx.get(f"{base}/api/feeds/messages", params=params, headers=own, timeout=10)
        assert r.status_code == 200
        node.stop()
        assert "refused requests from web origin 'http://evil.example:8000'" in node.log()
    finally:
        node.stop()


def test_kachery_js_is_served_as_es_modules(tmp_path):
    node = TestNode(tmp_path, "js")
    node.start()
    try:
        base = node.client.base_url
        r = httpx.get(f"{base}/js/src/index.js", timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
        assert "export" in r.text and "followFromDaemon" in r.text
        r = httpx.get(f"{base}/js/vendor/noble-ed25519.js", timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
        for bad in ["src/../../pyproject.toml", "test/vectors.test.js", "src/nothere.js", "README.md"]:
            assert httpx.get(f"{base}/js/{bad}", timeout=10).status_code == 404, bad
    finally:
        node.stop()


def test_browser_token_reads_stored_files_and_ranges_but_follows_within_limits(tmp_path):
    node = TestNode(tmp_path, "files")
    _configure(node, browser_max_follows=0)
    node.start()
    try:
        data = bytes(range(256)) * 1000
        uri = kn.Storage(node.storage_dir).store_bytes(data, "x.bin")
        base, token = node.client.base_url, _browser_token(node)
        r = httpx.get(f"{base}/api/files/read", params={"uri": uri, "token": token}, timeout=10)
        assert r.status_code == 200 and r.content == data
        assert hashlib.sha1(r.content).hexdigest() in uri
        r = httpx.get(f"{base}/api/files/read", params={"uri": uri, "token": token, "start": 1000,
                                                          "end": 1010}, timeout=10)
        assert r.content == data[1000:1010] and r.headers["x-kachery-file-size"] == str(len(data))
        for params, status in [({"uri": "sha1://nothex/x"}, 400),
                               ({"uri": uri, "start": "5", "end": "2"}, 400),
                               ({"uri": uri, "start": "-1"}, 400)]:
            r = httpx.get(f"{base}/api/files/read", params={**params, "token": token}, timeout=10)
            assert r.status_code == status and r.json()["error"], params
        # The browser token cannot upload, and pages may make it follow no remote subfeed here.
        r = httpx.post(f"{base}/api/files/upload", params={"token": token}, timeout=10,
                       json={"uri": uri, "channel": "x"})
        assert r.status_code == 403
        r = httpx.post(f"{base}/api/files/upload", headers={"Authorization": f"Bearer {token}"},
                       json={"uri": uri, "channel": "x"}, timeout=10)
        assert r.status_code == 403
        for path in ("/api/tasks/request", "/api/feeds/follow", "/api/stop"):  # nor tasks, nor stopping
            r = httpx.post(f"{base}{path}", headers={"Authorization": f"Bearer {token}"}, json={}, timeout=10)
            assert r.status_code == 403, path
        remote = "feed://" + "ab" * 32 + "/sensor"
        r = httpx.get(f"{base}/api/feeds/stream", params={"uri": remote, "token": token, "follow": "1"},
                      timeout=10)
        assert r.status_code == 429 and "browser_max_follows" in r.json()["error"]
        r = httpx.get(f"{base}/api/feeds/stream", params={"uri": remote, "token": token, "follow": "yes"},
                      timeout=10)
        assert r.status_code == 400
    finally:
        node.stop()

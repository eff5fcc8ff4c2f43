"""Web views between real nodes (issue 16): what pages may make a node download through its
read-only browser token, and pages in headless Chromium that verify everything they show
(kachery.js), through a daemon from another origin and straight from the embedded bucket."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import httpx
import nacl.bindings
import tomli_w

import kachery_feeds as kf
import kachery_node as kn
from kachery_feeds.messages import build_body, sign_hash
from kachery_node.protocol.bucket_layout import subfeed_head_path
from tests.network.conftest import ALL_ROLES
from tests.nodes import TestNode, free_port


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
    assert not kn.open_storage(bob.storage_dir).has_file(big_uri)  # nothing kept,
    tmp = bob.storage_dir / "tmp"
    assert not tmp.exists() or not any(tmp.iterdir())  # not even the partial download
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


# ----------------------------------------------------------------------------- pages in Chromium
REPO = Path(__file__).parents[2]
PLOT = "examples/live_plot.html"


@contextmanager
def _static_server(directory: Path):
    """A page server on its own loopback port: another origin than the daemon and the hub."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(directory)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/{PLOT}", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=10)


class _TamperingProxy:
    """A man in the middle between a page and a daemon: forwards GETs and, in the feed stream,
    replaces message ``number``'s signed wire line (and the record fields beside it) with
    ``tamper(line)``, every time it passes."""

    def __init__(self, upstream: str, number: int, tamper: Callable[[str], str]) -> None:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the body ends when the connection closes

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("origin", "last-event-id")}
                try:
                    with httpx.stream("GET", upstream + self.path, headers=headers, timeout=None) as r:
                        self.send_response(r.status_code)
                        for k in ("content-type", "access-control-allow-origin", "vary", "cache-control"):
                            if k in r.headers:
                                self.send_header(k, r.headers[k])
                        self.end_headers()
                        for line in r.iter_lines():
                            if line.startswith("data: "):
                                d = json.loads(line[6:])
                                if isinstance(d, dict) and d.get("number") == proxy.number:
                                    d["wire"] = tamper(d["wire"])
                                    d["payload"] = json.loads(d["wire"].rsplit("\t", 1)[0])["payload"]
                                    proxy.tampered += 1
                                    line = "data: " + json.dumps(d)
                            self.wfile.write(line.encode() + b"\n")
                            self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError, httpx.HTTPError):
                    pass  # the page or the daemon went away

        self.number = number
        self.tampered = 0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _TamperingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _open(chromium, url: str):
    page = chromium.new_page(url)
    page.wait_for("window.kacheryView !== undefined")
    return page


def _text(page, element_id: str) -> str:
    return page.evaluate(f"document.getElementById('{element_id}').textContent")


def _plotted(page, field: str) -> list[float]:
    return page.evaluate(f"(window.kacheryView.series.get('{field}') || []).map(p => p[2])")


def test_pages_from_another_origin_follow_a_remote_subfeed_through_the_daemon(lab, chromium, artifacts):
    alice = lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ["request-feeds", "request-files"], start=False)
    with _static_server(REPO) as port:
        page_origin = f"http://127.0.0.1:{port}"
        _configure(bob, cors_origins=[page_origin], browser_max_fetch_bytes=200_000)
        bob.start()
        lab.wait_connected(bob)
        sf = kf.open_store(alice.storage_dir / "feeds.db").create_feed().load_subfeed("sensor")
        sf.append_messages([{"t": i, "temperature": 20 + i % 3, "pressure": 1000 + i} for i in range(10)])
        token = _browser_token(bob)
        query = f"uri={sf.uri}&follow=1&units=temperature:°C,pressure:hPa"
        # (a) The page makes bob follow alice's subfeed (follow=1) and verifies every message.
        page = _open(chromium, f"{page_origin}/{PLOT}?daemon={bob.client.base_url}&{query}#token={token}")
        page.wait_for("document.getElementById('count').textContent === '10'", timeout=30)
        for i in range(10, 15):
            sf.append_message({"t": i, "temperature": 30, "pressure": 1000 + i})
        page.wait_for("document.getElementById('count').textContent === '15'", timeout=30)
        assert _text(page, "status") == "live" and _text(page, "rejected-count") == "0"
        assert _plotted(page, "temperature") == [20 + i % 3 for i in range(10)] + [30] * 5
        assert "temperature [°C]" in _text(page, "legend") and "pressure [hPa]" in _text(page, "legend")
        page.screenshot(artifacts / "web-daemon-other-origin.png")

        # The same page reads a file of alice's through bob, verified in the page; one over
        # bob's limit for pages is refused with bob's reason.
        alice_storage = kn.open_storage(alice.storage_dir)
        small, big = os.urandom(60_000), os.urandom(300_000)
        small_uri = alice_storage.store_bytes(small, "small.bin")
        big_uri = alice_storage.store_bytes(big, "big.bin")
        read = """(async () => {{ const k = await import('/js/src/index.js');
            try {{ const options = {{token: {token!r}, start: 100, end: 110}};
                   return Array.from(await k.readFileFromDaemon({daemon!r}, {uri!r}, options)); }}
            catch (e) {{ return e.name + ': ' + e.message; }} }})()"""
        got = page.evaluate(read.format(daemon=bob.client.base_url, uri=small_uri, token=token))
        assert got == list(small[100:110]), got
        got = page.evaluate(read.format(daemon=bob.client.base_url, uri=big_uri, token=token))
        assert got.startswith("DaemonRefusedError: daemon refused the request (HTTP 413)"), got
        assert "browser_max_fetch_bytes" in got

        # A page from an origin bob does not allow gets bob's reason, not "reconnecting…".
        other = f"http://localhost:{port}"
        page = _open(chromium, f"{other}/{PLOT}?daemon={bob.client.base_url}&{query}#token={token}")
        page.wait_for("document.getElementById('status').textContent === 'error'", timeout=30)
        assert f"does not allow pages from {other}" in _text(page, "error")
        assert _text(page, "count") == "0"
        page.screenshot(artifacts / "web-daemon-origin-refused.png")
        assert f"refused requests from web origin '{other}'" in bob.log()

        # (c) A man in the middle alters message 12 in the stream: the page shows it rejected,
        # plots nothing of it, and nothing after it (the chain stops there).
        def forge(wire: str) -> str:
            return wire.replace('"temperature":30', '"temperature":99')

        with _TamperingProxy(bob.client.base_url, 12, forge) as proxy:
            page = _open(chromium, f"{page_origin}/{PLOT}?daemon={proxy.url}&{query}#token={token}")
            page.wait_for("document.getElementById('rejected-count').textContent === '1'", timeout=30)
            assert proxy.tampered >= 1
            assert "bad signature on message 12" in _text(page, "rejected")
            assert _text(page, "count") == "12"
            assert 99 not in _plotted(page, "temperature")
            assert _plotted(page, "temperature") == [20 + i % 3 for i in range(10)] + [30] * 2
            page.screenshot(artifacts / "web-daemon-tampered-rejected.png")

        # bob's own viewer (kachery node viewer) follows another remote subfeed of alice's.
        other_sf = kf.open_store(alice.storage_dir / "feeds.db").load_feed(sf.feed_id).load_subfeed("other")
        other_sf.append_messages([{"level": i * 0.5} for i in range(7)])
        page = _open(chromium, bob.run("node", "viewer", other_sf.uri).stdout.strip())
        page.wait_for("document.querySelectorAll('#rows tr').length === 7", timeout=30)
        assert _text(page, "status") == "live" and _plotted(page, "level") == [i * 0.5 for i in range(7)]
        page.screenshot(artifacts / "web-daemon-viewer-remote.png")


def test_a_page_with_no_daemon_follows_a_published_subfeed_from_the_embedded_bucket(lab, chromium, artifacts):
    alice = lab.add_node("alice", ALL_ROLES)  # the only node: nobody follows the subfeed
    sf = kf.open_store(alice.storage_dir / "feeds.db").create_feed().load_subfeed("sensor")
    sf.append_messages([{"t": i, "temperature": 20 + i % 3} for i in range(10)])
    # alice publishes it: her daemon keeps its segments and head current in the channel's bucket.
    alice.run("feed", "publish", sf.uri, "--channel", lab.channel)
    head = lab.bucket_object(subfeed_head_path(lab.channel, sf.feed_id, sf.subfeed_hash))
    _wait(lambda: head.exists() and json.loads(head.read_bytes())["count"] == 10, "the head in the bucket")
    # The page uses no daemon: it reads the hub's bucket, over HTTP, from another origin.
    with _static_server(REPO) as port:
        url = (f"http://127.0.0.1:{port}/{PLOT}?bucket={lab.hub.url}/bucket&channel={lab.channel}"
               f"&uri={sf.uri}&units=temperature:°C")
        page = _open(chromium, url)
        page.wait_for("document.getElementById('count').textContent === '10'", timeout=30)
        assert _plotted(page, "temperature") == [20 + i % 3 for i in range(10)]
        assert _text(page, "rejected-count") == "0"
        # Live: alice appends, her daemon republishes the head (the publication), the page polls it.
        for i in range(10, 13):
            sf.append_message({"t": i, "temperature": 25})
        page.wait_for("document.getElementById('count').textContent === '13'", timeout=30)
        _wait(lambda: json.loads(head.read_bytes())["count"] == 13, "the head to settle")
        page.screenshot(artifacts / "web-bucket-no-daemon.png")

        # (c) Someone with write access to the bucket's disk appends a forged message to the head.
        d = json.loads(head.read_bytes())
        last_body = d["tail"][-1].rsplit("\t", 1)[0].encode()
        forged = build_body(sf.feed_id, sf.subfeed_hash, 13, hashlib.sha256(last_body).digest(),
                            int(time.time() * 1000), b'{"t":13,"temperature":99}')
        _public, forger_key = nacl.bindings.crypto_sign_keypair()  # not the feed's key
        signature = sign_hash(forger_key, hashlib.sha256(forged).digest())
        d["tail"].append(forged.decode() + "\t" + signature.hex())
        d["count"] += 1
        head.write_bytes(json.dumps(d).encode())
        page.wait_for("document.getElementById('rejected-count').textContent === '1'", timeout=30)
        assert "bad signature on message 13" in _text(page, "rejected")
        assert _text(page, "count") == "13" and 99 not in _plotted(page, "temperature")
        page.screenshot(artifacts / "web-bucket-tampered-rejected.png")


def _wait(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)

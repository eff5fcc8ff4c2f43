"""The examples in examples/ run against real nodes: a follower script and a live web page."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import kachery_feeds as kf
from tests.network.conftest import ALL_ROLES
from tests.nodes import free_port

EXAMPLES = Path(__file__).parents[2] / "examples"


def test_follow_remote_feed_script(lab):
    alice = lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ["request-feeds"])
    sf = kf.open_store(alice.storage_dir / "feeds.db").create_feed().load_subfeed("sensor")
    sf.append_messages([{"t": i} for i in range(3)])
    follower = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "follow_remote_feed.py"), sf.uri, "--count", "8", "--timeout", "30"],
        env=bob.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert follower.stdout.readline().startswith("following ")
    for i in range(3):  # the first three arrive from the bucket or a push
        assert f'{{"t": {i}}}' in follower.stdout.readline()
    for i in range(3, 8):  # then live, as alice appends
        sf.append_message({"t": i})
        line = follower.stdout.readline()
        assert line.startswith(f"#{i} ") and f'{{"t": {i}}}' in line, line
    assert follower.wait(timeout=30) == 0, follower.stderr.read()


def test_live_plot_page_plots_a_remote_feed(lab, chromium, artifacts):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(EXAMPLES.parent)],  # the page imports ../js/
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        alice = lab.add_node("alice", ALL_ROLES)
        bob = lab.add_node("bob", ["request-feeds"], start=False)
        bob.env["KACHERY_CORS_ORIGINS"] = f"http://127.0.0.1:{port}"
        bob.start()
        lab.wait_connected(bob)
        sf = kf.open_store(alice.storage_dir / "feeds.db").create_feed().load_subfeed("sensor")
        sf.append_messages([{"t": i, "temperature": 20 + i % 3} for i in range(10)])
        bob.client.request("POST", "/api/feeds/follow", json_body={"uri": sf.uri})
        token = (bob.storage_dir / "browser-token").read_text().strip()
        url = (f"http://127.0.0.1:{port}/examples/live_plot.html?daemon={bob.client.base_url}"
               f"&uri={sf.uri}#token={token}")
        deadline = time.monotonic() + 20
        while True:  # wait for the static server
            try:
                page = chromium.new_page(url)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        page.wait_for("document.getElementById('count').textContent === '10'")
        for i in range(10, 15):
            sf.append_message({"t": i, "temperature": 30})
        page.wait_for("document.getElementById('count').textContent === '15'")
        assert page.evaluate("document.getElementById('status').textContent") == "live"
        assert "temperature" in page.evaluate("document.getElementById('legend').textContent")
        page.screenshot(artifacts / "example-live-plot.png")
    finally:
        server.kill()
        server.wait(timeout=10)

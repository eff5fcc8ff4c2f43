"""The daemon's built-in live viewer, driven in headless Chromium."""

from __future__ import annotations

import time

import kachery_feeds as kf
from tests.nodes import TestNode


def test_viewer_shows_table_and_plot_live(tmp_path, chromium, artifacts):
    node = TestNode(tmp_path, "viewer")
    node.start()
    try:
        sf = kf.open_store(node.storage_dir / "feeds.db").create_feed().load_subfeed("sensor")
        sf.append_messages([{"t": i, "temperature": 20 + i % 5, "label": f"s{i}"} for i in range(10)])
        url = node.run("node", "viewer", sf.uri).stdout.strip()
        page = chromium.new_page(url)
        page.wait_for("document.querySelectorAll('#rows tr').length === 10")
        assert page.evaluate("document.getElementById('status').textContent") == "live"
        # New messages appear without reloading.
        for i in range(10, 15):
            sf.append_message({"t": i, "temperature": 30, "label": f"s{i}"})
            time.sleep(0.02)
        page.wait_for("document.querySelectorAll('#rows tr').length === 15")
        assert page.evaluate("document.querySelector('#rows tr').dataset.number") == "14"
        legend = page.evaluate("document.getElementById('legend').textContent")
        assert "temperature" in legend and "t" in legend and "label" not in legend
        # The plot has ink on it.
        inked = page.evaluate("""(() => { const c = document.getElementById('plot');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; })()""")
        assert inked > 500
        # Each field its own panel (own scale, ticks); the picker hides one; pause freezes.
        assert page.evaluate("document.getElementById('count').textContent") == "15"
        assert page.evaluate("document.getElementById('rejected-count').textContent") == "0"
        tall = page.evaluate("document.getElementById('plot').clientHeight")
        page.evaluate("document.querySelector('#legend input[data-field=\"t\"]').click()")
        page.wait_for(f"document.getElementById('plot').clientHeight < {tall}")
        page.evaluate("document.getElementById('pause').click()")
        assert page.evaluate("document.getElementById('status').textContent") == "paused (live)"
        page.evaluate("document.getElementById('pause').click()")
        assert page.evaluate("document.getElementById('status').textContent") == "live"
        page.screenshot(artifacts / "daemon-viewer.png")
    finally:
        node.stop()


def test_viewer_without_token_reports_error(tmp_path, chromium):
    node = TestNode(tmp_path, "viewer2")
    node.start()
    try:
        sf = kf.open_store(node.storage_dir / "feeds.db").create_feed().load_subfeed("x")
        sf.append_message({"v": 1})
        url = node.run("node", "viewer", sf.uri).stdout.strip().split("#")[0]  # drop the token
        page = chromium.new_page(url)
        page.wait_for("document.getElementById('status').classList.contains('error')")
        assert "no token" in page.evaluate("document.getElementById('error').textContent")
        assert page.evaluate("document.querySelectorAll('#rows tr').length") == 0
        # A wrong token: the daemon's refusal is shown, not "reconnecting…" forever.
        page = chromium.new_page(url + "#token=" + "0" * 64)
        page.wait_for("document.getElementById('error').textContent.includes('HTTP 403')")
        assert page.evaluate("document.getElementById('status').textContent") == "error"
    finally:
        node.stop()

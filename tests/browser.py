"""A small headless-Chromium driver for the tests (DevTools protocol over a WebSocket).

Debian's ``chromium`` is started as a real process with a fresh profile; pages are opened and
inspected through CDP (``Runtime.evaluate``, ``Page.captureScreenshot``). Tests that need it use
the ``chromium`` fixture from conftest, which skips with a reason when Chromium is missing.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import trio
import trio_websocket

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,900",
]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """One browser tab, driven synchronously (each call runs a short trio program)."""

    def __init__(self, ws_url: str) -> None:
        self.ws_url = ws_url
        self._ids = itertools.count(1)

    async def _call(self, ws, method: str, params: dict | None = None) -> dict:
        msg_id = next(self._ids)
        await ws.send_message(json.dumps({"id": msg_id, "method": method, "params": params or {}}))
        while True:
            reply = json.loads(await ws.get_message())
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"CDP {method}: {reply['error']}")
                return reply["result"]

    def call(self, method: str, params: dict | None = None, timeout: float = 20) -> dict:
        async def run():
            with trio.fail_after(timeout):
                async with trio_websocket.open_websocket_url(self.ws_url, max_message_size=64 << 20) as ws:
                    return await self._call(ws, method, params)

        return trio.run(run)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"page error: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 15) -> Any:
        """Poll a JS expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {expression!r} in the page")
            time.sleep(0.1)

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete'")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


class Browser:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def new_page(self, url: str = "about:blank") -> Page:
        r = httpx.put(f"{self.base}/json/new?about:blank", timeout=10)
        r.raise_for_status()
        page = Page(r.json()["webSocketDebuggerUrl"])
        if url != "about:blank":  # navigate (not /json/new?url, which drops a #fragment)
            page.navigate(url)
        return page


@contextmanager
def launch_chromium():
    """Start headless Chromium; yields a :class:`Browser`; kills it afterwards."""
    exe = chromium_path()
    assert exe, "chromium is not installed"
    profile = tempfile.mkdtemp(prefix="kachery-chromium-")
    proc = subprocess.Popen(
        [exe, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not start")
            time.sleep(0.05)
        yield Browser(int(port_file.read_text().split()[0]))
    finally:
        proc.kill()
        proc.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)

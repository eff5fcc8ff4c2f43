"""The async API (issue 14): ``await kn.aload_*`` and ``await kn.arequest_task`` /
``handle.await_result()`` under asyncio and under trio, never blocking the loop; the sync calls
still work inside a running asyncio loop. Real hub and nodes as processes; the reader is this
test process (a notebook's kernel)."""

from __future__ import annotations

import asyncio
import os
import secrets
import time

import anyio
import numpy as np
import pytest

import kachery_node as kn
from tests.network.conftest import ALL_ROLES
from tests.network.test_daemonless_reads import _upload
from tests.network.test_tasks import Backend

BACKENDS = ["asyncio", "trio"]


class Ticker:
    """Counts how often the event loop let it run (every 5 ms) while something was awaited."""

    def __init__(self) -> None:
        self.ticks = 0

    async def run(self) -> None:
        while True:
            await anyio.sleep(0.005)
            self.ticks += 1


async def _while_ticking(awaitable):
    ticker = Ticker()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker.run)
        result = await awaitable
        tg.cancel_scope.cancel()
    return result, ticker.ticks


@pytest.mark.parametrize("backend", BACKENDS)
def test_aload_functions_read_without_blocking_the_loop(lab, tmp_path, monkeypatch, backend):
    alice = lab.add_node("alice", ALL_ROLES)
    reader = lab.add_node("reader", ["request-files"], start=False)  # no daemon: from the bucket
    monkeypatch.setenv("KACHERY_STORAGE_DIR", str(reader.storage_dir))
    content = os.urandom(45_000_000)
    (tmp_path / "big.dat").write_bytes(content)
    big, text, js, npy, pkl = _upload(alice, f"""
import numpy as np
print(kn.upload_file({str(tmp_path / 'big.dat')!r}, channel='lab'))
print(kn.upload_text('hi', channel='lab'))
print(kn.upload_json([1, 2], channel='lab'))
print(kn.upload_npy(np.arange(4), channel='lab'))
print(kn.upload_pkl({{'k': 1}}, channel='lab'))
""")
    alice.stop()

    async def main():
        data, ticks = await _while_ticking(kn.aload_bytes(big, 30_000_000, 30_000_100))
        assert data == content[30_000_000:30_000_100]
        path, ticks = await _while_ticking(kn.aload_file(big, channel="lab"))
        with open(path, "rb") as f:
            assert f.read() == content
        assert ticks >= 3, ticks  # the loop ran while 25 MB more came and 45 MB were verified
        assert await kn.aload_text(text) == "hi"
        assert await kn.aload_json(js) == [1, 2]
        assert (await kn.aload_npy(npy) == np.arange(4)).all()
        assert await kn.aload_pkl(pkl) == {"k": 1}
        with pytest.raises(kn.NotFoundError, match="no daemon is running"):
            await kn.aload_text("sha1://" + "ab" * 20)

    anyio.run(main, backend=backend)


def test_sync_calls_work_inside_a_running_asyncio_loop(lab, monkeypatch):
    alice = lab.add_node("alice", ALL_ROLES)
    reader = lab.add_node("reader", ["request-files"], start=False)
    monkeypatch.setenv("KACHERY_STORAGE_DIR", str(reader.storage_dir))
    (uri,) = _upload(alice, "print(kn.upload_json({'a': 1}, channel='lab'))")

    async def main():
        return kn.load_json(uri)  # blocks the loop while it runs, but works

    assert asyncio.run(main()) == {"a": 1}


@pytest.mark.parametrize("backend", BACKENDS)
def test_arequest_task_and_await_result(lab, tmp_path, monkeypatch, backend):
    alice = lab.add_node("alice", ALL_ROLES)
    Backend(alice, tmp_path / "runs")
    requester = lab.add_node("requester", ["request-tasks"])
    monkeypatch.setenv("KACHERY_STORAGE_DIR", str(requester.storage_dir))
    tag = secrets.token_hex(4)

    async def main():
        handle = await kn.arequest_task("test.slow.1", {"seconds": 1.0, "tag": tag}, timeout=30)
        assert isinstance(handle, kn.TaskHandle)
        with anyio.move_on_after(0.05) as scope:  # cancelling the wait returns at once
            await handle.await_result()
        assert scope.cancelled_caught and not handle.done
        started = time.monotonic()
        result, ticks = await _while_ticking(handle.await_result(timeout=30))
        assert result == {"slept": 1.0, "tag": tag}
        assert ticks >= 0.5 / 0.005 * 0.2, (ticks, time.monotonic() - started)  # the loop kept running
        with pytest.raises(kn.TaskArgumentError):
            await kn.arequest_task("test.slow.1", {"seconds": 1.0, "tag": tag}, timeout=-1)

    anyio.run(main, backend=backend)

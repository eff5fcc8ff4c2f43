"""transport/bucket/http_transfer.py: a direct transfer's worker thread reports its progress to
the event loop sparingly (the first report, then at most one each interval, and the last)."""

from __future__ import annotations

import time

import anyio.to_thread
import pytest

from kachery_node.transport.bucket import http_transfer


@pytest.mark.trio
async def test_progress_from_a_worker_thread_is_thinned_but_keeps_its_first_and_last():
    seen: list[tuple[int, int]] = []
    report = http_transfer._progress_from_thread(lambda done, total: seen.append((done, total)))
    total = 1000

    def transfer() -> None:  # a thousand reports within a few milliseconds
        for done in range(1, total + 1):
            report(done, total)

    started = time.monotonic()
    await anyio.to_thread.run_sync(transfer)
    elapsed = time.monotonic() - started
    assert seen[0] == (1, total) and seen[-1] == (total, total)
    assert len(seen) <= 2 + elapsed / http_transfer.PROGRESS_INTERVAL_S + 1
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


@pytest.mark.trio
async def test_a_slow_transfer_reports_each_interval():
    seen: list[int] = []
    report = http_transfer._progress_from_thread(lambda done, total: seen.append(done))

    def transfer() -> None:
        for done in range(1, 6):
            report(done, 10)
            time.sleep(http_transfer.PROGRESS_INTERVAL_S * 1.2)  # a transfer slower than the interval

    await anyio.to_thread.run_sync(transfer)
    assert seen == [1, 2, 3, 4, 5]

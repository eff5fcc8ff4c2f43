"""Several real processes on one store: concurrent appends, killed writers, live following."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

import kachery_feeds as kf

PROCS = str(Path(__file__).with_name("feed_procs.py"))


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, PROCS, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _verify_by_replay(tmp_path: Path, sf: kf.Subfeed) -> None:
    """The whole chain verifies when imported into a fresh store."""
    fresh = kf.open_store(tmp_path / f"verify-{time.monotonic_ns()}.db").load_subfeed(sf.uri)
    assert fresh.add_signed_messages(sf.get_signed_messages()) == sf.get_num_local_messages()


def test_concurrent_appenders_never_fork(tmp_path):
    db = tmp_path / "feeds.db"
    sf = kf.open_store(db).create_feed().load_subfeed("shared")
    procs = [_spawn("appender", str(db), sf.uri, f"w{k}", "300", str(b)) for k, b in enumerate([1, 1, 7, 50])]
    returned: set[int] = set()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        numbers = [int(x) for x in out.split()]
        assert numbers == sorted(numbers)
        returned.update(numbers)
    assert sf.get_num_local_messages() == 1200
    msgs = sf.get_messages()
    for k in range(4):  # each writer's messages are all there, in its own order
        assert [m["i"] for m in msgs if m["writer"] == f"w{k}"] == list(range(300))
    _verify_by_replay(tmp_path, sf)


def test_killed_writer_loses_nothing_that_returned_and_leaves_no_partial_batch(tmp_path):
    db = tmp_path / "feeds.db"
    sf = kf.open_store(db).create_feed().load_subfeed("log")
    for kill_after in (0.15, 0.3, 0.45):
        before = sf.get_num_local_messages()
        p = _spawn("appender", str(db), sf.uri, "w", "1000000", "100")
        first = p.stdout.readline()  # the writer is up and committing (start-up time varies)
        time.sleep(kill_after)
        os.kill(p.pid, signal.SIGKILL)
        out, _ = p.communicate(timeout=30)
        confirmed = [int(x) for x in (first + out).split()]
        reopened = kf.open_store(db).load_subfeed(sf.uri)
        count = reopened.get_num_local_messages()
        assert confirmed, "the writer should have committed something before being killed"
        assert count >= confirmed[-1] + 1  # every append that returned is there
        assert (count - before) % 100 == 0  # whole batches only
        _verify_by_replay(tmp_path, reopened)
    # The store is still usable for appends afterwards.
    assert sf.append_message({"after": "kills"}) == sf.get_num_local_messages() - 1


def test_follow_from_another_process_wakes_within_milliseconds(tmp_path):
    db = tmp_path / "feeds.db"
    sf = kf.open_store(db).create_feed().load_subfeed("live")
    follower = _spawn("follower", str(db), sf.uri, "200")
    assert follower.stdout.readline().strip() == "ready"
    time.sleep(0.2)  # let it reach its wait
    for i in range(200):
        sf.append_message({"i": i, "sent_ns": time.time_ns()})
        time.sleep(0.002)
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    rows = [orjson.loads(line) for line in out.splitlines()]
    assert [r["i"] for r in rows] == list(range(200))
    latencies = sorted(r["latency_ms"] for r in rows)
    p50 = latencies[len(latencies) // 2]
    # Generous bound for a noisy shared machine; bench/ measures the real figure.
    assert p50 < 50, f"median follow latency {p50:.1f} ms: is the follower polling?"


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_afollow_under_trio_and_asyncio(tmp_path, backend):
    import anyio

    db = tmp_path / "feeds.db"
    sf = kf.open_store(db).create_feed().load_subfeed("live")
    sf.append_message({"i": 0, "sent_ns": time.time_ns()})
    writer = _spawn("appender", str(db), sf.uri, "w", "5", "1")

    async def main():
        got = []
        with anyio.fail_after(20):
            async for msg in kf.open_store(db).load_subfeed(sf.uri).afollow(start=0):
                got.append(msg)
                if len(got) == 6:
                    break
        return got

    got = anyio.run(main, backend=backend)
    writer.communicate(timeout=30)
    assert got[0]["i"] == 0 and [m["i"] for m in got[1:]] == list(range(5))


def test_afollow_idle_timeout_ends_iteration(tmp_path):
    import anyio

    sf = kf.open_store(tmp_path / "f.db").create_feed().load_subfeed("x")
    sf.append_messages([1, 2])

    async def main():
        return [m async for m in sf.afollow(start=0, timeout=0.1)]

    t0 = time.monotonic()
    assert anyio.run(main, backend="trio") == [1, 2]
    assert time.monotonic() - t0 < 5

"""The event-loop stall monitor (kachery_node/loop_stalls.py): what it records, and that it is
off unless asked for. Steps are told apart by thread CPU time, never by wall-clock timing."""

from __future__ import annotations

import json
import time

import pytest
import trio

from kachery_node import loop_stalls
from kachery_node.loop_stalls import LoopStallMonitor, install_from_environment


def _spin_cpu(ms: float) -> None:
    """Use ``ms`` of this thread's CPU time (whatever the machine's load)."""
    end = time.thread_time_ns() + int(ms * 1e6)
    while time.thread_time_ns() < end:
        pass


async def _hog() -> None:
    await trio.lowlevel.checkpoint()
    _spin_cpu(30)  # one step holding the loop
    await trio.lowlevel.checkpoint()


async def _polite() -> None:
    for _ in range(20):
        _spin_cpu(0.05)
        await trio.lowlevel.checkpoint()


def test_a_long_step_is_recorded_with_its_task_and_place_and_short_ones_are_not():
    monitor = LoopStallMonitor(threshold_ms=20, process="test")

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_hog)
            nursery.start_soon(_polite)

    trio.run(main, instruments=[monitor])
    cpu_stalls = [r for r in monitor.records if r["cpu_ms"] >= 20]
    assert len(cpu_stalls) == 1
    (r,) = cpu_stalls
    assert r["task"].endswith("_hog") and r["process"] == "test"
    assert r["cpu_ms"] <= r["wall_ms"] + 0.5  # thread CPU cannot exceed wall time (rounding aside)
    # it resumed after the first checkpoint and suspended at the second, both in _hog
    assert "_hog" in r["from"][0] and "_hog" in r["to"][0]
    assert all(not rec["task"].endswith("_polite") or rec["cpu_ms"] < 20 for rec in monitor.records)


def test_records_go_to_the_file_as_json_lines(tmp_path, monkeypatch):
    path = tmp_path / "stalls.jsonl"
    monkeypatch.setenv("KACHERY_LOOP_STALLS", "20")
    monkeypatch.setenv("KACHERY_LOOP_STALLS_FILE", str(path))

    async def main():
        monitor = install_from_environment("daemon X")
        assert monitor is not None
        await _hog()

    trio.run(main)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["process"] for r in records if r["cpu_ms"] >= 20] == ["daemon X"]


def test_off_by_default_and_a_bad_threshold_is_refused(monkeypatch):
    monkeypatch.delenv("KACHERY_LOOP_STALLS", raising=False)

    async def main():
        assert install_from_environment("hub") is None  # nothing installed: no cost

    trio.run(main)
    for bad in ("x", "0", "-1", "nan"):
        monkeypatch.setenv("KACHERY_LOOP_STALLS", bad)
        with pytest.raises(ValueError, match="KACHERY_LOOP_STALLS"):
            loop_stalls.threshold_from_environment()


def test_the_sampler_says_where_a_long_step_spent_its_time():
    monitor = LoopStallMonitor(threshold_ms=5, process="test", sample_ms=1)

    async def main():
        await trio.lowlevel.checkpoint()
        _spin_cpu(60)
        await trio.lowlevel.checkpoint()

    trio.run(main, instruments=[monitor])
    (r,) = [r for r in monitor.records if r["cpu_ms"] >= 5]
    assert r["samples"] and any("_spin_cpu" in s["stack"][-1] for s in r["samples"])

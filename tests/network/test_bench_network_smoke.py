"""The network benchmark (bench/network/run.py) runs end to end in quick mode.

It starts a real hub and real node daemons; this only checks that every stage completes and the
JSON holds a figure per metric, never the figures themselves (a benchmark does not fail on a
missed target, and quick sizes are not comparable). Two rounds and a few hop samples: the least
that still runs every stage and the per-round code (a later round's fresh nodes, the spreads).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.bench_process import run_bench

REPO = Path(__file__).resolve().parents[2]
ROUNDS = 2


@pytest.mark.slow
def test_network_bench_quick_runs(tmp_path):
    out = tmp_path / "out.json"
    try:
        proc = run_bench(
            [sys.executable, str(REPO / "bench" / "network" / "run.py"), "--quick", "--no-hypercore",
             "--rounds", str(ROUNDS), "--hop-samples", "50", "--json", str(out), "--tmp", str(tmp_path)],
            timeout=240, cwd=REPO)  # fmt: skip
    finally:
        left_behind = list(tmp_path.glob("kachery-netbench-*"))
        for left in left_behind:  # its daemons stop on their own when their storage goes
            shutil.rmtree(left, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "live latency p50" in proc.stdout
    result = json.loads(out.read_text())
    k = result["kachery"]
    assert k["latency"]["received"] == k["latency"]["messages"]
    assert k["latency"]["p50_ms"] > 0
    # every round (min / median / max printed), with the relay and NATS hops of the same run
    assert len(k["latency"]["rounds"]) == ROUNDS and len(k["latency"]["spread"]["p50_ms"]) == 3
    assert k["latency"]["hop"]["relay_p50_us"] > 0
    assert "hub relay" in proc.stdout
    assert k["catchup"]["msgs_per_s"] > 0
    # the catch-up runs every round too: min / median / max of its rate and first message
    assert len(k["catchup"]["rounds"]) == ROUNDS and len(k["catchup"]["spread"]["msgs_per_s"]) == 3
    assert k["catchup"]["spread"]["first_message_s"][0] > 0
    assert f"catch-up: min / median / max over {ROUNDS} rounds" in proc.stdout
    assert k["file"]["mb_per_s"] > 0
    # and the file: every round with the disk's limit measured just before it
    assert len(k["file"]["rounds"]) == ROUNDS and len(k["file"]["spread"]["mb_per_s"]) == 3
    assert all(r["disk_write_mb_per_s"] > 0 for r in k["file"]["rounds"])
    assert f"file: min / median / max over {ROUNDS} rounds" in proc.stdout
    assert k["memory"]["peak_rss_mb"] > 0 and k["memory"]["serving_peak_rss_mb"] > 0
    assert len(result["rows"]) == 7  # the serving daemon's RSS and the first message have rows
    # everything it made under --tmp is gone (its temporary folder is removed)
    assert not left_behind

"""The network benchmark (bench/network/run.py) runs end to end in quick mode.

It starts a real hub and real node daemons; this only checks that every stage completes and the
JSON holds a figure per metric, never the figures themselves (a benchmark does not fail on a
missed target, and quick sizes are not comparable).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_network_bench_quick_runs(tmp_path):
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "network" / "run.py"), "--quick", "--no-hypercore",
         "--json", str(out), "--tmp", str(tmp_path)],
        capture_output=True, text=True, timeout=90, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "live latency p50" in proc.stdout
    result = json.loads(out.read_text())
    k = result["kachery"]
    assert k["latency"]["received"] == k["latency"]["messages"]
    assert k["latency"]["p50_ms"] > 0
    assert k["catchup"]["msgs_per_s"] > 0
    assert k["file"]["mb_per_s"] > 0
    assert k["memory"]["peak_rss_mb"] > 0
    assert len(result["rows"]) == 5
    # everything it made under --tmp is gone (its temporary folder is removed)
    assert not list(tmp_path.glob("kachery-netbench-*"))

"""Smoke test of the feed benchmarks (bench/feeds/run.py): small sizes, no Node.js needed.

Not a performance test: it only checks that the benchmark runs end to end and prints its tables.
Two rounds: the least that still prints min / median / max over rounds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

RUN = Path(__file__).resolve().parents[2] / "bench" / "feeds" / "run.py"
ROUNDS = 2


def test_bench_quick_prints_table(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--no-hypercore", "--rounds", str(ROUNDS),
         "--json", str(out_json), "--tmp", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "| metric" in out and "| kachery" in out and "| met (median / every round)" in out, out
    for metric in (
        "durable single append",
        "batch append, 1000/call",
        "verified import, batch-signed",
        "verified import, each signed",
        "follow latency p50 / p99",
        "peak RSS",
        "Ed25519 verify",
        "sqlite3 one commit per row",
    ):
        assert metric in out, f"{metric!r} missing from:\n{out}"
    result = json.loads(out_json.read_text())
    assert result["quick"] is True and result["hypercore"] is None
    assert len(result["rounds"]) == ROUNDS
    rows = {r["metric"]: r for r in result["rows"]}
    single = rows["durable single append"]
    assert len(single["kachery"]) == len(single["limit"]) == len(single["ratio_to_limit"]) == ROUNDS
    assert single["ratio_to_limit"][0] == single["kachery"][0] / single["limit"][0]
    x = result["extra"]
    assert x["follow_received"] == x["follow_messages"]
    assert x["follow_mem"]["count"] == result["config"]["follow_mem"]
    assert elapsed < 60, f"quick bench took {elapsed:.0f} s (should be well under 30 s)"


def test_ab_import_compares_trees_and_prints_its_table(tmp_path: Path) -> None:
    """bench/feeds/ab_import.py with this checkout as both trees: one round of imports large
    enough for the import helper."""
    repo = RUN.parents[2]
    proc = subprocess.run(
        [sys.executable, str(RUN.parent / "ab_import.py"), str(repo), str(repo),
         "--rounds", "1", "--messages", "6000"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.endswith("x |") and f": {repo} |" in line]
    assert [row[:4] for row in rows] == ["| 1:", "| 2:"], proc.stdout
    assert all(" ms | " in row for row in rows), proc.stdout

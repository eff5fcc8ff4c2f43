"""The scale benchmarks of issue 15 item 5 (bench/network/bench_fanout.py and
bench_file_requests.py) run end to end with tiny sizes.

They start a real hub, the owner's daemon and worker processes of lightweight nodes; this checks
that every stage completes, every message reached every subscriber, every fetch succeeded and
each object went to the bucket once, never the timings (a benchmark does not fail on a missed
target, and tiny sizes are not comparable).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_bench(script: str, args: list[str], tmp_path: Path, timeout: float = 240) -> dict:
    out = tmp_path / f"{script}.json"
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "network" / script), *args,
                             "--json", str(out), "--tmp", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # its cleanup stops the hub and daemons it started
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(f"{script} took over {timeout:g} s\n{stdout[-3000:]}{stderr[-3000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stdout[-3000:] + stderr[-5000:]
    assert "growth ~ N^k" in stdout, stdout[-3000:] + stderr[-5000:]
    assert not list(tmp_path.glob("kachery-*/")), "its temporary folder is removed"
    return json.loads(out.read_text())


@pytest.mark.slow
def test_fanout_bench_tiny_runs(tmp_path):
    result = run_bench("bench_fanout.py", ["--sizes", "2,3", "--backends", "embedded", "--rounds", "1",
                                           "--messages", "5", "--interval", "0.05", "--procs", "1"],
                       tmp_path)
    sizes = result["results"]["embedded"]
    assert [r["n"] for r in sizes] == [2, 3]
    for r in sizes:
        [row] = r["rounds"]
        assert row["deliveries missing"] == 0
        assert row["wire msgs out/msg"] >= r["n"]  # each append reached every subscriber


@pytest.mark.slow
def test_file_requests_bench_tiny_runs(tmp_path):
    result = run_bench("bench_file_requests.py", ["--sizes", "2,3", "--rounds", "1", "--small", "3",
                                                  "--small-mb", "0.1", "--big-mb", "21", "--procs", "1"],
                       tmp_path)
    assert [r["n"] for r in result["results"]] == [2, 3]
    for r in result["results"]:
        [row] = r["rounds"]
        assert row["fetches failed"] == 0
        assert row["bucket uploads"] == row["distinct objects uploaded"] > 0

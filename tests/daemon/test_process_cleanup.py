"""No process a test starts outlives it (issue 11: a failed run left 17 hubs and daemons): a
pytest session of tests that fail or forget their processes (tests/daemon/leaky_cases.py) leaves
nothing running."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).parents[2]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_failed_and_careless_tests_leave_no_process_running(tmp_path):
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         "--basetemp", str(tmp_path / "inner"), "tests/daemon/leaky_cases.py"],
        cwd=ROOT, env={**os.environ, "LEAKY_PIDS_DIR": str(pids_dir)},
        capture_output=True, text=True, timeout=180)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr
    assert "1 failed, 2 passed" in summary, result.stdout + result.stderr
    # The failing test's hub and daemon were stopped when it ended: the next test saw them gone.
    assert (pids_dir / "checked.pids").read_text() == ""
    started = [int(p) for name in ("fails", "unowned")
               for p in (pids_dir / f"{name}.pids").read_text().split()]
    assert len(started) == 4
    # Unowned ones (a CLI-started daemon, a child process) were killed at the session's end.
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in started):
        assert time.monotonic() < deadline, [p for p in started if _alive(p)]
        time.sleep(0.05)

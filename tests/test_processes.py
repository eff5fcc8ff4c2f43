"""tests/processes.py: a test run killed before its session end leaves daemons behind; the next
run stops them, and leaves the processes of runs still going alone."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil

from tests import processes


def _lingering(path) -> subprocess.Popen:
    """A process whose command line names ``path``, as a daemon's ``--storage-dir`` does."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", str(path)],
                            start_new_session=True)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


def test_processes_of_a_killed_run_are_stopped_and_those_of_a_live_run_are_not(tmp_path):
    killed, live = tmp_path / "pytest-7", tmp_path / "pytest-8"
    for folder, pid in ((killed, _dead_pid()), (live, os.getpid())):
        (folder / "popen-gw0").mkdir(parents=True)
        (folder / ".lock").write_text(str(pid))
    orphan, running = _lingering(killed / "popen-gw0" / "storage"), _lingering(live / "popen-gw0" / "storage")
    try:
        assert processes.numbered_root(killed / "popen-gw0") == tmp_path
        assert processes.end_orphans_of_dead_sessions(tmp_path) == [orphan.pid]
        assert orphan.wait(timeout=15) is not None
        assert psutil.Process(running.pid).is_running() and running.poll() is None
    finally:
        for proc in (orphan, running):
            proc.kill()
            proc.wait(timeout=15)

"""Running a benchmark script from a test: a benchmark that runs over its time is interrupted
with SIGINT, not killed, so that its own cleanup stops the hub and daemons it started (a kill
left them running until the session's end, loading the machine for every later test)."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest


def run_bench(argv: list[str], *, timeout: float, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to its end, its output captured; fail the test (with the output's end) if it
    takes over ``timeout`` seconds."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(f"{Path(argv[1]).name} took over {timeout:.0f} s\n" + stdout[-3000:] + stderr[-3000:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)

"""`kachery demo`, the README's main job, works end to end and cleans up after itself."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

KACHERY = str(Path(sys.executable).parent / "kachery")


def test_demo_runs_and_cleans_up(tmp_path):
    proc = subprocess.Popen([KACHERY, "demo", "--messages", "20", "--file-mb", "25"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = list(proc.stdout)  # as they come: the demo says what it starts before each step
        stderr = proc.stderr.read()
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    assert proc.returncode == 0, out + stderr
    # It was silent for its first 15-18 s (hub, nodes, channel, daemons): each slow step is announced.
    steps = ["starting a hub", "making two nodes", "alice creates channel", "starting both nodes' daemons",
             "both daemons connected"]
    positions = [next(i for i, line in enumerate(lines) if step in line) for step in steps]
    assert positions == sorted(positions), out
    assert "both daemons connected" in out
    assert "bob got reading #19" in out
    assert "20 signed messages, each verified by bob" in out
    assert "hash verified" in out and "Done in" in out
    median = float(re.search(r"median ([\d.]+) ms", out).group(1))
    assert median < 500, out  # live, not a polling interval (bench/ measures the real figure)
    folder = Path(re.search(r"kachery demo in (\S+)", out).group(1))
    assert not folder.exists()


def test_demo_rejects_bad_arguments():
    result = subprocess.run([KACHERY, "demo", "--messages", "0"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "at least 1" in result.stderr

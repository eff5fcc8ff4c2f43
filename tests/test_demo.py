"""`kachery demo`, the README's main job, works end to end and cleans up after itself."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

KACHERY = str(Path(sys.executable).parent / "kachery")


def test_demo_runs_and_cleans_up(tmp_path):
    result = subprocess.run([KACHERY, "demo", "--messages", "20", "--file-mb", "25"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
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

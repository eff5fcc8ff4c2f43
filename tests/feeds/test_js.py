"""kachery.js (js/) runs its Node tests from the normal test command: every vector in spec/vectors
(valid and invalid) and the cross-check against live output of this Python implementation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

JS = Path(__file__).parents[2] / "js"


@pytest.mark.skipif(shutil.which("node") is None,
                    reason="node (>= 20) is not installed: kachery.js cannot run")
def test_node_test_suite_of_kachery_js_passes():
    env = {**os.environ, "KACHERY_PYTHON": sys.executable}
    out = subprocess.run(["node", "--test", "test/"], cwd=JS, env=env, capture_output=True, text=True,
                         timeout=300)
    tail = "\n".join((out.stdout + out.stderr).splitlines()[-60:])
    assert out.returncode == 0, tail
    assert "# fail 0" in out.stdout and "# pass 0" not in out.stdout, tail

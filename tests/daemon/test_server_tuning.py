"""The daemon and the hub hand the GIL over every half millisecond and keep what start-up built
out of later full collections (kachery_node/server_tuning.py)."""

from __future__ import annotations

import json
import subprocess
import sys

CHECK = """
import gc, json, sys
import kachery_node.daemon.process  # what the daemon has imported when it is up
before = (sys.getswitchinterval(), gc.get_freeze_count())
from kachery_node.server_tuning import tune_for_serving
tune_for_serving()
print(json.dumps({"before": before, "after": [sys.getswitchinterval(), gc.get_freeze_count()],
                  "gen2": len(gc.get_objects(generation=2))}))
"""


def test_tune_for_serving_shortens_gil_handoffs_and_freezes_start_up_objects():
    out = json.loads(subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                                    check=True, timeout=60).stdout)
    assert out["before"] == [0.005, 0]
    switch, frozen = out["after"]
    assert switch == 0.0005
    assert frozen > 20_000  # the imports' objects: no full collection walks them again
    assert out["gen2"] < 1000

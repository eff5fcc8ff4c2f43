"""The daemon and the hub hand the GIL over every half millisecond, keep what start-up built
out of later full collections, and give large freed buffers back to the system
(kachery_node/server_tuning.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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


BUFFERS = """
import json, os, resource, sys, tempfile, threading
import psutil
from kachery_node.server_tuning import release_large_buffers
applied = release_large_buffers() if sys.argv[1] == "tuned" else None
path = os.path.join(tempfile.mkdtemp(), "content")
with open(path, "wb") as f:
    f.write(os.urandom(20 << 20))

def upload_chunks():  # what a provider's upload slots do: read a 20 MB chunk, send it in pieces
    for _ in range(6):
        with open(path, "rb", buffering=0) as f:
            data = f.read()
        view = memoryview(data)
        pieces = [bytes(view[k:k + (1 << 20)]) for k in range(0, len(data), 1 << 20)]
        del view, data, pieces

rss = psutil.Process().memory_info().rss
threads = [threading.Thread(target=upload_chunks) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
grew_mb = (psutil.Process().memory_info().rss - rss) / 2**20
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
with open(path, "rb", buffering=0) as f:  # a streamed upload's 1 MiB pieces, one after the other
    for _ in range(10):
        f.seek(0)
        while f.read(1 << 20):
            pass
os.unlink(path)
print(json.dumps({"applied": applied, "grew_mb": grew_mb,
                  "faults_per_piece": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 200}))
"""


def _buffers(mode: str) -> dict:
    return json.loads(subprocess.run([sys.executable, "-c", BUFFERS, mode], capture_output=True,
                                     text=True, check=True, timeout=120).stdout)


def test_large_buffers_freed_in_worker_threads_go_back_to_the_system():
    """Before: glibc's mmap threshold rose to 20 MB with the first chunk freed, so the next ones
    came from the worker threads' heaps and stayed there after they were freed: a daemon that
    had served a few 1 GiB files kept ~190 MB of RSS (the serving-memory row went over 150 MB)."""
    untuned = _buffers("untuned")
    if untuned["grew_mb"] < 100:
        pytest.skip(f"this C library returns freed buffers anyway (grew {untuned['grew_mb']:.0f} MB)")
    tuned = _buffers("tuned")
    assert tuned["applied"] is True
    assert tuned["grew_mb"] < 30, tuned  # 8 threads held up to 40 MB each while they worked
    # ... and 1 MiB pieces freed one after the other reuse the heap's pages: a piece that
    # faulted its 256 pages in again each time cost a GiB's upload 0.3-0.5 CPU-s
    assert tuned["faults_per_piece"] < 20, tuned

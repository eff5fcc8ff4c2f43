"""CPU time of the store's hot paths in two source trees, alternating (A/B on a shared machine).

    .venv/bin/python bench/feeds/ab_cpu.py /path/to/tree-A /path/to/tree-B [--pairs 4]

A tree is any folder holding ``kachery_feeds/`` (a worktree, or ``git archive REV kachery_feeds
| tar -x -C DIR``). Each measurement runs in a fresh process of this python with that tree first
on ``sys.path``, A then B, ``--pairs`` times. Per run: CPU µs (``time.process_time``: user +
system, which waiting for a CPU or the disk does not inflate the way it does wall time) of a
durable single append (5000 ``append_message``), of a message in batch appends (50 x 1000
``append_messages``), and the verified import of 50k batch-signed messages over a raw insert of
the same rows (CPU rates, best of 3, as ``run.py`` measures them); and the wall µs of a single
append for reference. Prints each run and each side's medians. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def measure(tree: str) -> dict:
    """In this (fresh) process: import the tree's kachery_feeds and measure."""
    sys.path.insert(0, tree)
    import kachery_feeds as kf

    assert kf.__file__.startswith(tree), kf.__file__
    sys.path.insert(1, str(HERE))
    sys.path.insert(1, str(HERE.parent))
    import run  # this checkout's runner: its raw insert uses the store's settings when it has them
    from bench_common import payload

    tmp = Path(tempfile.mkdtemp(prefix="kachery-ab-"))
    out: dict = {}
    try:
        store = kf.open_store(tmp / "single.db")
        sf = store.create_feed().load_subfeed("x")
        data = [payload(i) for i in range(5000)]
        sf.append_message(payload(-1))
        run.settle()
        t0, c0 = time.perf_counter(), time.process_time()
        for p in data:
            sf.append_message(p)
        out["single_cpu_us"] = (time.process_time() - c0) / len(data) * 1e6
        out["single_wall_us"] = (time.perf_counter() - t0) / len(data) * 1e6
        store.close()
        store = kf.open_store(tmp / "batch.db")
        sf = store.create_feed().load_subfeed("x")
        batches = [[payload(b * 1000 + i) for i in range(1000)] for b in range(50)]
        sf.append_message(payload(-1))
        run.settle()
        c0 = time.process_time()
        for batch in batches:
            sf.append_messages(batch)
        out["batch_cpu_us"] = (time.process_time() - c0) / 50_000 * 1e6
        store.close()
        sources = run.build_import_sources(tmp, 50_000)
        ratios = []
        for attempt in range(3):
            m = run.measure_import(tmp, sources, "batched", f"ab{attempt}")
            ratios.append(m["import_cpu"] / m["raw_cpu"])
        out["import_cpu_ratio"] = max(ratios)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    out["load"] = os.getloadavg()[0]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--pairs", type=int, default=4)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"A": [], "B": []}
    for _ in range(args.pairs):
        for side, tree in (("A", args.a), ("B", args.b)):
            done = subprocess.run([sys.executable, __file__, "_measure", str(Path(tree).resolve())],
                                  capture_output=True, text=True, check=True, timeout=900)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            runs[side].append(result)
            print(side, {k: round(v, 3) for k, v in result.items()}, flush=True)
    for side in ("A", "B"):
        keys = runs[side][0].keys()
        print(f"{side} medians:", {k: round(statistics.median(r[k] for r in runs[side]), 3) for k in keys})


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_measure":
        print(json.dumps(measure(sys.argv[2])))
    else:
        main()

"""Wall time of a verified import in two or more source trees, alternating (A/B on a shared machine).

    .venv/bin/python bench/feeds/ab_import.py TREE [TREE ...] [--rounds 6] [--messages 100000]

A tree is any folder holding ``kachery_feeds/`` (a worktree: ``git worktree add DIR REV``); the
same tree twice is an A/A run, which shows what the machine's noise alone gives. The source is
built once (``run.py``'s: messages appended in batches of 1000, one signature each). Each round
runs every tree in turn, in a fresh process of this python with that tree first on
``sys.path``: one untimed import (which starts the import helper, as a process's first large
import does), then 3 timed imports into fresh stores, each right after ``run.py``'s raw insert of
the same rows (its limit). Prints each import's wall ms and ratio, then per tree the median wall,
the median ratio and the smallest. The import runs on two cores (the helper process), so its
wall time, not its CPU time, is what is compared (``ab_cpu.py`` compares CPU). A benchmark, not
a test.
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


def measure(tree: str, source: Path) -> list[tuple[float, float]]:
    """In this (fresh) process: import the tree's kachery_feeds, then (wall ms, ratio) of 3 imports."""
    sys.path.insert(0, tree)
    import kachery_feeds as kf

    assert kf.__file__.startswith(tree), kf.__file__
    sys.path.insert(1, str(HERE))
    sys.path.insert(1, str(HERE.parent))
    import run  # this checkout's runner: the raw insert and settle()

    data = json.loads((source / "source.json").read_text())
    lines = [bytes.fromhex(x) for x in data["lines"]]
    rows = run.rows_from_wire(lines)
    out = []
    for attempt in range(4):
        tag = f"{os.getpid()}-{attempt}"
        raw, _cpu = run.raw_insert_rate(source, data["schema"], rows, tag)
        store = kf.open_store(source / f"import-{tag}.sqlite")
        subfeed = store.load_subfeed(data["uri"])
        run.settle()
        t0 = time.perf_counter()
        subfeed.add_signed_messages(lines)
        secs = time.perf_counter() - t0
        store.close()
        for f in [*source.glob(f"import-{tag}.sqlite*"), *source.glob(f"raw-insert-{tag}.sqlite*")]:
            f.unlink()
        if attempt:  # the first starts the helper
            out.append((secs * 1e3, len(lines) / secs / raw))
    return out


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(measure(sys.argv[2], Path(sys.argv[3]))))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trees", nargs="+")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--messages", type=int, default=100_000)
    args = ap.parse_args()
    trees = [str(Path(t).resolve()) for t in args.trees]
    sys.path.insert(0, str(HERE))
    sys.path.insert(1, str(HERE.parent))
    import run

    # By position: the same tree given twice is an A/A run (what the machine's noise alone gives).
    results: list[list[tuple[float, float]]] = [[] for _ in trees]
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp)
        built = run.build_import_sources(source, args.messages)
        batched = built["batched"]
        (source / "source.json").write_text(json.dumps(
            {"uri": batched["uri"], "schema": built["schema"], "lines": [x.hex() for x in batched["lines"]]}))
        for r in range(args.rounds):
            for i, tree in enumerate(trees):
                got = subprocess.run([sys.executable, __file__, "--child", tree, str(source)],
                                     capture_output=True, text=True, check=True, timeout=600)
                runs = json.loads(got.stdout.strip().splitlines()[-1])
                results[i] += [tuple(x) for x in runs]
                print(f"round {r + 1} {i + 1}: {tree}: "
                      + "  ".join(f"{w:.0f} ms = {q:.2f}x" for w, q in runs), flush=True)
    print("\n| tree | median wall | median x the raw insert | min x |")
    print("|---|---|---|---|")
    for i, (tree, runs) in enumerate(zip(trees, results, strict=True)):
        print(f"| {i + 1}: {tree} | {statistics.median(w for w, _ in runs):.0f} ms | "
              f"{statistics.median(q for _, q in runs):.2f}x | {min(q for _, q in runs):.2f}x |")


if __name__ == "__main__":
    main()

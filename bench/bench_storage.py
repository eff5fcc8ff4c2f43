"""Benchmark of local storage (issue 3): store a 1 GiB file, read random 1 MB ranges.

Side by side in one run, on the same disk:

* ``kachery store FILE`` (the real command, a fresh process) against
  ``sha1sum FILE && cp FILE DEST`` (target: ratio of wall times ≤ 1.3);
* peak RSS of the ``kachery store`` process, from GNU time (target ≤ 100 MB: it must stream);
* ``load_bytes`` of random 1 MB ranges of the stored file (target ≥ 200 ranges/s).

Usage: .venv/bin/python bench/bench_storage.py [--size-mib 1024] [--repeat 3] [--dir DIR]
The file is created in a temporary directory under --dir (default bench/.cache, on the same
disk as the repository) and deleted afterwards. Each command starts after ``sync`` with the
source in the page cache, and the two commands alternate which goes first. Prints a table.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KACHERY = str(Path(sys.executable).parent / "kachery")
GNU_TIME = "/usr/bin/time"  # Debian package `time`


def run_measured(cmd: list[str] | str, env: dict, shell: bool = False) -> tuple[float, int]:
    """Wall time and peak RSS in bytes of a command, measured by GNU time (``%M``: the kernel's
    high-water mark of the command itself, not of the forking Python process)."""
    with tempfile.NamedTemporaryFile("r") as out:
        if shell:
            cmd = ["bash", "-c", cmd]
        os.sync()  # start each command with no dirty pages from the previous one
        t0 = time.perf_counter()
        proc = subprocess.run([GNU_TIME, "-f", "%M", "-o", out.name, *cmd], env=env,
                              stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{cmd} failed with status {proc.returncode}")
        return wall, int(out.read().split()[-1]) * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each command (best is kept)")
    ap.add_argument("--ranges", type=int, default=2000, help="random 1 MB ranges to read")
    ap.add_argument("--dir", default=str(REPO / "bench" / ".cache"))
    ap.add_argument("--kachery", default=KACHERY,
                    help="the kachery command to measure (shell words; default: this venv's)")
    args = ap.parse_args()

    Path(args.dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-storage-", dir=args.dir))
    try:
        src = work / "big.dat"
        size = args.size_mib * 1024 * 1024
        print(f"writing {size:,} random bytes to {src} ...", file=sys.stderr)
        with open(src, "wb") as f:
            block = os.urandom(16 * 1024 * 1024)
            for i in range(size // len(block)):
                # vary each block so chunks differ
                f.write(i.to_bytes(8, "little") + block[8:])
            f.write(os.urandom(size % len(block)))

        with open(src, "rb") as f:  # warm the page cache equally for both sides
            while f.read(16 * 1024 * 1024):
                pass
        env = dict(os.environ)
        kachery_times, baseline_times, peaks = [], [], []
        for i in range(args.repeat):
            storage = work / f"storage{i}"
            env["KACHERY_STORAGE_DIR"] = str(storage)
            env["KACHERY_USER_DIR"] = str(work / "user")
            dest = work / f"copy{i}"
            # Alternate the order so page-cache effects do not favour one side.
            if i % 2 == 0:
                wall_k, peak = run_measured([*shlex.split(args.kachery), "store", str(src)], env)
                wall_b, _ = run_measured(f"sha1sum '{src}' && cp '{src}' '{dest}'", env, shell=True)
            else:
                wall_b, _ = run_measured(f"sha1sum '{src}' && cp '{src}' '{dest}'", env, shell=True)
                wall_k, peak = run_measured([*shlex.split(args.kachery), "store", str(src)], env)
            kachery_times.append(wall_k)
            baseline_times.append(wall_b)
            peaks.append(peak)
            dest.unlink()
            if i < args.repeat - 1:
                shutil.rmtree(storage)

        # Random 1 MB ranges through the Python API, on the last storage.
        sys.path.insert(0, str(REPO))
        import kachery_node as kn

        storage = kn.open_storage(work / f"storage{args.repeat - 1}")
        uri = storage.store_file(src)  # cached path hash: instant
        rng = random.Random(1)
        mb = 1_000_000
        t0 = time.perf_counter()
        for _ in range(args.ranges):
            start = rng.randrange(0, size - mb)
            data = storage.load_bytes(uri, start, start + mb)
            assert len(data) == mb
        ranges_per_s = args.ranges / (time.perf_counter() - t0)

        best_k, best_b = min(kachery_times), min(baseline_times)
        ratio = best_k / best_b
        median_ratio = statistics.median(k / b for k, b in zip(kachery_times, baseline_times,
                                                                 strict=True))
        rows = [
            ("file size", f"{size / 2**30:.2f} GiB", ""),
            (f"kachery store (best of {args.repeat})", f"{best_k:.2f} s",
             "runs: " + ", ".join(f"{t:.2f}" for t in kachery_times)),
            (f"sha1sum && cp (best of {args.repeat})", f"{best_b:.2f} s",
             "runs: " + ", ".join(f"{t:.2f}" for t in baseline_times)),
            ("ratio (best / best)", f"{ratio:.2f}x",
             "target <= 1.3x " + ("OK" if ratio <= 1.3 else "MISSED")),
            ("ratio (median of pairs)", f"{median_ratio:.2f}x", "same run, pairwise"),
            ("peak RSS of kachery store (max)", f"{max(peaks) / 1e6:.0f} MB",
             "target <= 100 MB " + ("OK" if max(peaks) <= 100e6 else "MISSED")
             + "; runs: " + ", ".join(f"{p / 1e6:.0f}" for p in peaks)),
            ("load_bytes random 1 MB", f"{ranges_per_s:.0f} ranges/s",
             "target >= 200/s " + ("OK" if ranges_per_s >= 200 else "MISSED")),
        ]
        width = max(len(r[0]) for r in rows)
        print(f"{'measure':{width}}  {'value':>16}  notes")
        for name, value, note in rows:
            print(f"{name:{width}}  {value:>16}  {note}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

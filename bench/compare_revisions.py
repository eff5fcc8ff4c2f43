"""The same benchmark figures from two trees, before and after, in one run, as ratios.

Run from the repository root (the "after" tree is this one, run by its ``.venv``)::

    .venv/bin/python bench/compare_revisions.py                       # before = 9d14575^, 3 rounds
    .venv/bin/python bench/compare_revisions.py --before main --json out.json
    .venv/bin/python bench/compare_revisions.py --only feeds,tasks --rounds 5

"Before" is checked out with ``git worktree add --detach`` into a temporary folder, which is
removed at the end (also on an error or Ctrl-C). Its venv (``python -m venv`` + ``pip install
-e``) is kept in ``bench/.cache/rev-<sha>/venv`` and reused by later runs; the editable install
points at the temporary tree, so the tree's path is fixed per revision
(``$TMPDIR/kachery-bench-rev-<sha12>``) and recreated there each run.

Each tree's own benchmark scripts run with that tree's own python, as subprocesses, so both
sides measure exactly what their code does with their own harness:

* feeds: ``bench/feeds/run.py``'s measuring functions (durable single appends, batch appends
  of 1000, verified import batch-signed and each signed), called with smaller sizes than its
  full run (``_feeds`` below imports that tree's script and calls them);
* network: ``bench/network/run.py --no-hypercore --only latency,catchup,file --file-size 256M
  --json``: live latency A -> B through the hub's relay (p50, p99), catch-up of 100k messages by
  a fresh node, a 256 MiB file A -> B;
* relay: ``bench/bench_relay.py --only pubsub``: the hub's relay fanning out to 50 subscribers
  (deliveries/s, publish -> receive p50 and p99) and nats-server carrying the same traffic in
  the same run (its p50: the peer, so that a change of load shows on both sides);
* tasks: ``bench/tasks/run.py --n 30 --seconds 5`` (``--json`` if the tree's script has it,
  else its printed lines are parsed): cache miss and hit round trips, 4 concurrent requesters.

Each round runs every benchmark once per tree, the two trees back to back (before first in
odd rounds, after first in even ones), so slow drifts in the machine's load hit both sides.
The report gives min / median / max of each side over the rounds and the ratio of medians,
after / before (for times, above 1 is slower; for rates, below 1 is slower), plus the load
average at the start and the end. A benchmark, not a test: it never fails on a figure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / ".cache"
DEFAULT_BEFORE = "9d14575^"  # the tree just before issue 12's relayout
BENCHES = ("feeds", "network", "tasks", "relay")
FEEDS_SIZES = {"single": 5000, "batches": 50, "import": 20_000, "repeat": 3}
TASKS_ARGS = ["--n", "30", "--seconds", "5"]
CHILD_TIMEOUT = 600.0  # seconds per benchmark run

# figure key -> (label, unit, higher is better)
FIGURES: dict[str, tuple[str, str, bool]] = {
    "feeds.single_appends_per_s": ("feeds: durable single appends", "msgs/s", True),
    "feeds.batch_messages_per_s": ("feeds: batch appends (1000/call)", "msgs/s", True),
    "feeds.import_batched_per_s": ("feeds: verified import, batch-signed", "msgs/s", True),
    "feeds.import_individual_per_s": ("feeds: verified import, each signed", "msgs/s", True),
    "network.latency_p50_ms": ("network: live latency A->B p50 (relay)", "ms", False),
    "network.latency_p99_ms": ("network: live latency A->B p99 (relay)", "ms", False),
    "network.catchup_msgs_per_s": ("network: catch-up 100k, fresh node", "msgs/s", True),
    "network.catchup_head_s": ("network: catch-up, A's bucket fill done after", "s", False),
    "network.catchup_first_s": ("network: catch-up, C's first message after", "s", False),
    "network.warm_catchup_msgs_per_s": ("network: catch-up 100k, bucket filled", "msgs/s", True),
    "network.file_mb_per_s": ("network: file A->B", "MB/s", True),
    "tasks.miss_median_ms": ("tasks: cache miss round trip, median", "ms", False),
    "tasks.hit_median_ms": ("tasks: cache hit round trip, median", "ms", False),
    "tasks.concurrent_per_s": ("tasks: 4 concurrent requesters", "req/s", True),
    "relay.deliveries_per_s": ("relay: fan-out to 50 subscribers", "msgs/s", True),
    "relay.p50_ms": ("relay: publish -> 50 subscribers, p50", "ms", False),
    "relay.p99_ms": ("relay: publish -> 50 subscribers, p99", "ms", False),
    "relay.nats_p50_ms": ("relay: the same through nats-server, p50", "ms", False),
}
NOISE = 0.10  # a median more than 10% worse is called out


def log(msg: str) -> None:
    print(f"[compare] {msg}", file=sys.stderr, flush=True)


def git(*args: str, check: bool = True) -> str:
    r = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout.strip()


def child_env() -> dict[str, str]:
    """The environment of a benchmark run: ours without anything that would point a tree's
    python at the other tree's code or at a running kachery."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("KACHERY_")}


# ---------------------------------------------------------------------------- the "before" tree
class RevisionTree:
    """A detached worktree of ``sha`` in a temporary folder and a cached venv for it.

    Use as a context manager: the worktree is removed on exit whatever happened."""

    def __init__(self, sha: str) -> None:
        self.sha = sha
        self.cache = CACHE / f"rev-{sha}"
        self.venv = self.cache / "venv"
        self.python = self.venv / "bin" / "python"
        self.tree = Path(tempfile.gettempdir()) / f"kachery-bench-rev-{sha[:12]}"
        self._added = False

    def __enter__(self) -> RevisionTree:
        if self.tree.exists():  # left over by a run that was killed outright
            log(f"removing a leftover worktree at {self.tree}")
            git("worktree", "remove", "--force", str(self.tree), check=False)
            shutil.rmtree(self.tree, ignore_errors=True)
            git("worktree", "prune", check=False)
        log(f"git worktree add --detach {self.tree} {self.sha[:12]}")
        git("worktree", "add", "--detach", str(self.tree), self.sha)
        self._added = True
        self._ensure_venv()
        return self

    def _ensure_venv(self) -> None:
        # The marker is written last: a venv whose install was interrupted is rebuilt.
        marker = self.cache / "installed-for"
        if self.python.exists() and marker.exists() and marker.read_text() == str(self.tree):
            log(f"reusing the venv in {self.venv}")
            return
        log(f"creating a venv in {self.venv} (pip install -e of {self.sha[:12]}; a minute or two)")
        shutil.rmtree(self.venv, ignore_errors=True)
        self.cache.mkdir(parents=True, exist_ok=True)
        marker.unlink(missing_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(self.venv)], check=True, timeout=300)
        # psutil: bench/network/run.py samples CPU and memory with it (a test extra, not a
        # dependency of the package); nats-py: bench/bench_relay.py's NATS side (the bench extra).
        for args in (["-e", str(self.tree)], ["psutil", "nats-py>=2.6"]):
            r = subprocess.run(
                [str(self.python), "-m", "pip", "install", "-q", *args],
                capture_output=True, text=True, timeout=900,
            )  # fmt: skip
            if r.returncode != 0:
                raise RuntimeError(f"pip install {' '.join(args)} failed:\n{r.stderr[-3000:]}")
        marker.write_text(str(self.tree))

    def __exit__(self, *exc: object) -> None:
        if self._added:
            log(f"removing the worktree {self.tree}")
            git("worktree", "remove", "--force", str(self.tree), check=False)
        shutil.rmtree(self.tree, ignore_errors=True)
        git("worktree", "prune", check=False)


# ---------------------------------------------------------------------------- running a benchmark
def run_child(cmd: list[str], cwd: Path, out_dir: Path, timeout: float) -> tuple[int, str, str]:
    """Run one benchmark in its own session; on Ctrl-C, an error or the timeout, SIGINT it
    (its ``finally`` stops its hub and daemons), then SIGKILL its group if it lingers."""
    stdout_path, stderr_path = out_dir / "stdout.txt", out_dir / "stderr.txt"
    with open(stdout_path, "w") as so, open(stderr_path, "w") as se:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=child_env(), stdin=subprocess.DEVNULL, stdout=so, stderr=se,
            start_new_session=True,
        )  # fmt: skip
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_child(proc)
            return -1, stdout_path.read_text(), stderr_path.read_text() + f"\n(timed out after {timeout} s)"
        except BaseException:
            stop_child(proc)
            raise
    return proc.returncode, stdout_path.read_text(), stderr_path.read_text()


def stop_child(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def bench_feeds(python: Path, tree: Path, work: Path) -> dict[str, float]:
    out = work / "feeds.json"
    cmd = [str(python), str(Path(__file__).resolve()), "_feeds", str(tree), str(out), json.dumps(FEEDS_SIZES)]
    code, _stdout, stderr = run_child(cmd, tree, work, CHILD_TIMEOUT)
    if code != 0:
        raise RuntimeError(f"feeds exited {code}:\n{stderr[-2000:]}")
    r = json.loads(out.read_text())
    return {
        f"feeds.{k}": r[k]
        for k in (
            "single_appends_per_s",
            "batch_messages_per_s",
            "import_batched_per_s",
            "import_individual_per_s",
        )
    }


def _feeds(tree: str, out: str, sizes_json: str) -> None:
    """Runs under the measured tree's python: import that tree's bench/feeds/run.py and call its
    measuring functions with the given sizes (its full run also measures hypercore, the physical
    limits and a 1M-message follow, which take minutes and are not what a before/after needs)."""
    import importlib.util

    sizes = json.loads(sizes_json)
    spec = importlib.util.spec_from_file_location("feeds_run", Path(tree) / "bench" / "feeds" / "run.py")
    assert spec and spec.loader
    feeds_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(feeds_run)
    tmp = Path(tempfile.mkdtemp(prefix="kachery-compare-feeds-"))
    try:
        res: dict[str, Any] = {}
        res.update(feeds_run.bench_single(tmp, sizes["single"], sizes["repeat"]))
        res.update(feeds_run.bench_batch(tmp, sizes["batches"], sizes["repeat"]))
        res.update(feeds_run.bench_import(tmp, sizes["import"]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    Path(out).write_text(json.dumps({k: v for k, v in res.items() if not k.startswith("_")}))


def bench_network(python: Path, tree: Path, work: Path, file_size: str) -> dict[str, float]:
    out = work / "network.json"
    cmd = [
        str(python), str(tree / "bench" / "network" / "run.py"), "--no-hypercore",
        "--only", "latency,catchup,file", "--file-size", file_size, "--json", str(out),
    ]  # fmt: skip
    code, _stdout, stderr = run_child(cmd, tree, work, CHILD_TIMEOUT)
    if code != 0:
        raise RuntimeError(f"network exited {code}:\n{stderr[-3000:]}")
    k = json.loads(out.read_text())["kachery"]
    return {
        "network.latency_p50_ms": k["latency"]["p50_ms"],
        "network.latency_p99_ms": k["latency"]["p99_ms"],
        "network.catchup_msgs_per_s": k["catchup"]["msgs_per_s"],
        # Phases of the fresh node's catch-up, from the follow request: A's daemon has filled
        # the bucket (the head's mtime), C's store holds its first message.
        "network.catchup_head_s": k["catchup"]["phases_s"]["head"],
        "network.catchup_first_s": k["catchup"]["phases_s"]["first_message_at_c"],
        "network.warm_catchup_msgs_per_s": k["catchup"]["warm_bucket_msgs_per_s"],
        "network.file_mb_per_s": k["file"]["mb_per_s"],
    }


def bench_relay(python: Path, tree: Path, work: Path) -> dict[str, float]:
    cmd = [str(python), str(tree / "bench" / "bench_relay.py"), "--only", "pubsub"]
    code, stdout, stderr = run_child(cmd, tree, work, CHILD_TIMEOUT)
    last = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    if not last.startswith("{"):  # bench_relay exits 1 when a target is missed; the JSON decides
        raise RuntimeError(f"relay exited {code} without its JSON line:\n{stderr[-2000:]}")
    r = json.loads(last)
    relay, nats = r["relay"], r["nats"] or {}
    return {
        "relay.deliveries_per_s": relay["deliveries_per_s"],
        "relay.p50_ms": relay["p50_us"] / 1000,
        "relay.p99_ms": relay["p99_us"] / 1000,
        "relay.nats_p50_ms": nats["p50_us"] / 1000 if "p50_us" in nats else None,
    }


TASK_LINES = {
    "tasks.miss_median_ms": r"^cache miss round trip\s+median\s+([\d.]+) ms",
    "tasks.hit_median_ms": r"^cache hit round trip\s+median\s+([\d.]+) ms",
    "tasks.concurrent_per_s": r"^4 concurrent requesters\s+([\d.]+) requests/s",
}


def bench_tasks(python: Path, tree: Path, work: Path) -> dict[str, float]:
    script = tree / "bench" / "tasks" / "run.py"
    out = work / "tasks.json"
    # Trees before --json was added only print (their `"--json"` is `kachery info --json`).
    has_json = re.search(r'add_argument\(\s*"--json"', script.read_text()) is not None
    cmd = [str(python), str(script), *TASKS_ARGS, *(["--json", str(out)] if has_json else [])]
    code, stdout, stderr = run_child(cmd, tree, work, CHILD_TIMEOUT)
    if code != 0:
        raise RuntimeError(f"tasks exited {code}:\n{stderr[-2000:]}")
    if has_json:
        r = json.loads(out.read_text())
        return {
            "tasks.miss_median_ms": r["cache_miss"]["median_ms"],
            "tasks.hit_median_ms": r["cache_hit"]["median_ms"],
            "tasks.concurrent_per_s": r["concurrent"]["requests_per_s"],
        }
    figures = {}
    for key, pattern in TASK_LINES.items():
        m = re.search(pattern, stdout, re.MULTILINE)
        if not m:
            raise RuntimeError(f"tasks: no line matching {pattern!r} in:\n{stdout}")
        figures[key] = float(m.group(1))
    return figures


# ---------------------------------------------------------------------------- report
def summary(values: list[float]) -> dict[str, Any] | None:
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "values": values}


def verdict(before: dict | None, after: dict | None, higher_better: bool) -> tuple[float | None, str]:
    """(ratio of medians after/before, a word). 'WORSE' when the median is more than NOISE
    worse; '(no overlap)' when every after run is worse than every before run."""
    if not before or not after or not before["median"]:
        return None, "n/a"
    ratio = after["median"] / before["median"]
    gain = ratio if higher_better else 1 / ratio  # > 1: after is better
    if gain < 1 - NOISE:
        word = "WORSE"
        apart = after["max"] < before["min"] if higher_better else after["min"] > before["max"]
    elif gain > 1 + NOISE:
        word = "better"
        apart = after["min"] > before["max"] if higher_better else after["max"] < before["min"]
    else:
        return ratio, "same"
    apart = apart and len(before["values"]) > 1 and len(after["values"]) > 1
    return ratio, word + (" (no overlap)" if apart else "")


def gist(error: str) -> str:
    """The last line of an error (a traceback's exception, a harness's own message)."""
    lines = [line for line in error.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "?"


def fmt(x: float | None, unit: str) -> str:
    if x is None:
        return "-"
    if unit in ("ms", "s"):
        return f"{x:.2f}" if x < 10 else f"{x:.1f}"
    if x >= 1e4:
        return f"{x / 1e3:.0f}k"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}"


def build_rows(samples: list[dict]) -> list[dict[str, Any]]:
    rows = []
    for key, (label, unit, higher_better) in FIGURES.items():
        sides = {}
        for side in ("before", "after"):
            vals = [
                s["figures"][key]
                for s in samples
                if s["side"] == side and s.get("figures", {}).get(key) is not None
            ]
            sides[side] = summary(vals)
        if not sides["before"] and not sides["after"]:
            continue
        ratio, word = verdict(sides["before"], sides["after"], higher_better)
        rows.append(
            {"figure": key, "label": label, "unit": unit, "higher_is_better": higher_better,
             "before": sides["before"], "after": sides["after"], "ratio": ratio, "verdict": word}
        )  # fmt: skip
    return rows


def render(result: dict) -> str:
    def mmm(s: dict | None, unit: str) -> str:
        if not s:
            return "-"
        return f"{fmt(s['min'], unit)} / **{fmt(s['median'], unit)}** / {fmt(s['max'], unit)}"

    headers = ["figure", "unit", "before min / median / max", "after min / median / max", "after/before", ""]
    body = [
        [r["label"], r["unit"] + (" (lower better)" if not r["higher_is_better"] else ""),
         mmm(r["before"], r["unit"]), mmm(r["after"], r["unit"]),
         "-" if r["ratio"] is None else f"{r['ratio']:.2f}", r["verdict"]]
        for r in result["rows"]
    ]  # fmt: skip
    widths = [max(len(str(x[i])) for x in [headers, *body]) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
        for r in [headers, *body]
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    la0, la1 = result["loadavg_start"], result["loadavg_end"]
    notes = []
    for s in result["samples"]:
        where = f"round {s['round']} {s['side']} {s['bench']}"
        if "error" in s:
            notes.append(f"FAILED: {where} (every attempt): {gist(s['error'])}")
        elif s.get("failed_attempts"):
            notes.append(f"retried: {where}; the failed attempt: {gist(s['failed_attempts'][0])}")
    loads = [s["loadavg"][0] for s in result["samples"]]
    return "\n".join(
        [
            f"before: {result['before']['rev']} = {result['before']['sha'][:12]}; after: this tree, "
            f"{result['after']['describe']}; {result['rounds']} rounds; {result['date']}",
            "",
            *lines,
            "",
            f"load average (1/5/15 min) at start {la0[0]:.2f} {la0[1]:.2f} {la0[2]:.2f}, at end "
            f"{la1[0]:.2f} {la1[1]:.2f} {la1[2]:.2f} on {os.cpu_count()} cores; "
            f"{result['seconds'] / 60:.1f} minutes in all; 1-min load when each run started: "
            f"{min(loads, default=0):.1f} to {max(loads, default=0):.1f}",
            "ratio = median after / median before; for ms lower is better, for rates higher. "
            f"WORSE / better: the median moved more than {NOISE:.0%} the wrong / right way; "
            "(no overlap): every run of one side beat every run of the other.",
            *notes,
        ]
    )


# ---------------------------------------------------------------------------- main
def run_sample(
    bench: str, python: Path, tree: Path, work: Path, file_size: str, retries: int
) -> dict[str, Any]:
    """One run of one benchmark on one tree: {"figures": ...} or {"error": ...}, with the load
    average when it started, its wall time and the errors of failed attempts before it. A failed
    run is tried again ``retries`` times: under heavy load a harness can miss its own start-up
    wait (bench/tasks/run.py gives its backend 1 s to register), which says nothing about the tree."""
    sample: dict[str, Any] = {"loadavg": os.getloadavg(), "failed_attempts": []}
    t0 = time.perf_counter()
    for attempt in range(retries + 1):
        attempt_dir = work / f"attempt-{attempt}"
        attempt_dir.mkdir(parents=True)
        try:
            if bench == "feeds":
                sample["figures"] = bench_feeds(python, tree, attempt_dir)
            elif bench == "network":
                sample["figures"] = bench_network(python, tree, attempt_dir, file_size)
            elif bench == "relay":
                sample["figures"] = bench_relay(python, tree, attempt_dir)
            else:
                sample["figures"] = bench_tasks(python, tree, attempt_dir)
            log(
                "  "
                + ", ".join(
                    f"{k.split('.', 1)[1]} {v if v is None else f'{v:.4g}'}"
                    for k, v in sample["figures"].items()
                )
            )
            break
        except (RuntimeError, OSError, ValueError, KeyError) as exc:
            log(f"  FAILED (attempt {attempt + 1} of {retries + 1}): {exc}")
            sample["failed_attempts"].append(str(exc))
    else:
        sample["error"] = sample["failed_attempts"][-1]
    sample["seconds"] = time.perf_counter() - t0
    return sample


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--before", default=DEFAULT_BEFORE, help=f"the revision to compare with (default {DEFAULT_BEFORE})"
    )
    ap.add_argument(
        "--rounds", type=int, default=3, help="rounds of every benchmark on both trees (default 3)"
    )
    ap.add_argument(
        "--only", default=",".join(BENCHES), help="comma-separated subset of: " + ",".join(BENCHES)
    )
    ap.add_argument("--file-size", default="256M", help="the network benchmark's file (default 256M)")
    ap.add_argument(
        "--after-python", type=Path, default=None,
        help="python of this tree (default .venv/bin/python of this tree, else the running one)",
    )  # fmt: skip
    ap.add_argument("--retries", type=int, default=1, help="tries again after a failed run (default 1)")
    ap.add_argument("--json", metavar="PATH", help="also write every sample and the table as JSON")
    args = ap.parse_args()
    benches = [b for b in args.only.split(",") if b]
    unknown = set(benches) - set(BENCHES)
    if unknown:
        ap.error(f"--only: unknown {', '.join(sorted(unknown))} (choose from {', '.join(BENCHES)})")
    after_python = args.after_python or (REPO / ".venv" / "bin" / "python")
    if not after_python.exists():
        after_python = Path(sys.executable)
    sha = git("rev-parse", "--verify", f"{args.before}^{{commit}}")

    # SIGTERM unwinds like Ctrl-C, so that the worktree and the running benchmark are cleaned up.
    signal.signal(signal.SIGTERM, _interrupt)
    t_start = time.perf_counter()
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "before": {"rev": args.before, "sha": sha},
        "after": {"describe": git("describe", "--always", "--dirty"), "tree": str(REPO)},
        "rounds": args.rounds,
        "benches": benches,
        "config": {"feeds": FEEDS_SIZES, "network_file_size": args.file_size, "tasks": TASKS_ARGS},
        "loadavg_start": os.getloadavg(),
        "samples": [],
    }
    work_root = Path(tempfile.mkdtemp(prefix="kachery-compare-"))
    try:
        with RevisionTree(sha) as before:
            trees = {"before": (before.python, before.tree), "after": (after_python, REPO)}
            for rnd in range(1, args.rounds + 1):
                order = ("before", "after") if rnd % 2 else ("after", "before")
                for bench in benches:
                    for side in order:
                        python, tree = trees[side]
                        log(f"round {rnd}/{args.rounds}: {bench}, {side} (load {os.getloadavg()[0]:.2f})")
                        sample = run_sample(
                            bench,
                            python,
                            tree,
                            work_root / f"{rnd}-{bench}-{side}",
                            args.file_size,
                            args.retries,
                        )
                        result["samples"].append({"round": rnd, "side": side, "bench": bench, **sample})
    finally:
        shutil.rmtree(work_root, ignore_errors=True)
    result["loadavg_end"] = os.getloadavg()
    result["seconds"] = time.perf_counter() - t_start
    result["rows"] = build_rows(result["samples"])
    print(render(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_feeds":
        _feeds(*sys.argv[2:])
    else:
        try:
            main()
        except KeyboardInterrupt:
            log("interrupted (the worktree and the running benchmark were cleaned up)")
            sys.exit(130)

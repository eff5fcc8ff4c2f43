#!/usr/bin/env python3
"""Task round trips on a local network of real processes: a hub, node A with a task backend
offering a trivial pure calculation, node B requesting it through the Python API.

Measures (node B's script -> B's daemon -> relay -> A's daemon -> A's backend and back):
* round-trip time of a cache miss (fresh arguments each time: request, offer, assign, run,
  sign, upload to the bucket, finished with the result inline, verify);
* round-trip time of a cache hit (the same arguments again: B's daemon reads the bucket and
  verifies the signed result; A is not involved);
* requests per second with 4 concurrent requesters (threads on B, fresh arguments).

    .venv/bin/python bench/tasks/run.py [--n 50] [--seconds 10] [--json out.json]

``--json`` also writes the figures (milliseconds, requests per second) for scripts such as
``bench/compare_revisions.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CLI = [sys.executable, "-c", "from kachery_node.cli import main; main()"]
BACKEND = """
import kachery_node as kn

@kn.taskfunction("bench.add.1", type="pure-calculation")
def add(*, a, b):
    return a + b

kn.run_task_backend(channels=["bench"], functions=[add], max_concurrency=4)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(env: dict, *args: str) -> str:
    out = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=60)
    if out.returncode:
        raise SystemExit(f"kachery {' '.join(args)}: {out.stderr}")
    return out.stdout


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _stats_ms(xs: list[float]) -> dict:
    return {"median_ms": statistics.median(xs) * 1000, "p90_ms": _percentile(xs, 0.9) * 1000, "n": len(xs)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50, help="round trips per RTT measurement")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of the throughput run")
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kachery-bench-tasks-"))
    hub = backend = None
    envs: dict[str, dict] = {}
    try:
        hub_dir = root / "hub"
        hub = subprocess.Popen([*CLI, "hub", "serve", "--dir", str(hub_dir), "--port", "0"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not (hub_dir / "hub.json").exists():
            if time.monotonic() > deadline:
                raise SystemExit("hub did not start")
            time.sleep(0.05)
        hub_url = json.loads((hub_dir / "hub.json").read_text())["url"]
        roles = {"a": "request-tasks,provide-tasks", "b": "request-tasks"}
        ids = {}
        for name in roles:
            envs[name] = {**os.environ, "KACHERY_STORAGE_DIR": str(root / name / "storage"),
                          "KACHERY_USER_DIR": str(root / name / "user"), "KACHERY_HUB_URL": hub_url,
                          "KACHERY_DAEMON_PORT": str(_free_port())}
            _run(envs[name], "init", "--label", name)
            ids[name] = json.loads(_run(envs[name], "info", "--json"))["node_id"]
        _run(envs["a"], "channel", "create", "bench")
        for name, r in roles.items():
            _run(envs[name], "node", "join", "bench", "--roles", r)
            _run(envs["a"], "channel", "grant", "bench", ids[name], *r.split(","))
            _run(envs[name], "node", "start")
        from kachery_node.daemon_client import DaemonClient

        for name in roles:
            client = DaemonClient(envs[name]["KACHERY_STORAGE_DIR"])
            deadline = time.monotonic() + 30
            while not all(c["state"] == "connected" for c in client.status()["channels"] or [{"state": ""}]):
                if time.monotonic() > deadline:
                    raise SystemExit(f"node {name} did not connect")
                time.sleep(0.05)
        backend = subprocess.Popen([sys.executable, "-c", BACKEND], env=envs["a"])
        time.sleep(1.0)

        # This process plays node B's script.
        os.environ.update({k: envs["b"][k] for k in ("KACHERY_STORAGE_DIR", "KACHERY_USER_DIR",
                                                     "KACHERY_DAEMON_PORT")})
        import kachery_node as kn

        phases: dict[str, list[float]] = {}

        def once(a: int, record: bool = False) -> float:
            t0 = time.perf_counter()
            h = kn.request_task("bench.add.1", {"a": a, "b": 1}, channel="bench", timeout=30)
            if record:  # when each status reached this script, from the request
                h.on_status(lambda h: phases.setdefault(h.status, []).append(time.perf_counter() - t0))
            assert h.wait() == a + 1
            return time.perf_counter() - t0

        for i in range(5):  # warm up connections
            once(-1 - i)
        miss = [once(i, record=True) for i in range(args.n)]
        hit = [once(i) for i in range(args.n)]
        counter = iter(range(10_000_000, 20_000_000))
        lock = threading.Lock()
        done = []
        stop_at = time.monotonic() + args.seconds

        def requester() -> None:
            while time.monotonic() < stop_at:
                with lock:
                    a = next(counter)
                done.append(once(a))

        threads = [threading.Thread(target=requester) for _ in range(4)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0

        def row(name: str, xs: list[float]) -> str:
            return (f"{name:<28} median {statistics.median(xs) * 1000:7.1f} ms   "
                    f"p90 {_percentile(xs, 0.9) * 1000:7.1f} ms   (n={len(xs)})")

        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"commit {commit}, {os.cpu_count()} CPUs, load average {load}")
        print(row("cache miss round trip", miss))
        print("  cache miss, status reached the script after (median): " + ", ".join(
            f"{k} {statistics.median(v) * 1000:.1f} ms" for k, v in phases.items()))
        print(row("cache hit round trip", hit))
        print(f"{'4 concurrent requesters':<28} {len(done) / elapsed:7.1f} requests/s (cache misses, "
              f"{len(done)} in {elapsed:.1f} s; median {statistics.median(done) * 1000:.1f} ms each)")
        if args.json:
            Path(args.json).write_text(json.dumps({
                "commit": commit, "cpus": os.cpu_count(), "loadavg": os.getloadavg(),
                "cache_miss": _stats_ms(miss), "cache_hit": _stats_ms(hit),
                "cache_miss_status_median_ms": {k: statistics.median(v) * 1000 for k, v in phases.items()},
                "concurrent": {"requesters": 4, "requests": len(done), "seconds": elapsed,
                               "requests_per_s": len(done) / elapsed,
                               "median_ms": statistics.median(done) * 1000},
            }, indent=2) + "\n")
    finally:
        if backend is not None:
            backend.send_signal(signal.SIGINT)
            backend.wait(timeout=10)
        for env in envs.values():
            subprocess.run([*CLI, "node", "stop"], env=env, capture_output=True, timeout=30)
        if hub is not None:
            hub.terminate()
            hub.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

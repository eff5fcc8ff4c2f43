"""kachery across the network, side by side with hypercore (issue 5).

Run from the repository root::

    .venv/bin/python bench/network/run.py                    # full run (several minutes)
    .venv/bin/python bench/network/run.py --quick            # small sizes, < 60 s (smoke test)
    .venv/bin/python bench/network/run.py --no-hypercore     # skip the Node.js side
    .venv/bin/python bench/network/run.py --file-size 256M   # a smaller file than 1 GiB
    .venv/bin/python bench/network/run.py --json out.json    # also save every figure
    .venv/bin/python bench/network/run.py --profile DIR      # hub + daemons under cProfile
    .venv/bin/python bench/network/run.py --only latency --no-hypercore --rounds 5
    .venv/bin/python bench/network/run.py --only latency --no-hypercore --loop-stalls 1
        # also list the hub's and daemons' event-loop steps over 1 ms in the latency rounds
        # (kachery_node/loop_stalls.py; KACHERY_LOOP_STALLS_SAMPLE=0.5 in the environment adds
        # sampled stacks to each record, kept with --keep in <tmp>/loop-stalls.jsonl)

This is a benchmark, not a test: it prints a table and never fails on a missed target.
Everything is real processes on loopback: one hub (``kachery hub serve``: API, pub-sub relay,
bucket) and kachery nodes with their daemons (``kachery node start``), joined to one channel;
A owns the feeds and the file, B (and the fresh nodes C, D) follow or fetch them.

1. live latency: a writer process appends to a subfeed in A's store every few ms, with
   ``time.time_ns()`` in the payload; a follower *process* iterates ``follow()`` on B's store
   (after ``POST /api/feeds/follow`` on B) and records arrival - send (same machine clock).
   ``--rounds N`` (default 3) runs it N times (a new subfeed each time) and prints min / median /
   max of each percentile. The physical limit is measured in the same run: one hop through the
   hub's relay (publisher -> relay -> subscriber, both in this process, one message in flight)
   and one through ``nats-server`` (``bench/bench_relay.py``); the live path crosses one relay
   hop and four process wake-ups (writer -> A's daemon -> relay -> B's daemon -> follower).
2. catch-up: A holds a 100k-message subfeed (256-byte payloads, appended in batches of 1000);
   fresh node C is asked to follow it; time from the follow request until C's store has all of
   it (C's daemon imports via the bucket, which A's daemon fills on the subscription).
   ``--rounds N`` runs it N times too (a new subfeed and fresh node each time), each round after
   the first with its own hypercore replication run just before it, and prints min / median /
   max of the rate, the ratio, and the time to C's first message. Each round then waits until
   the bucket's witnessed checkpoint covers the subfeed (the hub's witness imports it too,
   during the catch-up or, for a backlog whose owner requires no witnesses, after it) and
   prints the CPU seconds until then: the catch-up's whole cost, wherever it went.
3. file: a file (1 GiB by default) stored on A with ``Storage.store_file``; B fetches it with
   ``POST /api/files/fetch``; only the transfer is timed. ``--rounds N`` runs it N times (a new
   file each time), each round just after its own limit (writing as many bytes to the disk and
   fsyncing them) and, after the first, its own hypercore replication of as many 64 KiB blocks.
4. memory: fresh node D catches up a 1M-message subfeed (appended on A in batches of 1000);
   D's daemon RSS is sampled with psutil every 50 ms (its pid from ``<storage>/daemon.json``).

hypercore (``bench/hypercore/bench.mjs``, the pinned npm package in ``bench/.cache/hypercore``
as installed by ``bench/feeds/run.py``) runs first in the same invocation: live tail latency
(in-process stream pair), replication of 100k 256-byte blocks and of 64 KiB blocks.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from operator import itemgetter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
HYPERCORE_SRC = REPO / "bench" / "hypercore"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import psutil  # noqa: E402
from netlab import ALL_ROLES, Lab, Node, PySpy  # noqa: E402

import kachery_feeds as kf  # noqa: E402

sys.path.insert(0, str(HYPERCORE_SRC))
sys.path.insert(0, str(REPO / "bench"))
from bench_common import log, machine_info, payload, table  # noqa: E402
from hypercore_runner import run_hypercore_bench  # noqa: E402

READER_ROLES = ["request-feeds", "request-files"]

FULL = {
    "latency_messages": 1000,
    "latency_interval_ms": 5.0,
    "catchup_messages": 100_000,
    "memory_messages": 1_000_000,
    "file_size": 1 << 30,
    "timeout": 900.0,  # per stage
}
QUICK = {
    "latency_messages": 200,
    "latency_interval_ms": 5.0,
    "catchup_messages": 5_000,
    "memory_messages": 20_000,
    "file_size": 32 << 20,  # above the 20 MB manifest threshold: the chunked path
    "timeout": 60.0,
}
TARGETS = {  # issue 15's
    "latency_p50_ms": 1.0,
    "latency_p99_ms": 5.0,
    "catchup_vs_hypercore": 10.0,
    "catchup_first_message_s": 0.15,
    "file_vs_hypercore": 2.0,  # every round
    "file_vs_hypercore_median": 2.5,
    "peak_rss_mb": 150.0,
}


def percentile(sorted_values: list[float], p: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, -(-len(sorted_values) * p // 100) - 1))
    return sorted_values[int(k)]


def settle() -> None:
    os.sync()
    gc.collect()


def worker(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


def wait_count(sf: kf.Subfeed, n: int, timeout: float, what: str, poll: float = 0.01) -> float:
    """Wait until ``sf`` holds ``n`` messages; returns the wall time (time.time) it was seen."""
    return wait_count_phases(sf, n, timeout, what, poll)[1]


def wait_count_phases(
    sf: kf.Subfeed, n: int, timeout: float, what: str, poll: float = 0.01
) -> tuple[float | None, float]:
    """Like wait_count; returns (wall time the first message was seen, wall time all were)."""
    deadline = time.monotonic() + timeout
    first = None
    while True:
        have = sf.get_num_local_messages()
        if have and first is None:
            first = time.time()
        if have >= n:
            return first, time.time()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: {have} of {n} messages after {timeout:.0f} s")
        time.sleep(poll)


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """user + system CPU seconds so far of each process (all its threads)."""
    out = {}
    for name, pid in pids.items():
        try:
            t = psutil.Process(pid).cpu_times()
            out[name] = t.user + t.system
        except psutil.Error:
            out[name] = float("nan")
    return out


def cpu_used(before: dict[str, float], pids: dict[str, int]) -> dict[str, float]:
    after = cpu_seconds(pids)
    return {name: after[name] - before.get(name, 0.0) for name in after}


def bucket_mtimes(hub_dir: Path, channel: str, uri: str) -> dict[str, float | None]:
    """When the hub's bucket got the first and the last segment of a subfeed and its head
    (file modification times, wall clock)."""
    from kachery_node.hub.object_files import object_file
    from kachery_node.protocol.bucket_layout import subfeed_head_path

    parsed = kf.parse_feed_uri(uri)
    head = object_file(hub_dir / "bucket", subfeed_head_path(channel, parsed.feed_id, parsed.subfeed_hash))
    times = sorted(p.stat().st_mtime for p in (head.parent / "segments").glob("*"))
    try:
        head_time = head.stat().st_mtime
    except OSError:
        head_time = None
    return {
        "first_segment": times[0] if times else None,
        "last_segment": times[-1] if times else None,
        "head": head_time,
    }


def wait_witnessed(hub_dir: Path, channel: str, uri: str, n: int, timeout: float) -> float | None:
    """Wait until the bucket's witnessed checkpoint of ``uri`` says ``n`` (the hub cosigned all
    of it, spec/witness.md §4.2); the wall time it was seen, None after ``timeout``."""
    from kachery_feeds.checkpoints import CheckpointError, parse_witnessed_checkpoint
    from kachery_node.hub.object_files import object_file
    from kachery_node.protocol.bucket_layout import subfeed_checkpoint_path

    parsed = kf.parse_feed_uri(uri)
    path = object_file(hub_dir / "bucket",
                       subfeed_checkpoint_path(channel, parsed.feed_id, parsed.subfeed_hash))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if parse_witnessed_checkpoint(path.read_bytes()).checkpoint.size >= n:
                return time.time()
        except (OSError, CheckpointError):
            pass
        time.sleep(0.02)
    return None


def append_batches(store_path: Path, name: str, n: int) -> tuple[str, float]:
    """Append n 256-byte payloads in batches of 1000 to a new feed in A's store (in this
    process); returns (subfeed uri, appends/s)."""
    sf = kf.open_store(store_path).create_feed().load_subfeed(name)
    t0 = time.perf_counter()
    for start in range(0, n, 1000):
        sf.append_messages([payload(i) for i in range(start, min(n, start + 1000))])
    return sf.uri, n / (time.perf_counter() - t0)


def follow(node: Node, uri: str) -> dict:
    return node.client.request("POST", "/api/feeds/follow", json_body={"uri": uri})


# ---------------------------------------------------------------------------- 1. live latency
def bench_latency(a: Node, b: Node, n: int, interval_ms: float, timeout: float,
                  hub_pid: int | None = None) -> dict[str, Any]:
    out_path = b.storage_dir.parent / "latencies.json"
    pids = {"hub": hub_pid, "A": a.pid, "B": b.pid}
    pids = {name: pid for name, pid in pids.items() if pid is not None}
    writer = subprocess.Popen(
        worker("_writer", str(a.storage_dir / "feeds.db"), str(n), str(interval_ms)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    follower = None
    try:
        uri = writer.stdout.readline().strip()
        if not uri.startswith("feed://"):
            raise RuntimeError(f"writer did not start: {uri!r}")
        follow(b, uri)
        # The writer's first message (a "hello") reaches B through the live subscription; once it
        # is there the path is warm and every later message is pushed the moment it is committed.
        replica = kf.open_store(b.storage_dir / "feeds.db").load_subfeed(uri)
        wait_count(replica, 1, 30, "latency warm-up")
        follower = subprocess.Popen(
            worker("_follower", str(b.storage_dir / "feeds.db"), uri, str(n), str(out_path)),
            stdout=subprocess.PIPE,
            text=True,
        )
        if follower.stdout.readline().strip() != "ready":
            raise RuntimeError("follower did not start")
        relay_before = relay_messages_in(a)
        cpu_before = cpu_seconds(pids)
        t_go = time.time()
        writer.stdin.write("go\n")
        writer.stdin.flush()
        writer_stats = json.loads(writer.stdout.readline())
        follower.wait(timeout=timeout)
        t_end = time.time()
        cpu = cpu_used(cpu_before, pids)
        relay_messages = relay_messages_in(a) - relay_before
        writer.wait(timeout=30)
    finally:
        for p in (writer, follower):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    followed = json.loads(out_path.read_text())
    lat = sorted(followed["latencies"])
    # CPU per appended message (µs) of each process over the run (all threads; the daemons'
    # and hub's include their background work, e.g. the debounced bucket updates).
    cpu_us = {name: secs / n * 1e6 for name, secs in cpu.items()}
    cpu_us["writer"] = writer_stats["cpu_s"] / n * 1e6
    cpu_us["follower"] = followed["cpu_s"] / n * 1e6
    # Under load a push carries several messages (the daemons fall behind), which lowers the
    # CPU per message without any change in the code: the pushes (messages the relay took in,
    # nearly all of them pushes) say how many there were.
    pushes = max(1, relay_messages)
    if len(lat) < n:
        log(f"latency: the follower saw {len(lat)} of {n} messages")
    return {
        "messages": n,
        "interval_ms": interval_ms,
        "received": len(lat),
        "p50_ms": percentile(lat, 50),
        "p90_ms": percentile(lat, 90),
        "p99_ms": percentile(lat, 99),
        "max_ms": lat[-1] if lat else None,
        "writer_append_p50_ms": writer_stats["append_p50_ms"],
        "writer_append_p99_ms": writer_stats["append_p99_ms"],
        "cpu_us_per_message": cpu_us,
        "relay_messages": relay_messages,
        "cpu_us_per_relay_message": {name: us * n / pushes for name, us in cpu_us.items()},
        "window": [t_go, t_end],  # unix seconds: the rounds' part of --loop-stalls records
    }


def loop_stalls_in(path: Path, windows: list[list[float]]) -> list[dict[str, Any]]:
    """The records of ``kachery_node.loop_stalls`` (JSON lines at ``path``) whose step ended
    within one of ``windows`` ([start, end] unix seconds)."""
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if any(start <= r["t"] <= end for start, end in windows)]


def loop_stalls_text(records: list[dict[str, Any]], threshold_ms: float) -> str:
    """Per process and task: steps over the threshold in CPU (count, worst CPU and wall, where
    the worst one ran: innermost frame it resumed at -> the one it suspended at), then the steps
    over it in wall time only (blocked in a system call, waiting for the GIL, or preempted)."""
    def where(stack: list[str]) -> str:
        return stack[-1].rsplit("/", 1)[-1] if stack else "-"

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["process"], r["task"]), []).append(r)
    headers = ["process", "task", f"CPU >= {threshold_ms:g} ms", "worst CPU ms", "its wall ms", "wall only",
               "worst wall ms", "worst CPU step: from -> to"]
    rows = []
    for (process, task), rs in sorted(groups.items()):
        cpu = [r for r in rs if r["cpu_ms"] >= threshold_ms]
        wall_only = [r for r in rs if r["cpu_ms"] < threshold_ms]
        worst = max(rs, key=lambda r: r["cpu_ms"])
        rows.append([process, ".".join(task.rsplit(".", 2)[-2:]), str(len(cpu)), f"{worst['cpu_ms']:.2f}",
                     f"{worst['wall_ms']:.2f}", str(len(wall_only)), f"{max(r['wall_ms'] for r in rs):.2f}",
                     f"{where(worst['from'])} -> {where(worst['to'])}"])
    if not rows:
        return f"loop stalls: no step over {threshold_ms:g} ms in the latency rounds"
    return (f"loop stalls in the latency rounds (steps over {threshold_ms:g} ms of thread CPU or wall "
            f"time, kachery_node/loop_stalls.py):\n" + table(headers, rows))


def relay_messages_in(owner: Node) -> int:
    """Messages the hub's relay has taken in on the owner's channels so far."""
    status = json.loads(owner.run("hub", "status", "--json"))
    return sum(ch["relay"]["messages_in"] for ch in status["channels"])


def _writer(db: str, n: str, interval_ms: str) -> None:
    sf = kf.open_store(db).create_feed().load_subfeed("live")
    sf.append_message({"hello": True})
    print(sf.uri, flush=True)
    sys.stdin.readline()
    count, step = int(n), float(interval_ms) / 1000
    took = []
    cpu0 = time.process_time()
    t_next = time.monotonic()
    for i in range(count):
        p = payload(i)
        t0 = time.perf_counter()
        p["t"] = time.time_ns()
        sf.append_message(p)
        took.append((time.perf_counter() - t0) * 1000)
        t_next += step
        delay = t_next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    cpu = time.process_time() - cpu0
    took.sort()
    print(json.dumps({"append_p50_ms": percentile(took, 50), "append_p99_ms": percentile(took, 99),
                      "cpu_s": cpu}), flush=True)


def _follower(db: str, uri: str, n: str, out: str) -> None:
    sf = kf.open_store(db).load_subfeed(uri)
    last = int(n) - 1
    lat: list[float] = []
    print("ready", flush=True)
    cpu0 = time.process_time()
    try:
        for p in sf.follow(start=1, timeout=20):
            lat.append((time.time_ns() - p["t"]) / 1e6)
            if p["i"] >= last:
                break
    finally:
        Path(out).write_text(json.dumps({"latencies": lat, "cpu_s": time.process_time() - cpu0}))


def latency_rounds(lab: Lab, a: Node, b: Node, cfg: dict, rounds: int, hop_samples: int) -> dict[str, Any]:
    """``rounds`` live-latency rounds, each followed by the relay and NATS hops; the figures of
    the round with the median p50, plus min / median / max of each percentile over the rounds."""
    runs: list[dict[str, Any]] = []
    hops: list[dict[str, Any]] = []
    nats = None
    try:
        for i in range(rounds):
            load = os.getloadavg()[0]
            log(f"live latency round {i + 1}/{rounds} (load average {load:.2f})")
            run = bench_latency(a, b, cfg["latency_messages"], cfg["latency_interval_ms"], cfg["timeout"],
                                lab.hub.pid)
            run["loadavg"] = load
            runs.append(run)
            if hop_samples:
                if nats is None:
                    nats = start_nats_server()
                hops.append(measure_hops(lab.hub.url, nats, hop_samples))
    finally:
        if isinstance(nats, tuple):
            stop_process(nats[0])
    ordered = sorted(runs, key=lambda r: r["p50_ms"] if r["p50_ms"] is not None else math.inf)
    out = dict(ordered[len(ordered) // 2])
    out["rounds"] = runs
    keys = ("p50_ms", "p90_ms", "p99_ms", "max_ms")
    known = [key for key in keys if all(r[key] is not None for r in runs)]
    out.update({key: statistics.median(r[key] for r in runs) for key in known})
    if rounds > 1:
        out["spread"] = {key: [min(r[key] for r in runs), statistics.median(r[key] for r in runs),
                               max(r[key] for r in runs)] for key in known}
    for what in ("cpu_us_per_message", "cpu_us_per_relay_message"):
        out[what] = {key: statistics.median(r[what][key] for r in runs) for key in runs[0][what]}
    out["relay_messages"] = statistics.median(r["relay_messages"] for r in runs)
    if hops:
        out["hop"] = {key: statistics.median(h[key] for h in hops) for key in hops[0] if key != "nats_error"
                      and all(h.get(key) is not None for h in hops)}
        if any("nats_error" in h for h in hops):
            out["hop"]["nats_error"] = next(h["nats_error"] for h in hops if "nats_error" in h)
    return out


def start_nats_server() -> tuple[subprocess.Popen, int] | str:
    """A nats-server for the NATS hop, or why there is none."""
    from bench_relay import start_nats

    try:
        return start_nats()
    except SystemExit as exc:
        return str(exc)


def stop_process(proc: subprocess.Popen) -> None:
    from bench_relay import stop

    stop(proc)


def measure_hops(hub_url: str, nats: tuple[subprocess.Popen, int] | str, samples: int) -> dict[str, Any]:
    """One pub-sub hop through the lab's hub relay and through nats-server: one subscriber, one
    message in flight at a time, publisher and subscriber in this process (bench/bench_relay.py)."""
    import asyncio

    import trio
    from bench_relay import bench_nats, bench_relay

    channel = f"bench.hop-{os.getpid()}-{time.monotonic_ns()}"
    relay = trio.run(bench_relay, hub_url, 1, 50, samples, channel)
    out: dict[str, Any] = {"relay_p50_us": relay["p50_us"], "relay_p99_us": relay["p99_us"],
                           "samples": relay["samples"]}
    if isinstance(nats, str):
        out["nats_error"] = nats
    else:
        try:
            n = asyncio.run(bench_nats(nats[1], 1, 50, samples))
            out.update(nats_p50_us=n["p50_us"], nats_p99_us=n["p99_us"])
        except ImportError:
            out["nats_error"] = "nats-py not installed (pip install -e '.[bench]')"
    return out


# ---------------------------------------------------------------------------- 2. catch-up
def bench_catchup(lab: Lab, a: Node, n: int, timeout: float, suffix: str = "") -> dict[str, Any]:
    log(f"catch-up: appending {n} messages on A (batches of 1000)")
    uri, append_rate = append_batches(a.storage_dir / "feeds.db", "catchup" + suffix, n)
    c = lab.add_node("C" + suffix, READER_ROLES)
    replica = kf.open_store(c.storage_dir / "feeds.db").load_subfeed(uri)
    settle()
    log(f"catch-up: fresh node C follows {n} messages")
    pids = {"hub": lab.hub.pid, "A": a.pid, "C": c.pid}
    cpu0 = cpu_seconds(pids)
    t0 = time.time()
    follow(c, uri)
    first, t1 = wait_count_phases(replica, n, timeout, "catch-up")
    secs = t1 - t0
    cpu = cpu_used(cpu0, pids)
    # Phases (wall clock, from the follow request): A's daemon fills the bucket on C's
    # subscription (segment 0 .. head), then C downloads and imports.
    marks = bucket_mtimes(lab.hub.dir, lab.channel, uri)
    phases = {k: None if v is None else v - t0 for k, v in marks.items()}
    phases["first_message_at_c"] = None if first is None else first - t0
    # The hub's witness cosigns the whole subfeed after A's head upload (spec/witness.md §4.2),
    # during the catch-up or (a backlog whose owner requires no witnesses) after it: the CPU
    # until then is the catch-up's whole cost, wherever it went.
    witnessed = wait_witnessed(lab.hub.dir, lab.channel, uri, n, timeout)
    phases["witnessed"] = None if witnessed is None else witnessed - t0
    cpu_to_witnessed = cpu_used(cpu0, pids)
    # The same again for another fresh node once the bucket is warm: download + import only.
    c.stop()  # an idle follower from here on: one daemon fewer in later rounds
    e = lab.add_node("E" + suffix, READER_ROLES)
    replica_e = kf.open_store(e.storage_dir / "feeds.db").load_subfeed(uri)
    settle()
    log(f"catch-up: fresh node E follows the same {n} messages (bucket already filled)")
    t0 = time.time()
    follow(e, uri)
    t1 = wait_count(replica_e, n, timeout, "warm catch-up")
    e.stop()
    return {
        "messages": n,
        "seconds": secs,
        "msgs_per_s": n / secs,
        "phases_s": phases,
        "cpu_s": cpu,
        "cpu_s_to_witnessed": cpu_to_witnessed,
        "warm_bucket_seconds": t1 - t0,
        "warm_bucket_msgs_per_s": n / (t1 - t0),
        "append_on_a_per_s": append_rate,
    }


def catchup_rounds(lab: Lab, a: Node, cfg: dict, rounds: int, tmp: Path,
                   hypercore: dict | None) -> dict[str, Any]:
    """``rounds`` catch-ups (a new subfeed and fresh nodes each time). With hypercore, each round
    after the first runs hypercore's replication of as many blocks just before it (the first
    uses the invocation's hypercore run), so that every round has its own ratio: the machine is
    shared and both sides' rates move with its load. The figures of the round with the median
    rate, plus min / median / max over the rounds."""
    runs: list[dict[str, Any]] = []
    for i in range(rounds):
        hv = None
        if hypercore is not None:
            hv = hypercore.get("repl_small_blocks_per_s") if i == 0 else hypercore_replication(tmp, cfg)
        load = os.getloadavg()[0]
        log(f"catch-up round {i + 1}/{rounds} (load average {load:.2f})")
        run = bench_catchup(lab, a, cfg["catchup_messages"], cfg["timeout"], "" if i == 0 else str(i + 1))
        run.update(loadavg=load, hypercore_per_s=hv, ratio=div(run["msgs_per_s"], hv))
        runs.append(run)
    return median_round(runs, "msgs_per_s", {
        **{name: itemgetter(name) for name in ("msgs_per_s", "hypercore_per_s", "ratio")},
        "first_message_s": lambda r: r["phases_s"]["first_message_at_c"],
    })


def median_round(runs: list[dict[str, Any]], rate: str,
                 spreads: dict[str, Callable[[dict[str, Any]], float | None]]) -> dict[str, Any]:
    """The figures of the round with the median ``rate``, every round's under ``rounds``, and,
    with more than one round, ``spread``: [min, median, max] of each of ``spreads`` over them."""
    ordered = sorted(runs, key=lambda r: r[rate])
    out = dict(ordered[len(ordered) // 2])
    out["rounds"] = runs
    if len(runs) > 1:
        out["spread"] = {name: spread([figure(r) for r in runs]) for name, figure in spreads.items()}
    return out


def spread(values: list[float | None]) -> list[float] | None:
    """[min, median, max] of the rounds' values (None if a round has none)."""
    if not values or any(v is None for v in values):
        return None
    return [min(values), statistics.median(values), max(values)]


def hypercore_replication(tmp: Path, cfg: dict) -> float | None:
    """hypercore's replication of ``catchup_messages`` 256-byte blocks alone (blocks/s), the
    other sections of bench.mjs cut to nothing."""
    args = [
        "--repeat", "1", "--single", "1", "--batches", "1", "--tail", "1",
        "--repl-blocks", str(cfg["catchup_messages"]), "--big-mib", "1",
    ]  # fmt: skip
    h = run_hypercore_bench(tmp, args, log)
    return None if h is None else h.get("repl_small_blocks_per_s")


# ---------------------------------------------------------------------------- 3. file
def hypercore_big_replication(tmp: Path, cfg: dict) -> float | None:
    """hypercore's replication of a file's size of 64 KiB blocks alone (MB/s), the other
    sections of bench.mjs cut to nothing."""
    args = [
        "--repeat", "1", "--single", "1", "--batches", "1", "--tail", "1", "--repl-blocks", "1",
        "--big-mib", str(max(1, cfg["file_size"] >> 20)),
    ]  # fmt: skip
    h = run_hypercore_bench(tmp, args, log)
    return None if h is None else h.get("repl_big_mb_per_s")


def file_rounds(lab: Lab, a: Node, b: Node, cfg: dict, rounds: int, tmp: Path,
                hypercore: dict | None) -> dict[str, Any]:
    """``rounds`` transfers of a new file from A to B, each with its own limit measured just
    before it (the disk's write + fsync of as many bytes) and, with hypercore, hypercore's
    replication of as many 64 KiB blocks (the first round uses the invocation's run): every
    round has its own ratio, as the catch-up's do. The figures of the round with the median
    rate, plus min / median / max over the rounds."""
    runs: list[dict[str, Any]] = []
    for i in range(rounds):
        hv = None
        if hypercore is not None:
            hv = hypercore.get("repl_big_mb_per_s") if i == 0 else hypercore_big_replication(tmp, cfg)
        disk = disk_write_mb_per_s(tmp, min(cfg["file_size"], 1 << 30))
        load = os.getloadavg()[0]
        log(f"file round {i + 1}/{rounds} (load average {load:.2f})")
        run = bench_file(lab, a, b, cfg["file_size"], tmp, cfg["timeout"])
        run.update(loadavg=load, hypercore_mb_per_s=hv, ratio=div(run["mb_per_s"], hv),
                   disk_write_mb_per_s=disk)
        runs.append(run)
    figures = ("mb_per_s", "hypercore_mb_per_s", "ratio", "disk_write_mb_per_s")
    return median_round(runs, "mb_per_s", {name: itemgetter(name) for name in figures})


def bench_file(lab: Lab, a: Node, b: Node, size: int, tmp: Path, timeout: float) -> dict[str, Any]:
    import httpx

    import kachery_node as kn

    src = tmp / "big.dat"
    log(f"file: writing {size / 2**20:.0f} MiB of random bytes and storing it on A")
    with open(src, "wb") as f:
        left = size
        while left:
            k = min(left, 8 << 20)
            f.write(os.urandom(k))
            left -= k
    t0 = time.perf_counter()
    uri = kn.open_storage(a.storage_dir).store_file(src)
    store_secs = time.perf_counter() - t0
    src.unlink()
    settle()
    log(f"file: B fetches {uri[:60]}...")
    lines = []
    pids = {"hub": lab.hub.pid, "A": a.pid, "B": b.pid}
    cpu0 = cpu_seconds(pids)
    t0 = time.perf_counter()
    with httpx.stream(
        "POST",
        f"{b.client.base_url}/api/files/fetch",
        json={"uri": uri},
        headers={"Authorization": f"Bearer {b.token}"},
        timeout=timeout,
    ) as r:
        if r.status_code != 200:
            raise RuntimeError(f"fetch refused: {r.status_code} {r.read()!r}")
        first_bytes = all_bytes = None
        for line in r.iter_lines():
            item = json.loads(line)
            lines.append(item)
            if item.get("type") == "progress" and item.get("done"):
                now = time.perf_counter() - t0
                if first_bytes is None:
                    first_bytes = now
                if item["done"] >= item.get("total", size) and all_bytes is None:
                    all_bytes = now
    secs = time.perf_counter() - t0
    cpu = cpu_used(cpu0, pids)
    if not lines or lines[-1].get("type") != "finished":
        raise RuntimeError(f"fetch failed: {lines[-3:]}")
    got = os.path.getsize(lines[-1]["path"])
    if got != size:
        raise RuntimeError(f"fetched {got} bytes, expected {size}")
    return {
        "bytes": size,
        "seconds": secs,
        "mb_per_s": size / 1e6 / secs,
        "store_on_a_seconds": store_secs,
        # progress lines: first downloaded bytes reported; every byte received (then B verifies
        # the last chunks, finishes the whole-file hash and renames the file into its storage)
        "first_bytes_at_s": first_bytes,
        "all_chunks_at_s": all_bytes,
        "cpu_s": cpu,
    }


def disk_write_mb_per_s(tmp: Path, size: int) -> float:
    """Physical limit for the file row: write ``size`` bytes to a new file in the benchmark's
    folder and fsync it (what every stored copy of the file finally costs), MB/s."""
    path = tmp / "disk-limit.bin"
    block = os.urandom(8 << 20)
    settle()
    t0 = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        left = size
        while left > 0:
            left -= f.write(block[: min(left, len(block))])
        os.fsync(f.fileno())
    secs = time.perf_counter() - t0
    path.unlink()
    return size / 1e6 / secs


# ---------------------------------------------------------------------------- 4. memory
class RssSampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                rss = self.proc.memory_info().rss
            except psutil.Error:
                return
            self.peak = max(self.peak, rss)
            self.samples += 1
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def bench_memory(lab: Lab, a: Node, n: int, timeout: float) -> dict[str, Any]:
    log(f"memory: appending {n} messages on A (batches of 1000)")
    uri, append_rate = append_batches(a.storage_dir / "feeds.db", "memory", n)
    d = lab.add_node("D", READER_ROLES)
    replica = kf.open_store(d.storage_dir / "feeds.db").load_subfeed(uri)
    settle()
    baseline = psutil.Process(d.pid).memory_info().rss
    baseline_a = psutil.Process(a.pid).memory_info().rss
    sampler, sampler_a = RssSampler(d.pid), RssSampler(a.pid)
    sampler.start()
    sampler_a.start()
    log(f"memory: fresh node D follows {n} messages, sampling its and A's daemon's RSS every 50 ms")
    try:
        t0 = time.time()
        follow(d, uri)
        t1 = wait_count(replica, n, timeout, "1M catch-up", poll=0.05)
        time.sleep(0.2)
    finally:
        sampler.stop()
        sampler_a.stop()
    return {
        "serving_baseline_rss_mb": baseline_a / 2**20,
        "serving_peak_rss_mb": sampler_a.peak / 2**20,
        "serving_vm_hwm_mb": vm_hwm_mb(a.pid),
        "messages": n,
        "baseline_rss_mb": baseline / 2**20,
        "peak_rss_mb": sampler.peak / 2**20,
        "vm_hwm_mb": vm_hwm_mb(d.pid),
        "samples": sampler.samples,
        "catchup_seconds": t1 - t0,
        "catchup_msgs_per_s": n / (t1 - t0),
        "append_on_a_per_s": append_rate,
    }


# ---------------------------------------------------------------------------- hypercore
def run_hypercore(tmp: Path, cfg: dict, quick: bool) -> dict[str, Any] | None:
    """Run the pinned hypercore's bench.mjs (installed as for bench/feeds/run.py) with the sizes
    of this benchmark (small append sections: only the tail and replication count here)."""
    args = [
        "--repeat", "1", "--single", "100", "--batches", "1",
        "--tail", str(cfg["latency_messages"]),
        "--tail-interval-ms", str(cfg["latency_interval_ms"]),
        "--repl-blocks", str(cfg["catchup_messages"]),
        "--big-mib", str(max(1, cfg["file_size"] >> 20)),
    ]  # fmt: skip
    return run_hypercore_bench(tmp, args, log)


# ---------------------------------------------------------------------------- report
def div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def build_rows(k: dict, h: dict | None) -> list[dict[str, Any]]:
    rows = []

    def add(metric, kv, hv, ratio, target, met, unit):
        rows.append(
            {
                "metric": metric,
                "kachery": kv,
                "hypercore": hv,
                "ratio": ratio,
                "target": target,
                "met": met,
                "unit": unit,
            }
        )

    lat = k.get("latency")
    if lat:
        for p, key in (("p50", "p50_ms"), ("p99", "p99_ms")):
            hv = h and h.get(f"tail_event_{p}_ms")
            add(
                f"live latency {p} (A append -> B follower)",
                lat[key],
                hv,
                div(lat[key], hv),
                f"<= {TARGETS['latency_' + key]:.0f} ms",
                lat[key] is not None and lat[key] <= TARGETS["latency_" + key],
                "ms",
            )
            rows[-1]["spread"] = lat.get("spread", {}).get(key)
    cu = k.get("catchup")
    if cu:
        hv = cu.get("hypercore_per_s", h and h.get("repl_small_blocks_per_s"))
        r = div(cu["msgs_per_s"], hv)
        sp = cu.get("spread", {})
        worst = sp["ratio"][0] if sp.get("ratio") else r  # the target holds in every round
        add(
            f"catch-up {cu['messages'] // 1000}k x 256 B, msgs/s",
            cu["msgs_per_s"],
            hv,
            r,
            f">= {TARGETS['catchup_vs_hypercore']:.0f}x hypercore",
            None if worst is None else worst >= TARGETS["catchup_vs_hypercore"],
            "rate",
        )
        rows[-1].update(spread=sp.get("msgs_per_s"), hypercore_spread=sp.get("hypercore_per_s"),
                        ratio_spread=sp.get("ratio"))
        first = cu["phases_s"].get("first_message_at_c")
        firsts = sp.get("first_message_s")
        add(
            "catch-up: first message at the fresh node, s",
            first,
            None,
            None,
            f"<= {TARGETS['catchup_first_message_s']:.2f} s",
            None if first is None else (firsts[2] if firsts else first) <= TARGETS["catchup_first_message_s"],
            "s",
        )
        rows[-1]["spread"] = firsts
    fi = k.get("file")
    if fi:
        hv = fi.get("hypercore_mb_per_s", h and h.get("repl_big_mb_per_s"))
        r = div(fi["mb_per_s"], hv)
        sp = fi.get("spread", {})
        ratios = sp.get("ratio") or ([r, r, r] if r is not None else None)
        add(
            f"file {fi['bytes'] / 2**20:.0f} MiB A -> B, MB/s",
            fi["mb_per_s"],
            hv,
            r,
            f">= {TARGETS['file_vs_hypercore_median']:g}x hypercore (64 KiB blocks), "
            f">= {TARGETS['file_vs_hypercore']:g}x every round",
            None if ratios is None else (ratios[1] >= TARGETS["file_vs_hypercore_median"]
                                         and ratios[0] >= TARGETS["file_vs_hypercore"]),
            "mbps",
        )
        rows[-1].update(spread=sp.get("mb_per_s"), hypercore_spread=sp.get("hypercore_mb_per_s"),
                        ratio_spread=sp.get("ratio"))
    mem = k.get("memory")
    if mem:
        add(
            f"daemon peak RSS, catching up {mem['messages'] // 1000}k msgs",
            mem["peak_rss_mb"],
            None,
            None,
            f"<= {TARGETS['peak_rss_mb']:.0f} MB",
            mem["peak_rss_mb"] <= TARGETS["peak_rss_mb"],
            "mb",
        )
        add(
            f"serving daemon peak RSS, {mem['messages'] // 1000}k msgs to a fresh node",
            mem["serving_peak_rss_mb"],
            None,
            None,
            f"<= {TARGETS['peak_rss_mb']:.0f} MB",
            mem["serving_peak_rss_mb"] <= TARGETS["peak_rss_mb"],
            "mb",
        )
    return rows


def fmt(x: float | None, unit: str) -> str:
    if x is None:
        return "-"
    if unit == "ms":
        return f"{x:.2f} ms"
    if unit == "rate":
        return f"{x / 1000:.1f}k/s" if x >= 1000 else f"{x:.0f}/s"
    if unit == "mbps":
        return f"{x:.0f} MB/s"
    if unit == "mb":
        return f"{x:.1f} MB"
    if unit == "s":
        return f"{x:.2f} s"
    if unit == "x":
        return f"{x:.2f}x"
    return f"{x:.3g}"


def fmt_spread(spread: list[float], unit: str) -> str:
    """min / median / max over rounds."""
    suffix = {"ms": " ms", "s": " s"}.get(unit, "")
    return " / ".join(fmt(x, unit).removesuffix(suffix) for x in spread) + suffix


def render(result: dict) -> str:
    k, h, m = result["kachery"], result.get("hypercore"), result["machine"]
    out = [
        f"kachery network vs hypercore — {result['date']} — {m['cpu']} x{m['cpus']}, Python {m['python']}"
        + (f", hypercore {h['hypercore_version']} on node {h['node_version']}" if h else ", no hypercore")
        + (" — QUICK (sizes not comparable)" if result["quick"] else ""),
        "",
        table(
            ["metric", "kachery", "hypercore", "ratio", "target", "met?"],
            [
                [
                    r["metric"],
                    fmt_spread(r["spread"], r["unit"]) if r.get("spread") else fmt(r["kachery"], r["unit"]),
                    fmt_spread(r["hypercore_spread"], r["unit"]) if r.get("hypercore_spread")
                    else fmt(r["hypercore"], r["unit"]),
                    fmt_spread(r["ratio_spread"], "x") if r.get("ratio_spread")
                    else "-" if r["ratio"] is None else f"{r['ratio']:.2f}x",
                    r["target"],
                    {True: "yes", False: "NO", None: "-"}[r["met"]],
                ]
                for r in result["rows"]
            ],
        ),
        "",
        f"kachery_node at {result['commit']}; load average at start {result['loadavg_start'][0]:.2f}, "
        f"at end {result['loadavg_end'][0]:.2f} (1 min; 2 cores: above ~1 other jobs were competing)",
        "kachery: real hub + daemons, cross-process, loopback; hypercore: in-process stream pair "
        "(no network, no relay), same disk. ratio = kachery / hypercore.",
    ]
    lat = k.get("latency")
    if lat:
        if lat.get("spread"):
            out.append(f"latency: min / median / max over {len(lat['rounds'])} rounds (load average "
                       + ", ".join(f"{r['loadavg']:.2f}" for r in lat["rounds"]) + " at their starts)")
        hop = lat.get("hop")
        if hop:
            out.append(
                "latency: one pub-sub hop in the same run (publisher -> server -> subscriber, one "
                f"client process, one message in flight, {hop['samples']:.0f} per round), median of the "
                f"rounds' p50 / p99: hub relay {hop['relay_p50_us']:.0f} / {hop['relay_p99_us']:.0f} µs, "
                f"nats-server {hop['nats_p50_us']:.0f} / {hop['nats_p99_us']:.0f} µs"
                if hop.get("nats_p50_us") is not None else
                f"latency: one hub-relay hop in the same run: p50 {hop['relay_p50_us']:.0f} / p99 "
                f"{hop['relay_p99_us']:.0f} µs (nats-server: {hop.get('nats_error', 'not run')})"
            )
        cpu = lat.get("cpu_us_per_message")
        if cpu:
            out.append("latency: CPU per message (µs, all threads, median of the rounds; the hub and "
                       "daemons include their background work): "
                       + ", ".join(f"{name} {us:.0f}" for name, us in cpu.items())
                       + f"; total {sum(cpu.values()):.0f}")
            per_push = lat["cpu_us_per_relay_message"]
            out.append(f"latency: the relay took in {lat['relay_messages']:.0f} messages a round (pushes, "
                       "and a few renewals and checkpoints); CPU per relay message (µs): "
                       + ", ".join(f"{name} {us:.0f}" for name, us in per_push.items())
                       + f"; total {sum(per_push.values()):.0f}")
        out.append(
            f"latency: {lat['received']}/{lat['messages']} messages every {lat['interval_ms']:g} ms; "
            f"p90 {lat['p90_ms']:.2f} ms, max {lat['max_ms']:.2f} ms; the writer's own append "
            f"p50 {lat['writer_append_p50_ms']:.2f} / p99 {lat['writer_append_p99_ms']:.2f} ms"
            + (
                f"; hypercore replica core.get p50 {h['tail_get_p50_ms']:.2f} / p99 "
                f"{h['tail_get_p99_ms']:.2f} ms"
                if h and h.get("tail_get_p50_ms") is not None
                else ""
            )
        )
    cu = k.get("catchup")
    if cu and cu.get("spread"):
        out.append(
            f"catch-up: min / median / max over {len(cu['rounds'])} rounds"
            + (", each with its own hypercore replication run just before it (the ratio is each "
               "round's own)" if h else "") + "; load average "
            + ", ".join(f"{r['loadavg']:.2f}" for r in cu["rounds"]) + " at their starts; per round: "
            + "; ".join(f"{r['msgs_per_s'] / 1000:.1f}k/s"
                        + ("" if r["ratio"] is None else f" = {r['ratio']:.2f}x") for r in cu["rounds"])
            + ". The lines below are the median round's."
        )
    if cu:
        out.append(
            f"catch-up: {cu['seconds']:.2f} s from the follow request (includes A's bucket upload); "
            f"A appended them at {cu['append_on_a_per_s'] / 1000:.0f}k/s"
            + (f"; hypercore {h['repl_small_mb_per_s']:.2f} MB/s of blocks" if h else "")
        )
        ph = cu["phases_s"]

        def at(key: str) -> str:
            return "?" if ph.get(key) is None else f"{ph[key]:.2f} s"

        out.append(
            f"  phases from the follow request: bucket got its first segment at {at('first_segment')}, its "
            f"last at {at('last_segment')}, the head at {at('head')}; first message in C's store "
            f"at {at('first_message_at_c')}; all at {cu['seconds']:.2f} s. A second fresh node with "
            f"the bucket already filled: {cu['warm_bucket_seconds']:.2f} s "
            f"({cu['warm_bucket_msgs_per_s'] / 1000:.1f}k msgs/s, download + verify + import only)"
        )
        out.append("  CPU seconds during the catch-up: " + cpu_text(cu["cpu_s"], cu["seconds"]))
        if cu.get("cpu_s_to_witnessed") and ph.get("witnessed") is not None:
            out.append(f"  the hub had witnessed all of it at {at('witnessed')}; CPU seconds until then: "
                       + cpu_text(cu["cpu_s_to_witnessed"], ph["witnessed"]))
    fi = k.get("file")
    if fi and fi.get("spread"):
        out.append(
            f"file: min / median / max over {len(fi['rounds'])} rounds, each with the disk's write + "
            "fsync" + (" and hypercore's replication" if h else "") + " measured just before it; load "
            "average " + ", ".join(f"{r['loadavg']:.2f}" for r in fi["rounds"]) + " at their starts; "
            "per round: " + "; ".join(
                f"{r['mb_per_s']:.0f} MB/s"
                + ("" if r["ratio"] is None
                   else f" = {r['ratio']:.2f}x (hypercore {r['hypercore_mb_per_s']:.0f})")
                + f", disk {r['disk_write_mb_per_s']:.0f}" for r in fi["rounds"])
            + ". The lines below are the median round's."
        )
    if fi:
        out.append(
            f"file: {fi['seconds']:.2f} s for the transfer (provider upload to the bucket + download + "
            f"SHA-1 verify); storing it on A took {fi['store_on_a_seconds']:.2f} s (not counted)"
            + (
                f"; hypercore replicated {h['repl_big_blocks'] * 64 // 1024} MiB of 64 KiB blocks"
                if h
                else ""
            )
        )
        if fi.get("all_chunks_at_s") is not None:
            out.append(
                f"  phases: first bytes at B at {fi['first_bytes_at_s']:.2f} s, every byte received "
                f"at {fi['all_chunks_at_s']:.2f} s, then the last chunks verified, the whole-file hash "
                f"finished and the file moved into place in {fi['seconds'] - fi['all_chunks_at_s']:.2f} s"
            )
        out.append("  CPU seconds during the transfer: " + cpu_text(fi["cpu_s"], fi["seconds"]))
        out.append(
            f"  disk: writing {min(fi['bytes'], 1 << 30) / 2**20:.0f} MiB + fsync runs at "
            f"{fi['disk_write_mb_per_s']:.0f} MB/s here; the transfer writes the bytes twice "
            "(the hub's bucket, then B's file in place)"
        )
    mem = k.get("memory")
    if mem:
        out.append(
            f"memory: serving daemon A's RSS {mem['serving_baseline_rss_mb']:.1f} MB before the follow, "
            f"peak {mem['serving_peak_rss_mb']:.1f} MB, VmHWM {mem['serving_vm_hwm_mb']:.1f} MB "
            "(VmHWM covers A's whole life, earlier stages included)\n"
            f"memory: daemon RSS {mem['baseline_rss_mb']:.1f} MB before the follow, peak "
            f"{mem['peak_rss_mb']:.1f} MB ({mem['samples']} samples), VmHWM {mem['vm_hwm_mb']:.1f} MB; "
            f"caught up {mem['messages']} msgs in {mem['catchup_seconds']:.1f} s "
            f"({mem['catchup_msgs_per_s'] / 1000:.1f}k/s)"
        )
    return "\n".join(out)


def cpu_text(cpu: dict[str, float], wall: float) -> str:
    parts = [f"{name} {secs:.2f}" for name, secs in cpu.items()]
    total = sum(cpu.values())
    return (
        ", ".join(parts) + f"; total {total:.2f} CPU-s in {wall:.2f} s wall ({total / wall:.2f} of 2 cores)"
    )


def git_commit() -> str:
    try:
        r = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                           capture_output=True, text=True, timeout=10)  # fmt: skip
        return r.stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(float(text.rstrip("KMG")) * mult)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test, < 60 s)")
    ap.add_argument("--no-hypercore", action="store_true", help="skip the Node.js hypercore side")
    ap.add_argument("--file-size", type=parse_size, help="file size, e.g. 256M or 1G (default 1G; quick 32M)")
    ap.add_argument("--json", metavar="PATH", help="also write all results as JSON")
    ap.add_argument("--tmp", metavar="DIR", help="parent folder for the temporary network")
    ap.add_argument("--only", help="comma-separated subset of: latency,catchup,file,memory")
    ap.add_argument(
        "--profile", metavar="DIR", help="run the hub and daemons under cProfile, write DIR/*.prof"
    )
    ap.add_argument(
        "--py-spy", metavar="DIR", help="sample the hub and daemons with py-spy (all threads), DIR/*.txt"
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    ap.add_argument("--loop-stalls", metavar="MS", type=float,
                    help="record the hub's and daemons' event-loop steps over MS ms (CPU or wall; "
                         "kachery_node/loop_stalls.py) and list those of the latency rounds")
    ap.add_argument("--rounds", type=int, default=3,
                    help="live-latency, catch-up and file rounds (min / median / max are printed; default 3)")
    ap.add_argument("--hop-samples", type=int, default=300,
                    help="messages per round for the relay and NATS hops (0: skip them)")
    args = ap.parse_args()
    cfg = dict(QUICK if args.quick else FULL)
    if args.file_size:
        cfg["file_size"] = args.file_size
    only = set((args.only or "latency,catchup,file,memory").split(","))
    profile_dir = Path(args.profile).resolve() if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="kachery-netbench-", dir=args.tmp))
    result: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "config": cfg,
        "machine": machine_info(),
        "hypercore": None,
        "loadavg_start": os.getloadavg(),
        "commit": git_commit(),
    }
    k: dict[str, Any] = {}
    result["kachery"] = k
    lab = None
    stalls_path = tmp / "loop-stalls.jsonl"
    if args.loop_stalls:  # the hub and the daemons inherit this process's environment
        os.environ["KACHERY_LOOP_STALLS"] = str(args.loop_stalls)
        os.environ["KACHERY_LOOP_STALLS_FILE"] = str(stalls_path)
    try:
        if not args.no_hypercore:
            log("hypercore (node): tail latency, replication of small and 64 KiB blocks")
            result["hypercore"] = run_hypercore(tmp, cfg, args.quick)
        log("starting a hub and nodes A (owner, provides) and B (follows, fetches)")
        t_network = time.perf_counter()
        pyspy = None
        if args.py_spy:
            exe = os.environ.get("PY_SPY") or shutil.which("py-spy")
            if not exe:
                raise SystemExit("--py-spy: py-spy not found (pip install py-spy, or set PY_SPY)")
            Path(args.py_spy).mkdir(parents=True, exist_ok=True)
            pyspy = PySpy(exe, Path(args.py_spy).resolve())
        lab = Lab(tmp / "net", profile_dir=profile_dir, pyspy=pyspy)
        a = lab.add_node("A", ALL_ROLES)
        b = lab.add_node("B", READER_ROLES)
        log(f"network up after {time.perf_counter() - t_network:.1f} s")
        if "latency" in only:
            log(f"live latency: {cfg['latency_messages']} messages every {cfg['latency_interval_ms']:g} ms")
            k["latency"] = latency_rounds(lab, a, b, cfg, max(1, args.rounds), args.hop_samples)
        if "catchup" in only:
            k["catchup"] = catchup_rounds(lab, a, cfg, max(1, args.rounds), tmp, result["hypercore"])
        if "file" in only:
            k["file"] = file_rounds(lab, a, b, cfg, max(1, args.rounds), tmp, result["hypercore"])
        if "memory" in only:
            k["memory"] = bench_memory(lab, a, cfg["memory_messages"], cfg["timeout"])
    except BaseException:
        if lab is not None:
            for node in lab.nodes.values():
                log(f"--- {node.label} daemon.log (tail) ---\n{node.log()[-2000:]}")
        raise
    finally:
        if lab is not None:
            lab.stop()
        if args.loop_stalls and k.get("latency"):
            windows = [r["window"] for r in k["latency"]["rounds"]]
            k["loop_stalls"] = loop_stalls_in(stalls_path, windows)
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    result["loadavg_end"] = os.getloadavg()
    result["rows"] = build_rows(k, result["hypercore"])
    result["seconds"] = time.perf_counter() - t_start
    print(render(result))
    if args.loop_stalls and "loop_stalls" in k:
        print("\n" + loop_stalls_text(k["loop_stalls"], args.loop_stalls))
    print(f"\n(total {result['seconds']:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("_writer", "_follower"):
        globals()[sys.argv[1]](*sys.argv[2:])
    else:
        main()

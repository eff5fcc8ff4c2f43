"""Cost as channels grow (issue 15 item 5): one subfeed followed by N lightweight subscribers.

For each pub-sub backend (the hub's embedded relay; NATS through a real nats-server) and each N
(default 10, 50, 200), a fresh network of real processes:

* a hub (``kachery hub serve``) and, for NATS, a nats-server trusting the channel's account;
* the owner A: a real daemon (``kachery node start``) with all roles, owning one subfeed;
* a writer: this process appends to A's store (``kachery_feeds``, as a script on A would), one
  message every ``--interval`` seconds; A's daemon sees the store change and pushes each message
  inline (``newSubfeedMessages`` on the provide-feeds band), through its real push path;
* N lightweight subscribers (lightnodes.py): real node identities registered, requesting
  request-feeds and granted by the owner through the hub, each with its own pub-sub connection
  made by the project's client with its own hub-minted credentials, subscribed to the band a
  follower daemon hears (provide-feeds), each publishing its signed ``subscribeToSubfeed`` (and
  renewing it every 20 s) as a follower daemon does. They live in ``--procs`` worker processes
  (this script's ``_subscribers`` mode), not in N daemons; they do not verify or store the
  messages (a daemon would), they stamp the arrival time and find the message's ``seq``.

Per round (``--messages`` appends), for each appended message: the delivery latency from the
append (writer's wall clock) to its arrival at the first and at the last of the N subscribers;
p50 and p99 over the round's messages. Per appended message: CPU of the owner's daemon and of the
hub (and of nats-server), messages and payload bytes in and out of the pub-sub service (the
relay's per-channel traffic counters, or nats-server's ``/varz``; subscriptions, renewals and
``subfeedUploaded`` included, framing not). The hub's (and nats-server's) RSS after the round.
Each figure is printed as min / median / max over ``--rounds`` rounds, then the growth law
between the smallest and the largest N (exponent k of cost ~ N^k, from the medians).

The last subscriber's latency includes the subscriber processes' own work (N WebSocket or NATS
clients in ``--procs`` Python processes on the same cores): it is an upper bound of what the
service adds.

    .venv/bin/python bench/network/bench_fanout.py [--sizes 10,50,200] [--backends embedded,nats]
        [--rounds 3] [--messages 60] [--interval 0.1] [--procs 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
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

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from lightnodes import Network, WorkerProcesses, cpu_s, wait_for  # noqa: E402

CHANNEL = "bench.fanout"
RENEW_S = 20.0  # a follower daemon renews its subscription this often (spec/node-protocol.md)
SEQ = re.compile(rb'"seq":(\d+)')


def log(msg: str) -> None:
    print(f"[fanout] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# ----------------------------------------------------------------------------- subscriber workers
def subscribers_main() -> None:
    """Worker mode: read a JSON job on stdin's first line, connect and subscribe every node, print
    ``ready``; then on each ``report`` line print the arrivals since the last report as JSON, and
    exit on ``stop``."""
    import trio

    job = json.loads(sys.stdin.readline())
    trio.run(_subscribers, job)


async def _subscribers(job: dict) -> None:
    import trio

    from kachery_node.identity import Keypair
    from kachery_node.protocol.feed_messages import SubscribeToSubfeed
    from kachery_node.protocol.node_messages import seal
    from kachery_node.protocol.roles import band_name, heard_pubsub_band, pubsub_band
    from kachery_node.transport.pubsub.open_pubsub import open_pubsub

    channel = job["channel"]
    rng = random.Random(job["seed"])
    hear = band_name(channel, heard_pubsub_band("request-feeds"))  # the provide-feeds band
    ask = band_name(channel, pubsub_band("request-feeds"))
    arrivals: list[tuple[int, int, float]] = []  # (subscriber, seq, wall time)
    positions = [job["position"]] * len(job["nodes"])
    connected = [0]
    all_connected = trio.Event()

    async def subscriber(i: int, node: dict) -> None:
        key = Keypair.from_seed_hex(node["seed_hex"])
        async with open_pubsub(node["credentials"]) as ps:
            await ps.subscribe(hear)

            async def renew() -> None:
                # Independent daemons renew at independent times: the first renewal comes at a
                # random point of the first period (with --renew off, only the subscription).
                delay = rng.uniform(0, RENEW_S)
                renewal = False
                while True:
                    body = SubscribeToSubfeed(job["feed_id"], job["subfeed_hash"], positions[i]).to_body()
                    if renewal:  # as a follower daemon says of a plain renewal (set as a field,
                        body["renewal"] = True  # so that older revisions run this too)
                    renewal = True
                    data = seal(key, channel=channel, band="request-feeds", body=body,
                                now_ms=int(time.time() * 1000))
                    await ps.publish(ask, data)
                    if not job["renew"]:
                        return
                    await trio.sleep(delay)
                    delay = RENEW_S

            async with trio.open_nursery() as nursery:
                nursery.start_soon(renew)
                connected[0] += 1
                if connected[0] == len(job["nodes"]):
                    all_connected.set()
                async for msg in ps.messages():
                    t = time.time()
                    for m in SEQ.finditer(msg.data):
                        seq = int(m.group(1))
                        arrivals.append((i, seq, t))
                        positions[i] = max(positions[i], seq + 1 + job["position"])

    async with trio.open_nursery() as nursery:
        for i, node in enumerate(job["nodes"]):
            nursery.start_soon(subscriber, i, node)
        with trio.fail_after(120):
            await all_connected.wait()
        print("ready", flush=True)
        while True:
            line = (await trio.to_thread.run_sync(sys.stdin.readline)).strip()
            if line == "report":
                out, arrivals[:] = list(arrivals), []
                print(json.dumps(out), flush=True)
            else:
                break
        nursery.cancel_scope.cancel()


class Workers(WorkerProcesses):
    """The subscriber workers."""

    def __init__(self, jobs: list[dict]) -> None:
        super().__init__(__file__, "_subscribers", jobs, stop_line="stop", stop_timeout=20)

    def report(self) -> list[tuple[int, int, float]]:
        """Every (subscriber, seq, arrival) since the last report, subscribers numbered apart
        per worker."""
        answers = self.ask(["report"] * len(self.procs))
        return [(w * 100_000 + i, seq, t) for w, got in enumerate(answers) for i, seq, t in got]


# ----------------------------------------------------------------------------- one size
def measure(backend: str, n: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import kachery_feeds as kf

    net = Network(tmp / f"{backend}-{n}", CHANNEL, backend)
    workers = None
    try:
        t0 = time.monotonic()
        nodes = net.add_light_nodes(n, ["request-feeds"], label="sub")
        log(f"{backend} N={n}: {n} nodes registered and granted in {time.monotonic() - t0:.1f} s")
        a = net.owner
        assert a is not None
        a.start()
        a.wait_connected()
        store = kf.open_store(a.storage_dir / "feeds.db")
        sf = store.create_feed().load_subfeed("live")
        sf.append_message({"start": True})
        per_proc = -(-n // args.procs)
        jobs = [{"channel": CHANNEL, "feed_id": sf.feed_id, "subfeed_hash": sf.subfeed_hash,
                 "position": 1, "renew": args.renew == "staggered", "seed": k,
                 "nodes": [x.to_json() for x in nodes[k:k + per_proc]]}
                for k in range(0, n, per_proc)]
        workers = Workers(jobs)
        log(f"{backend} N={n}: subscribers connected; settling 2 s")
        time.sleep(2)
        workers.report()  # nothing expected; drop whatever came
        pids = net.pids()
        spy = None
        if args.py_spy:
            out = Path(args.py_spy).resolve()
            out.mkdir(parents=True, exist_ok=True)
            spy = subprocess.Popen([os.environ.get("PY_SPY") or shutil.which("py-spy") or "py-spy", "record",
                                    "--pid", str(pids["hub"]), "--format", "raw", "--rate", "200",
                                    "--output", str(out / f"hub-{backend}-{n}.txt")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seq = 0
        rounds = []
        for r in range(args.rounds):
            cpu0 = {k: cpu_s(p) for k, p in pids.items()}
            wire0 = net.wire_counters()
            appended: dict[int, float] = {}
            for _ in range(args.messages):
                appended[seq] = time.time()
                sf.append_message({"seq": seq, "t": appended[seq], "note": "x" * 64})
                seq += 1
                time.sleep(args.interval)
            want = n * len(appended)
            got: list[tuple[int, int, float]] = []

            def complete(got: list = got, want: int = want) -> bool:
                got.extend(workers.report())
                return len(got) >= want

            try:
                wait_for(complete, 30 + n * 0.1, f"{want} deliveries", poll=0.2)
            except RuntimeError:
                log(f"{backend} N={n} round {r + 1}: only {len(got)} of {want} deliveries")
            time.sleep(1.0)  # the debounced bucket update after the last append belongs to the round
            got.extend(workers.report())
            cpu1 = {k: cpu_s(p) for k, p in pids.items()}
            wire1 = net.wire_counters()
            first: dict[int, float] = {}
            last: dict[int, float] = {}
            for _sub, s, t in got:
                if s in appended:
                    first[s] = min(first.get(s, t), t)
                    last[s] = max(last.get(s, t), t)
            lat_first = [(first[s] - appended[s]) * 1000 for s in first]
            lat_last = [(last[s] - appended[s]) * 1000 for s in last]
            m = len(appended)
            row = {
                "latency first p50 (ms)": pct(lat_first, 0.5),
                "latency first p99 (ms)": pct(lat_first, 0.99),
                "latency last p50 (ms)": pct(lat_last, 0.5),
                "latency last p99 (ms)": pct(lat_last, 0.99),
            }
            for k in pids:
                row[f"CPU ms/msg {k}"] = (cpu1[k] - cpu0[k]) * 1000 / m
            row["wire msgs in/msg"] = (wire1["messages_in"] - wire0["messages_in"]) / m
            row["wire msgs out/msg"] = (wire1["messages_out"] - wire0["messages_out"]) / m
            row["wire bytes out/msg"] = (wire1["bytes_out"] - wire0["bytes_out"]) / m
            row["RSS MB hub"] = psutil.Process(pids["hub"]).memory_info().rss / 2**20
            if "nats-server" in pids:
                row["RSS MB nats-server"] = psutil.Process(pids["nats-server"]).memory_info().rss / 2**20
            unique = {(sub, s) for sub, s, _t in got if s in appended}
            row["deliveries missing"] = want - len(unique)
            row["deliveries repeated"] = sum(1 for _sub, s, _t in got if s in appended) - len(unique)
            rounds.append(row)
            log(f"{backend} N={n} round {r + 1}/{args.rounds}: "
                + ", ".join(f"{k} {v:.3g}" for k, v in row.items()))
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=30)
        return {"backend": backend, "n": n, "rounds": rounds, "loadavg": os.getloadavg()}
    finally:
        if workers is not None:
            workers.stop()
        net.stop()


def growth_exponent(ns: list[int], values: list[float]) -> str:
    import math

    if len(ns) < 2 or values[0] <= 0 or values[-1] <= 0:
        return "-"
    k = math.log(values[-1] / values[0]) / math.log(ns[-1] / ns[0])
    law = "O(1)" if abs(k) < 0.25 else "O(N)" if 0.75 <= k <= 1.25 else f"~N^{k:.2f}"
    return f"{k:.2f} ({law})"


def print_table(backend: str, results: list[dict]) -> None:
    keys = [k for k in results[0]["rounds"][0]]
    print(f"\n### {backend}\n")
    print("| per appended message | " + " | ".join(f"N = {r['n']}" for r in results) + " | growth ~ N^k |")
    print("|---|" + "---|" * len(results) + "---|")
    for key in keys:
        cells, medians = [], []
        for r in results:
            values = [row[key] for row in r["rounds"]]
            lo, mid, hi = min(values), statistics.median(values), max(values)
            medians.append(mid)
            fmt = (lambda v: f"{v:,.0f}") if max(values) >= 100 else (lambda v: f"{v:.3g}")
            cells.append(f"{fmt(lo)} / **{fmt(mid)}** / {fmt(hi)}")
        k = growth_exponent([r["n"] for r in results], medians) if not key.startswith("deliveries") else ""
        print(f"| {key} | " + " | ".join(cells) + f" | {k} |")
    print("| load average (1 min) at end | " + " | ".join(f"{r['loadavg'][0]:.1f}" for r in results) + " | |")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_subscribers":
        subscribers_main()
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,50,200")
    ap.add_argument("--backends", default="embedded,nats")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--messages", type=int, default=60, help="appends per round")
    ap.add_argument("--interval", type=float, default=0.1, help="seconds between appends")
    ap.add_argument("--procs", type=int, default=2, help="subscriber worker processes")
    ap.add_argument("--renew", choices=["staggered", "off"], default="staggered",
                    help="subscribers renew every 20 s, each first at a random time (staggered), or "
                         "subscribe once (off: the push path alone; the rounds must end within the "
                         "provider's 60 s subscription)")
    ap.add_argument("--py-spy", metavar="DIR", help="record the hub's CPU samples during the rounds "
                    "(py-spy from PATH or $PY_SPY), DIR/hub-<backend>-<N>.txt")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--tmp", metavar="DIR")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="kachery-fanout-", dir=args.tmp))
    load0 = os.getloadavg()
    all_results: dict[str, list[dict]] = {}
    try:
        for backend in args.backends.split(","):
            for n in sizes:
                try:
                    all_results.setdefault(backend, []).append(measure(backend, n, args, tmp))
                except Exception as exc:
                    log(f"{backend} N={n} failed: {type(exc).__name__}: {str(exc)[:500]}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nOne subfeed, N lightweight subscribers (renewals {args.renew}); {args.rounds} rounds of "
          f"{args.messages} appends {args.interval:g} s apart (min / **median** / max); load average "
          f"at start {load0[0]:.1f}, at end {os.getloadavg()[0]:.1f} (2 cores)")
    for backend, results in all_results.items():
        if results:
            print_table(backend, results)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": all_results, "loadavg_start": load0}, indent=2))


if __name__ == "__main__":
    main()

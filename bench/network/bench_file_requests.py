"""Cost as channels grow (issue 15 item 5): N nodes requesting files from one provider.

For each N (default 10, 50, 100), a fresh network of real processes: a hub (``kachery hub
serve``: relay and bucket) and the owner A, a real daemon (``kachery node start``) with all
roles, the only provider. Each round A stores new files (``--small`` files of ``--small-mb`` MB
and one of ``--big-mb`` MB, random bytes, stored in A's storage as ``kachery store`` does), and
the N requesting nodes ask for them at once:

* node i asks for small file 0 (the file every node wants), small file 1 + i mod (small - 1),
  and, if i is a multiple of 10, the big file (which goes as a manifest and 20 MB chunks);
* each request is a real daemon's: the node is a :class:`~kachery_node.daemon.files_exchange
  .FileExchange` (the daemon's file code: bucket first, ``requestFile``, statuses, downloads
  hashed as written, the large-file chunk fetcher) over a :class:`~kachery_node.daemon
  .channel_runtime.ChannelRuntime` (the daemon's channel code: verified membership, its own
  pub-sub connection with its own hub-minted credentials, signed envelopes, the bucket), with
  its own node key (registered, requesting request-files, granted by the owner through the
  hub: lightnodes.py) and its own storage directory. What is not real: ``--procs`` worker
  processes hold the N nodes (a node is not a daemon process with its local HTTP API), and
  every node's fetches start together (``FileExchange.fetch``, as ``kn.load_file`` asks a
  daemon).

Per round: the time from the requests until every node holds every file it asked for (and the
median fetch); CPU of A's daemon and of the hub; bytes the nodes downloaded and the hub read
from its object files (its ``read_chars``); bucket uploads (the hub's ``bucket stored`` log
lines: each distinct object should be uploaded once, however many ask); pub-sub messages in
(``requestFile`` and statuses) and out (deliveries) per request, from the relay's traffic
counters. Each figure is printed as min / median / max over ``--rounds`` rounds, then the
growth law between the smallest and the largest N (exponent k of cost ~ N^k, from the medians).

    .venv/bin/python bench/network/bench_file_requests.py [--sizes 10,50,100] [--rounds 3]
        [--small 20] [--small-mb 1] [--big-mb 50] [--procs 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_fanout import growth_exponent  # noqa: E402
from lightnodes import Network, WorkerProcesses, cpu_s  # noqa: E402

CHANNEL = "bench.files"
STORED = re.compile(r"bucket stored (\S+) \((\d+) bytes\)")


def log(msg: str) -> None:
    print(f"[files] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- requester workers
def requesters_main() -> None:
    """Worker mode: a JSON job on stdin's first line (channel entry, nodes); start each node's
    FileExchange and ChannelRuntime, print ``ready`` once all are connected; then for each line
    ``{"fetch": [[uri, ...] per node]}`` fetch them all at once and print the results as JSON;
    exit on an empty line."""
    import trio

    job = json.loads(sys.stdin.readline())
    trio.run(_requesters, job)


async def _requesters(job: dict) -> None:
    import trio

    import kachery_feeds as kf
    from kachery_node.daemon.channel_runtime import ChannelRuntime
    from kachery_node.daemon.files_exchange import FileExchange
    from kachery_node.identity import Keypair
    from kachery_node.storage.node_storage import Storage

    nodes = []
    trace = open(job["trace"], "a") if job.get("trace") else None  # noqa: SIM115

    def traced(k: int, fx: FileExchange):
        """fx.on_message, first writing when each status reached node ``k`` (and when it was sealed)."""
        async def on_message(link, band, env) -> None:
            if trace is not None:
                b = env.body
                trace.write(json.dumps({"node": k, "recv": time.time(), "sent": b.get("time_ms", 0) / 1000,
                                        "type": b.get("type"), "sha1": b.get("sha1"),
                                        "status": b.get("status")}) + "\n")
            await fx.on_message(link, band, env)
        return on_message

    async with trio.open_nursery() as nursery:
        for k, spec in enumerate(job["nodes"]):
            Path(spec["storage_dir"]).mkdir(parents=True, exist_ok=True)
            storage = Storage(spec["storage_dir"])
            fx = FileExchange(storage)
            await nursery.start(fx.run)
            runtime = ChannelRuntime(channel=job["channel"], entry=job["entry"],
                                     node_key=Keypair.from_seed_hex(spec["seed_hex"]),
                                     store=kf.open_store(Path(spec["storage_dir"]) / "feeds.db"),
                                     handlers={"files": traced(k, fx)})
            if trace is not None:
                publish = runtime.publish

                async def publish_traced(band, body, *, attachment=None, k=k, publish=publish):
                    trace.write(json.dumps({"node": k, "pub": time.time(), "type": body.get("type"),
                                            "sha1": body.get("sha1")}) + "\n")
                    await publish(band, body, attachment=attachment)
                runtime.publish = publish_traced  # type: ignore[method-assign]
            nursery.start_soon(runtime.run)
            nodes.append((fx, runtime))
        with trio.fail_after(120):
            for _fx, runtime in nodes:
                await runtime.connected.wait()
        print("ready", flush=True)
        while True:
            line = (await trio.to_thread.run_sync(sys.stdin.readline)).strip()
            if not line:
                break
            wanted = json.loads(line)["fetch"]
            results: list[dict] = []

            async def fetch(k: int, uri: str, results: list[dict] = results) -> None:
                fx, runtime = nodes[k]
                t0 = time.time()
                try:
                    path = await fx.fetch([runtime], uri)
                    results.append({"node": k, "uri": uri, "t0": t0, "t1": time.time(),
                                    "bytes": os.path.getsize(path)})
                except Exception as exc:
                    results.append({"node": k, "uri": uri, "t0": t0, "t1": time.time(),
                                    "error": f"{type(exc).__name__}: {str(exc)[:300]}"})

            with trio.move_on_after(600):
                async with trio.open_nursery() as fetches:
                    for k, uris in enumerate(wanted):
                        for uri in uris:
                            fetches.start_soon(fetch, k, uri)
            if trace is not None:
                trace.flush()
            print(json.dumps(results), flush=True)
        nursery.cancel_scope.cancel()


class Workers(WorkerProcesses):
    """The requester workers."""

    def __init__(self, jobs: list[dict]) -> None:
        super().__init__(__file__, "_requesters", jobs, stop_line="", stop_timeout=30)

    def fetch(self, wanted_per_proc: list[list[list[str]]]) -> list[dict]:
        """Each worker fetches its share at once; every fetch's result."""
        answers = self.ask([json.dumps({"fetch": wanted}) for wanted in wanted_per_proc])
        return [result for got in answers for result in got]


def hub_uploads(hub_log: Path, since: int) -> tuple[list[tuple[str, int]], int]:
    """``bucket stored`` lines of the hub's log after byte ``since``: (key, size) each, and the
    new end."""
    with open(hub_log, "rb") as f:
        f.seek(since)
        text = f.read().decode(errors="replace")
        end = f.tell()
    return [(m.group(1), int(m.group(2))) for m in STORED.finditer(text)], end


# ----------------------------------------------------------------------------- one size
def measure(n: int, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from kachery_node.joined_channels import load_memberships
    from kachery_node.storage.node_storage import Storage

    root = tmp / f"files-{n}"
    net = Network(root, CHANNEL, args.backend)
    workers = None
    try:
        t0 = time.monotonic()
        nodes = net.add_light_nodes(n, ["request-files"], label="req")
        log(f"N={n}: {n} nodes registered and granted in {time.monotonic() - t0:.1f} s")
        a = net.owner
        assert a is not None and net.hub is not None
        a.start()
        a.wait_connected()
        entry = load_memberships(a.storage_dir)[CHANNEL]
        per_proc = -(-n // args.procs)
        groups = [list(range(k, min(n, k + per_proc))) for k in range(0, n, per_proc)]
        jobs = [{"channel": CHANNEL, "entry": entry,
                 "trace": f"{args.trace}.{n}.{w}" if args.trace else None,
                 "nodes": [{"seed_hex": nodes[i].seed_hex, "storage_dir": str(root / f"req-{i}")}
                           for i in group]} for w, group in enumerate(groups)]
        workers = Workers(jobs)
        log(f"N={n}: requesters connected")
        storage = Storage(a.storage_dir)
        pids = net.pids()
        hub_log = net.hub.dir / "stderr.txt"
        _, log_pos = hub_uploads(hub_log, 0)
        rounds = []
        for r in range(args.rounds):
            small, big = [], None
            files_dir = root / f"files-{r}"
            files_dir.mkdir()
            for j in range(args.small + 1):
                size = int((args.big_mb if j == args.small else args.small_mb) * 1e6)
                path = files_dir / f"f{j}.bin"
                with open(path, "wb") as f:
                    f.write(os.urandom(size))
                uri = storage.store_file(path)
                if j == args.small:
                    big = uri
                else:
                    small.append(uri)
            assert big is not None
            wanted = []
            for i in range(n):
                mine = [small[0], small[1 + i % (args.small - 1)]]
                if i % 10 == 0:
                    mine.append(big)
                wanted.append(mine)
            requests = sum(len(w) for w in wanted)
            cpu0 = {k: cpu_s(p) for k, p in pids.items()}
            io0 = psutil.Process(pids["hub"]).io_counters()
            wire0 = net.wire_counters()
            t_start = time.time()
            results = workers.fetch([[wanted[i] for i in group] for group in groups])
            t_all = max(x["t1"] for x in results) - t_start
            time.sleep(1.0)  # let the last statuses and logs land
            cpu1 = {k: cpu_s(p) for k, p in pids.items()}
            io1 = psutil.Process(pids["hub"]).io_counters()
            wire1 = net.wire_counters()
            uploads, log_pos = hub_uploads(hub_log, log_pos)
            errors = [x for x in results if "error" in x]
            keys = [k for k, _size in uploads if "/sha1/" in k]
            row = {
                "all files at every node (s)": t_all,
                "median fetch (s)": statistics.median(x["t1"] - x["t0"] for x in results),
                "fetches failed": float(len(errors)),
                "CPU s owner daemon": cpu1["owner daemon"] - cpu0["owner daemon"],
                "CPU s hub": cpu1["hub"] - cpu0["hub"],
                "MB downloaded by nodes": sum(x.get("bytes", 0) for x in results) / 1e6,
                "MB read by hub": (io1.read_chars - io0.read_chars) / 1e6,
                "bucket uploads": float(len(keys)),
                "distinct objects uploaded": float(len(set(keys))),
                "MB uploaded": sum(s for k, s in uploads if "/sha1/" in k) / 1e6,
                "pub-sub msgs in/request": (wire1["messages_in"] - wire0["messages_in"]) / requests,
                "pub-sub msgs out/request": (wire1["messages_out"] - wire0["messages_out"]) / requests,
            }
            rounds.append(row)
            log(f"N={n} round {r + 1}/{args.rounds} ({requests} requests): "
                + ", ".join(f"{k} {v:.3g}" for k, v in row.items()))
            for e in errors[:3]:
                log(f"  failed: node {e['node']} {e['uri'][:60]}: {e['error']}")
            shutil.rmtree(files_dir, ignore_errors=True)
        return {"n": n, "rounds": rounds, "loadavg": os.getloadavg()}
    finally:
        if workers is not None:
            workers.stop()
        net.stop()


def print_table(results: list[dict]) -> None:
    keys = list(results[0]["rounds"][0])
    print("| per round | " + " | ".join(f"N = {r['n']}" for r in results) + " | growth ~ N^k |")
    print("|---|" + "---|" * len(results) + "---|")
    for key in keys:
        cells, medians = [], []
        for r in results:
            values = [row[key] for row in r["rounds"]]
            lo, mid, hi = min(values), statistics.median(values), max(values)
            medians.append(mid)
            fmt = (lambda v: f"{v:,.0f}") if max(values) >= 100 else (lambda v: f"{v:.3g}")
            cells.append(f"{fmt(lo)} / **{fmt(mid)}** / {fmt(hi)}")
        k = growth_exponent([r["n"] for r in results], medians) if key != "fetches failed" else ""
        print(f"| {key} | " + " | ".join(cells) + f" | {k} |")
    print("| load average (1 min) at end | " + " | ".join(f"{r['loadavg'][0]:.1f}" for r in results) + " | |")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_requesters":
        requesters_main()
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10,50,100")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--small", type=int, default=20, help="small files per round")
    ap.add_argument("--small-mb", type=float, default=1.0)
    ap.add_argument("--big-mb", type=float, default=50.0)
    ap.add_argument("--procs", type=int, default=2, help="requester worker processes")
    ap.add_argument("--backend", default="embedded", choices=["embedded", "nats"], help="pub-sub")
    ap.add_argument("--trace", metavar="PREFIX", help="write when each requestFile went out and each "
                    "status reached each node (and was sealed) to PREFIX.<N>.<worker>, JSON lines")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--tmp", metavar="DIR")
    ap.add_argument("--keep", action="store_true", help="keep the networks' directories (logs)")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="kachery-filereq-", dir=args.tmp))
    load0 = os.getloadavg()
    results = []
    try:
        for n in sizes:
            try:
                results.append(measure(n, args, tmp))
            except Exception as exc:
                log(f"N={n} failed: {type(exc).__name__}: {str(exc)[:800]}")
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nN nodes requesting files from one provider ({args.backend} pub-sub, embedded bucket); "
          f"{args.rounds} rounds of {args.small} x {args.small_mb:g} MB + 1 x {args.big_mb:g} MB new files "
          f"(min / **median** / max); load average at start {load0[0]:.1f}, at end "
          f"{os.getloadavg()[0]:.1f} (2 cores)\n")
    if results:
        print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "loadavg_start": load0}, indent=2))


if __name__ == "__main__":
    main()

"""Catching up on a published subfeed whose owner is offline: with no daemon, and with one
(issue 14).

Real processes on loopback (bench/network/netlab.py): a hub; owner A appends N messages
(256-byte payloads, batches of 1000), publishes the subfeed (``kachery feed publish``), waits
until the channel's bucket holds all of it, and stops its daemon. Then, each round, two fresh
nodes read it from the bucket alone:

* **no daemon**: a Python process runs ``kn.load_subfeed(uri)`` (bucket read over HTTP, segments
  4 ahead in threads, verified import); timed inside that process, from the call to its return
  (interpreter start-up not counted); its peak RSS (``VmHWM``) is printed too;
* **daemon**: the node's daemon is asked to follow the subfeed (``POST /api/feeds/follow``); timed
  from that request until the node's store holds all N messages (polled every 10 ms).

Usage::

    .venv/bin/python bench/network/published_catchup.py [--messages 100000] [--rounds 3]
        [--timeout 600] [--json out.json]

Prints min / median / max messages per second of each over the rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_common import log, machine_info, payload, table  # noqa: E402
from netlab import ALL_ROLES, Lab, Node  # noqa: E402

import kachery_feeds as kf  # noqa: E402
from kachery_node.hub.object_files import object_file  # noqa: E402
from kachery_node.protocol.bucket_layout import subfeed_head_path  # noqa: E402
from kachery_node.protocol.feed_bucket import parse_head  # noqa: E402

READER_ROLES = ["request-feeds"]

DAEMONLESS_READ = """
import json, time, sys
import kachery_node as kn
t0 = time.perf_counter()
sf = kn.load_subfeed(sys.argv[1])
seconds = time.perf_counter() - t0
hwm = next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM'))
print(json.dumps({"seconds": seconds, "count": sf.get_num_local_messages(), "vm_hwm_mb": hwm / 1024}))
"""


def reader_node(lab: Lab, label: str, start_daemon: bool) -> Node:
    node = Node(lab.root, label, lab.hub.url)
    lab.nodes[label] = node
    node.run("node", "join", lab.channel, "--roles", ",".join(READER_ROLES))
    lab.owner.run("channel", "grant", lab.channel, node.node_id, *READER_ROLES)
    if start_daemon:
        node.start()
        node.wait_connected()
    return node


def wait_bucket(lab: Lab, feed_id: str, subfeed_hash: str, n: int, timeout: float) -> float:
    head = object_file(lab.hub.dir / "bucket", subfeed_head_path(lab.channel, feed_id, subfeed_hash))
    t0 = time.monotonic()
    while True:
        if head.exists() and parse_head(head.read_bytes()).count == n:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"the bucket did not reach {n} messages within {timeout} s")
        time.sleep(0.05)


def daemonless_round(lab: Lab, label: str, uri: str, n: int, timeout: float) -> dict:
    node = reader_node(lab, label, start_daemon=False)
    r = subprocess.run([sys.executable, "-c", DAEMONLESS_READ, uri], env=node.env, capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"daemon-less read failed:\n{r.stderr[-3000:]}")
    out = json.loads(r.stdout)
    if out["count"] != n:
        raise RuntimeError(f"daemon-less read got {out['count']} of {n} messages")
    return {**out, "msgs_per_s": n / out["seconds"]}


def daemon_round(lab: Lab, label: str, uri: str, n: int, timeout: float) -> dict:
    node = reader_node(lab, label, start_daemon=True)
    replica = kf.open_store(node.storage_dir / "feeds.db").load_subfeed(uri)
    try:
        t0 = time.perf_counter()
        node.client.request("POST", "/api/feeds/follow", json_body={"uri": uri})
        while replica.get_num_local_messages() < n:
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"the daemon caught up {replica.get_num_local_messages()} of {n} "
                                   f"within {timeout} s")
            time.sleep(0.01)
        seconds = time.perf_counter() - t0
    finally:
        node.stop()
    return {"seconds": seconds, "msgs_per_s": n / seconds}


def spread(values: list[float]) -> str:
    return f"{min(values) / 1000:.1f}k / {statistics.median(values) / 1000:.1f}k / {max(values) / 1000:.1f}k"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600, help="seconds allowed for each step")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()
    n = args.messages
    with tempfile.TemporaryDirectory(prefix="kachery-bench-published-") as tmp:
        lab = Lab(Path(tmp))
        try:
            a = lab.add_node("A", ALL_ROLES)
            log(f"A appends {n} messages and publishes them")
            sf = kf.open_store(a.storage_dir / "feeds.db").create_feed().load_subfeed("published")
            for start in range(0, n, 1000):
                sf.append_messages([payload(i) for i in range(start, min(n, start + 1000))])
            a.run("feed", "publish", sf.uri, "--channel", lab.channel)
            upload_s = wait_bucket(lab, sf.feed_id, sf.subfeed_hash, n, args.timeout)
            a.stop()  # the owner goes offline: only the bucket has it
            log(f"bucket filled in {upload_s:.1f} s; owner offline")
            rounds = []
            for r in range(args.rounds):
                log(f"round {r + 1}: no daemon")
                nd = daemonless_round(lab, f"R{r}", sf.uri, n, args.timeout)
                log(f"round {r + 1}: daemon")
                d = daemon_round(lab, f"D{r}", sf.uri, n, args.timeout)
                rounds.append({"no_daemon": nd, "daemon": d})
                log(f"  no daemon {nd['msgs_per_s'] / 1000:.1f}k/s ({nd['seconds']:.2f} s, "
                    f"VmHWM {nd['vm_hwm_mb']:.0f} MB); daemon {d['msgs_per_s'] / 1000:.1f}k/s "
                    f"({d['seconds']:.2f} s)")
        finally:
            lab.stop()
    nd_rates = [r["no_daemon"]["msgs_per_s"] for r in rounds]
    d_rates = [r["daemon"]["msgs_per_s"] for r in rounds]
    hwm = [r["no_daemon"]["vm_hwm_mb"] for r in rounds]
    print(f"Catch-up of a published {n}-message subfeed, owner offline, {args.rounds} rounds "
          f"({machine_info()['cpu']}, {machine_info()['cpus']} CPUs); owner's upload {upload_s:.1f} s\n")
    print(table(["reader", "msgs/s min / median / max", "seconds (median)", "peak RSS"], [
        ["no daemon: kn.load_subfeed", spread(nd_rates),
         f"{statistics.median(r['no_daemon']['seconds'] for r in rounds):.2f}",
         f"{min(hwm):.0f}-{max(hwm):.0f} MB"],
        ["daemon: follow", spread(d_rates),
         f"{statistics.median(r['daemon']['seconds'] for r in rounds):.2f}", "-"],
    ]))
    if args.json:
        figures = {"messages": n, "upload_s": upload_s, "rounds": rounds}
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()

"""The cost of witnessing (issue 18): cosignatures per second, and the live latency a follower
sees when the owner requires 0, 1 or 3 witnesses.

    .venv/bin/python bench/witness/run.py [--rounds 40] [--cosigns 2000] [--tmp DIR]

1. **Witness core** (in process): one subfeed, one signed message appended and cosigned at a
   time (verify the line against the witness's copy, import it, sign, record): cosignatures/s.
2. **The hub** (a real `kachery hub serve`): the same through `POST /api/witness`, one request
   at a time and 4 at once, from a member node's key.
3. **Live latency**: a hub and daemons as processes (alice owns the feed and provides it, bob
   follows it, wit1 and wit2 are nodes that witness). For each requirement (0: none, 1: the hub,
   3: the hub and both nodes) a fresh subfeed: alice appends one message at a time and the time
   until bob's store holds it is measured (``--rounds`` per requirement). With a requirement
   the message waits in bob's gate until a checkpoint with enough cosignatures covers it: the
   provider's debounced head upload (0.5 s), the hub's cosignature, the nodes' cosignatures
   merged by the provider.

Bounded: a few minutes on a quiet machine. Prints tables; never fails on a figure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "network"))
sys.path.insert(0, str(HERE.parents[1]))

import nacl.signing  # noqa: E402
from netlab import ALL_ROLES, Lab, Node  # noqa: E402

import kachery_feeds as kf  # noqa: E402


def bench_core(tmp: Path, n: int) -> float:
    from kachery_node.storage.witness_state import Witness

    owner = kf.open_store(tmp / "core-owner.db").create_feed().load_subfeed("s")
    witness = Witness(tmp / "core-witness", nacl.signing.SigningKey.generate())
    lines = []
    for i in range(n):
        owner.append_message({"i": i})
        lines.append(owner.get_signed_messages(i, i + 1))
    t0 = time.perf_counter()
    for i, line in enumerate(lines):
        witness.cosign(owner.feed_id, owner.subfeed_hash, line, 1_800_000_000 + i)
    elapsed = time.perf_counter() - t0
    witness.close()
    return n / elapsed


def bench_hub(lab: Lab, node: Node, n: int, parallel: int) -> float:
    from kachery_node.identity import load_node_key
    from kachery_node.transport.hub_client import HubClient

    owner = kf.open_store(node.storage_dir / "bench-hub-feeds.db").create_feed().load_subfeed("s")
    per_thread = n // parallel
    subfeeds = [owner._store.load_feed(owner.feed_id).load_subfeed(f"s{t}") for t in range(parallel)]
    work = []
    for sf in subfeeds:
        lines = []
        for i in range(per_thread):
            sf.append_message({"i": i})
            lines.append([x.decode() for x in sf.get_signed_messages(i, i + 1)])
        work.append((sf, lines))
    key = load_node_key(node.storage_dir)

    def run(sf, lines):
        with HubClient(lab.hub.url, node_key=key) as hub:
            for i, line in enumerate(lines):
                hub.witness_request("cosign_checkpoint", channel=lab.channel, feed_id=sf.feed_id,
                                    subfeed_hash=sf.subfeed_hash,
                                    lines=line if i else [x.decode() for x in sf.get_signed_messages(0, 1)])

    threads = [threading.Thread(target=run, args=w) for w in work]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return per_thread * parallel / (time.perf_counter() - t0)


def _witness_node(lab: Lab, label: str) -> Node:
    node = Node(lab.root, label, lab.hub.url)
    lab.nodes[label] = node
    node.run("node", "join", lab.channel, "--roles", "request-feeds")
    lab.owner.run("channel", "grant", lab.channel, node.node_id, "request-feeds")
    node.run("node", "witness", "on")
    node.start()
    node.wait_connected()
    return node


def bench_latency(lab: Lab, alice: Node, bob: Node, required: int, rounds: int) -> list[float]:
    source = kf.open_store(alice.storage_dir / "feeds.db").create_feed().load_subfeed("live")
    source.append_message({"i": "first"})
    if required:
        alice.run("feed", "require-witnesses", source.uri, str(required))
    bob.client.request("POST", "/api/feeds/follow", json_body={"uri": source.uri})
    replica = kf.open_store(bob.storage_dir / "feeds.db").load_subfeed(source.uri)
    policy = kf.open_store(bob.storage_dir / "feeds.db").load_feed(source.feed_id).load_subfeed(
        "kachery.witness-policy")
    deadline = time.monotonic() + 60
    while replica.get_num_local_messages() < 1 or (required and policy.get_num_local_messages() < 1):
        if time.monotonic() > deadline:
            raise RuntimeError(f"bob did not catch up:\n{_logs(lab)}")
        time.sleep(0.01)
    latencies = []
    for i in range(rounds):
        n = replica.get_num_local_messages()
        t0 = time.monotonic()
        source.append_message({"live": i})
        while replica.get_num_local_messages() <= n:
            if time.monotonic() - t0 > 60:
                raise RuntimeError(f"message {i} not accepted in 60 s ({required} witnesses "
                                   f"required):\n{_logs(lab)}")
            time.sleep(0.001)
        latencies.append((time.monotonic() - t0) * 1000)
    return latencies


def _logs(lab: Lab) -> str:
    return "\n".join(f"===== {n.label}\n{n.log()[-2500:]}" for n in lab.nodes.values())


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--cosigns", type=int, default=2000)
    parser.add_argument("--tmp", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="kachery-witness-bench-") as d:
        tmp = Path(d)
        rate = bench_core(tmp, args.cosigns)
        print(f"witness core (in process, SQLite): {rate:,.0f} cosignatures/s ({args.cosigns} checkpoints)")
        lab = Lab(tmp / "net")
        try:
            alice = lab.add_node("alice", ALL_ROLES)
            bob = lab.add_node("bob", ["request-feeds", "request-files"])
            n_hub = max(4, args.cosigns // 4)
            for parallel in (1, 4):
                r = bench_hub(lab, alice, n_hub, parallel)
                print(f"hub /api/witness, {parallel} client(s): {r:,.0f} cosignatures/s ({n_hub} requests)")
            _witness_node(lab, "wit1")
            _witness_node(lab, "wit2")
            rows = []
            for required in (0, 1, 3):
                lat = bench_latency(lab, alice, bob, required, args.rounds)
                rows.append((required, statistics.median(lat), pct(lat, 99), max(lat)))
            print(f"\nlive latency, append -> follower's store ({args.rounds} messages each, ms)")
            print("| witnesses required | p50 | p99 | max |")
            print("|---:|---:|---:|---:|")
            for required, p50, p99, mx in rows:
                print(f"| {required} | {p50:.1f} | {p99:.1f} | {mx:.1f} |")
        finally:
            lab.stop()


if __name__ == "__main__":
    main()

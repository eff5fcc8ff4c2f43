"""Benchmark: the embedded pub-sub relay against nats-server, and the embedded bucket against a
plain file copy.

    .venv/bin/pip install -e '.[bench]'         # nats-py
    apt-get install -y nats-server              # Debian's NATS server
    .venv/bin/python bench/bench_relay.py [--nodes 50] [--messages 2000] [--rounds 200] [--mb 100]

Pub-sub: one hub (``kachery hub serve``, a real process) and one ``nats-server`` carry the same
traffic in the same run. 50 subscriber connections (nodes with provide-files, subscribed to the
channel's requestFiles band / a NATS subject) and one publisher (a node with request-files) live
in one client process (this one); the server runs in its own process.

* throughput: the publisher sends ``--messages`` 200-byte messages back to back; deliveries/s =
  messages × subscribers / (time from the first publish to the last delivery);
* latency: one message in flight at a time, ``--rounds`` rounds; publish→receive time for every
  subscriber (same clock), p50 and p99.

Bucket: PUT (signed URL, SHA-1 verified by the hub) and GET of a ``--mb`` MiB object over HTTP
with httpx (client and hub share the machine), against ``shutil.copyfile`` of the same file (an
in-kernel ``copy_file_range`` from the page cache: the fastest copy there is). Best of 3 each.
Targets (issue 4): ≥ 5,000 deliveries/s, relay p50 ≤ 10× NATS's, bucket ≥ 0.5× a file copy.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import trio

from kachery_node.identity import Keypair
from kachery_node.transport.hub_client import HubClient
from kachery_node.transport.pubsub.open_pubsub import open_pubsub

KACHERY = str(Path(sys.executable).parent / "kachery")
PAYLOAD = {"type": "requestFile", "fileKey": {"sha1": "a" * 40}, "pad": "x" * 120}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# ----------------------------------------------------------------------------- servers
def start_hub(tmp: Path) -> tuple[subprocess.Popen, str]:
    hub_dir = tmp / "hub"
    proc = subprocess.Popen([KACHERY, "hub", "serve", "--dir", str(hub_dir), "--port", "0",
                             "--max-publish-rate", "1000000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (hub_dir / "hub.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("hub did not start")
        time.sleep(0.05)
    return proc, json.loads((hub_dir / "hub.json").read_text())["url"]


def start_nats() -> tuple[subprocess.Popen, int]:
    exe = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not Path(exe).exists():
        raise SystemExit("nats-server not found: apt-get install -y nats-server")
    port = free_port()
    proc = subprocess.Popen([exe, "-a", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("nats-server did not start") from None
            time.sleep(0.05)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# ----------------------------------------------------------------------------- relay side
CHANNEL = "bench.relay-channel-with-a-long-name"  # 35 characters: over the original's limit


def setup_channel(url: str, n_nodes: int, channel: str = CHANNEL) -> tuple[str, HubClient, list[HubClient]]:
    owner = HubClient(url, user_key=Keypair.generate())
    owner.create_channel(channel)

    def node(roles: list[str]) -> HubClient:
        c = HubClient(url, user_key=Keypair.generate(), node_key=Keypair.generate())
        c.register_node("bench")
        c.request_roles(channel, c.node_key.public_hex, roles)
        owner.grant(channel, c.node_key.public_hex, roles)
        return c

    publisher = node(["request-files"])
    subscribers = [node(["provide-files"]) for _ in range(n_nodes)]
    return channel, publisher, subscribers


async def bench_relay(url: str, n_nodes: int, n_messages: int, rounds: int, channel: str = CHANNEL) -> dict:
    """Throughput and one-in-flight latency through the relay at ``url`` (a new ``channel`` there)."""
    channel, pub_client, sub_clients = setup_channel(url, n_nodes, channel)
    band = f"{channel}-requestFiles"
    pub_creds = pub_client.pubsub_credentials(channel)
    sub_creds = [c.pubsub_credentials(channel) for c in sub_clients]
    results: dict = {}
    async with trio.open_nursery() as nursery:
        conns = []
        ready = trio.Event()
        counts = [0] * n_nodes
        latencies: list[float] = []
        state = {"target": 0, "done": trio.Event(), "last": 0.0, "measure": False}

        async def subscriber(i: int, creds: dict) -> None:
            async with open_pubsub(creds) as ps:
                await ps.subscribe(band)
                conns.append(ps)
                if len(conns) == n_nodes:
                    ready.set()
                async for msg in ps.messages():
                    now = time.perf_counter()
                    counts[i] += 1
                    if state["measure"]:
                        latencies.append(now - orjson.loads(msg.data)["t"])
                    if sum(counts) >= state["target"]:
                        state["last"] = now
                        state["done"].set()

        for i, c in enumerate(sub_creds):
            nursery.start_soon(subscriber, i, c)
        with trio.fail_after(60):
            await ready.wait()
        async with open_pubsub(pub_creds) as pub:
            # warm-up
            state["target"] = n_nodes * 20
            for _ in range(20):
                await pub.publish(band, orjson.dumps({**PAYLOAD, "t": 0}))
            with trio.fail_after(60):
                await state["done"].wait()
            # throughput
            base = sum(counts)
            state["target"], state["done"] = base + n_nodes * n_messages, trio.Event()
            t0 = time.perf_counter()
            for _ in range(n_messages):
                await pub.publish(band, orjson.dumps({**PAYLOAD, "t": 0}))
            with trio.fail_after(120):
                await state["done"].wait()
            results["deliveries_per_s"] = n_nodes * n_messages / (state["last"] - t0)
            # latency: one message in flight
            state["measure"] = True
            for _ in range(rounds):
                state["target"], state["done"] = sum(counts) + n_nodes, trio.Event()
                await pub.publish(band, orjson.dumps({**PAYLOAD, "t": time.perf_counter()}))
                with trio.fail_after(30):
                    await state["done"].wait()
        results["p50_us"] = pct(latencies, 0.5) * 1e6
        results["p99_us"] = pct(latencies, 0.99) * 1e6
        results["samples"] = len(latencies)
        nursery.cancel_scope.cancel()
    return results


# ----------------------------------------------------------------------------- NATS side
async def bench_nats(port: int, n_nodes: int, n_messages: int, rounds: int) -> dict:
    import nats

    url = f"nats://127.0.0.1:{port}"
    subject = "bench.requestFiles"
    counts = [0] * n_nodes
    latencies: list[float] = []
    state = {"target": 0, "done": asyncio.Event(), "last": 0.0, "measure": False}
    subs = []
    for i in range(n_nodes):
        nc = await nats.connect(url)

        async def cb(msg, i=i):
            now = time.perf_counter()
            counts[i] += 1
            if state["measure"]:
                latencies.append(now - orjson.loads(msg.data)["t"])
            if sum(counts) >= state["target"]:
                state["last"] = now
                state["done"].set()

        await nc.subscribe(subject, cb=cb)
        await nc.flush()
        subs.append(nc)
    pub = await nats.connect(url)
    state["target"] = n_nodes * 20
    for _ in range(20):
        await pub.publish(subject, orjson.dumps({**PAYLOAD, "t": 0}))
    await pub.flush()
    await asyncio.wait_for(state["done"].wait(), 60)
    base = sum(counts)
    state["target"], state["done"] = base + n_nodes * n_messages, asyncio.Event()
    t0 = time.perf_counter()
    for _ in range(n_messages):
        await pub.publish(subject, orjson.dumps({**PAYLOAD, "t": 0}))
    await pub.flush()
    await asyncio.wait_for(state["done"].wait(), 120)
    results = {"deliveries_per_s": n_nodes * n_messages / (state["last"] - t0)}
    state["measure"] = True
    for _ in range(rounds):
        state["target"], state["done"] = sum(counts) + n_nodes, asyncio.Event()
        await pub.publish(subject, orjson.dumps({**PAYLOAD, "t": time.perf_counter()}))
        await pub.flush()
        await asyncio.wait_for(state["done"].wait(), 30)
    results["p50_us"] = pct(latencies, 0.5) * 1e6
    results["p99_us"] = pct(latencies, 0.99) * 1e6
    results["samples"] = len(latencies)
    for nc in [*subs, pub]:
        await nc.close()
    return results


# ----------------------------------------------------------------------------- bucket
def bench_bucket(url: str, tmp: Path, mb: int) -> dict:
    src = tmp / "object.bin"
    chunk = os.urandom(1 << 20)
    h = hashlib.sha1()
    with open(src, "wb") as f:
        for i in range(mb):
            block = chunk[:-8] + i.to_bytes(8, "big")
            f.write(block)
            h.update(block)
    size = src.stat().st_size
    sha1 = h.hexdigest()
    os.sync()

    def best(fn, runs=3) -> float:
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    dst = tmp / "copy.bin"
    copy_s = best(lambda: shutil.copyfile(src, dst))

    def rw_copy() -> None:  # what a program that handles the bytes itself does
        with open(src, "rb") as fi, open(dst, "wb") as fo:
            for block in iter(lambda: fi.read(1 << 20), b""):
                fo.write(block)

    rw_s = best(rw_copy)

    owner = HubClient(url, user_key=Keypair.generate())
    owner.create_channel("bench.bucket")
    node = HubClient(url, user_key=Keypair.generate(), node_key=Keypair.generate())
    node.register_node("bench")
    node.request_roles("bench.bucket", node.node_key.public_hex, ["provide-files"])
    owner.grant("bench.bucket", node.node_key.public_hex, ["provide-files"])
    path = f"sha1/{sha1[:2]}/{sha1[2:4]}/{sha1[4:6]}/{sha1}"
    http = httpx.Client(timeout=120)

    def put() -> None:
        [signed] = node.upload_urls("bench.bucket", [{"path": path, "size": size}])
        with open(src, "rb") as f:
            r = http.put(signed, content=iter(lambda: f.read(4 << 20), b""),
                         headers={"Content-Length": str(size)})
        r.raise_for_status()

    def get() -> None:
        with http.stream("GET", f"{url}/bucket/bench.bucket/{path}") as r, open(dst, "wb") as f:
            r.raise_for_status()
            for block in r.iter_raw():  # no re-chunking: write what the socket gives
                f.write(block)

    put_s, get_s = best(put), best(get)
    assert dst.stat().st_size == size
    return {"size_mb": size / 1e6, "copy_mb_s": size / 1e6 / copy_s, "rw_copy_mb_s": size / 1e6 / rw_s,
            "put_mb_s": size / 1e6 / put_s,
            "get_mb_s": size / 1e6 / get_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--only", choices=["pubsub", "bucket"], help="Run one half only.")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kachery-bench-") as tmp_s:
        tmp = Path(tmp_s)
        hub, url = start_hub(tmp)
        nats_proc, nats_port = start_nats()
        relay = nats_r = bucket = None
        try:
            if args.only != "bucket":
                relay = trio.run(bench_relay, url, args.nodes, args.messages, args.rounds)
                nats_r = asyncio.run(bench_nats(nats_port, args.nodes, args.messages, args.rounds))
            if args.only != "pubsub":
                bucket = bench_bucket(url, tmp, args.mb)
        finally:
            stop(hub)
            stop(nats_proc)
    report(args, relay, nats_r, bucket)


def report(args: argparse.Namespace, relay: dict | None, nats_r: dict | None, bucket: dict | None) -> None:
    ok = True
    if relay and nats_r:
        print_pubsub(args, relay, nats_r)
        ok &= relay["deliveries_per_s"] >= 5000 and relay["p50_us"] <= 10 * nats_r["p50_us"]
    if bucket:
        print_bucket(bucket)
        ok &= min(bucket["put_mb_s"], bucket["get_mb_s"]) >= 0.5 * bucket["copy_mb_s"]
    verdict = "met" if ok else "NOT met"
    print(f"\ntargets (≥5,000 deliveries/s, p50 ≤ 10× NATS, bucket ≥ 0.5× copy): {verdict}")
    print(json.dumps({"relay": relay, "nats": nats_r, "bucket": bucket}))


def print_pubsub(args: argparse.Namespace, relay: dict, nats_r: dict) -> None:
    print(f"\npub-sub: {args.nodes} subscribers, 1 publisher, {args.messages} messages "
          f"(~{len(orjson.dumps(PAYLOAD))} B), {args.rounds} latency rounds\n")
    print(f"{'':<24}{'embedded relay':>16}{'nats-server':>14}{'relay/NATS':>12}")
    for key, label in (("deliveries_per_s", "deliveries/s"), ("p50_us", "latency p50 (µs)"),
                       ("p99_us", "latency p99 (µs)")):
        print(f"{label:<24}{relay[key]:>16,.0f}{nats_r[key]:>14,.0f}{relay[key] / nats_r[key]:>12.2f}")


def print_bucket(bucket: dict) -> None:
    print(f"\nbucket: {bucket['size_mb']:.0f} MB object\n")
    print(f"{'':<28}{'MB/s':>10}{'vs copy':>10}{'vs r/w copy':>13}")
    rows = (("copy_mb_s", "file copy (copy_file_range)"), ("rw_copy_mb_s", "file copy (read/write 1 MiB)"),
            ("put_mb_s", "bucket PUT (signed, SHA-1)"), ("get_mb_s", "bucket GET"))
    for key, label in rows:
        print(f"{label:<28}{bucket[key]:>10,.0f}{bucket[key] / bucket['copy_mb_s']:>10.2f}"
              f"{bucket[key] / bucket['rw_copy_mb_s']:>13.2f}")


if __name__ == "__main__":
    main()

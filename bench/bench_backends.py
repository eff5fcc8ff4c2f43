"""Live-feed latency and file throughput through each backend combination, side by side.

For each combination ("<pub-sub>+<bucket>": embedded, NATS via nats-server, Ably via
tests/ably_fake_server.py, GCS via gcp-storage-emulator, S3 via moto's server mode) this starts
a hub and two real node daemons (the test suite's Lab), then measures:

* pub-sub round trip: two clients of the backend (``open_pubsub``, hub-minted credentials),
  publish -> the other receives, one message in flight, median and p99 over N messages;
* live feed: a script appends to Alice's feed, Bob's daemon follows it; time from append to the
  message being in Bob's store (median, p99);
* file: Bob fetches a fresh random file of SIZE MB stored on Alice (request, upload through the
  bucket, download, verify): MB/s.

Stand-ins are local processes on this machine, so the numbers compare the client paths and the
relays' costs, not the cloud services. Run: ``python bench/bench_backends.py [--size-mb 50]
[--rounds 3]`` (with several rounds: min / median / max of each number over the rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kachery_feeds as kf  # noqa: E402
import kachery_node as kn  # noqa: E402
from kachery_node.identity import load_node_key  # noqa: E402
from kachery_node.transport.hub_client import HubClient  # noqa: E402
from kachery_node.transport.pubsub.open_pubsub import open_pubsub  # noqa: E402
from tests.hub.conftest import HubProcess  # noqa: E402
from tests.network.conftest import ALL_ROLES, Lab  # noqa: E402
from tests.standins import AblyFake, GcsEmulator, MotoS3, NatsCluster, fake_service_account  # noqa: E402

#: Messages are bytes (pub-sub v2): these tests send small JSON documents as their bytes.
j = orjson.dumps


def data(message) -> object:
    return orjson.loads(message.data)


COMBINATIONS = ["embedded+embedded", "nats+embedded", "ably+embedded", "embedded+gcs", "nats+gcs",
                "embedded+s3"]
METRICS = ["pubsub_p50_ms", "pubsub_p99_ms", "live_p50_ms", "live_p99_ms", "file_MBps"]


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def create_args(combo: str, root: Path, standins: dict) -> list[str]:
    pubsub, bucket = combo.split("+")
    args: list[str] = []
    if pubsub == "nats":
        args += ["--pubsub", standins["nats"].url(), "--nats-account-seed",
                 str(standins["nats"].seed_file(root / "seed"))]
    elif pubsub == "ably":
        a = standins["ably"]
        args += ["--pubsub", "ably", "--ably-endpoint", a.endpoint, "--ably-rest-url", a.rest_url,
                 "--ably-key-file", str(a.key_file(root / "ably.key"))]
    if bucket == "gcs":
        g = standins["gcs"]
        name = f"bench-{root.name}"
        httpx.post(f"{g.endpoint}/storage/v1/b", params={"project": "b"}, json={"name": name},
                   timeout=10).raise_for_status()
        fake_service_account(root / "sa.json")
        args += ["--bucket", f"gcs://{name}", "--gcs-endpoint", g.endpoint,
                 "--gcs-key-file", str(root / "sa.json")]
    if bucket == "s3":
        s3 = standins["s3"]
        name = s3.new_bucket(f"bench-{root.name.lower().replace('_', '-')}"[:63])
        args += ["--bucket", f"s3://{name}", "--s3-endpoint", s3.endpoint,
                 "--s3-key-file", str(s3.key_file(root / "s3.key"))]
    return args


def pubsub_rtt(lab: Lab, alice, bob, n: int) -> list[float]:
    creds = {}
    for node in (alice, bob):
        with HubClient(lab.hub.url, node_key=load_node_key(node.storage_dir)) as hub:
            creds[node.label] = hub.pubsub_credentials("lab")

    async def main() -> list[float]:
        out = []
        async with open_pubsub(creds["alice"]) as a, open_pubsub(creds["bob"]) as b:
            await b.subscribe("lab-provideFeeds")
            for i in range(n + 20):
                t0 = time.perf_counter()
                await a.publish("lab-provideFeeds", j({"i": i, "pad": "x" * 200}))
                while True:
                    m = await b.receive(10)
                    if m.sender == alice.node_id and data(m).get("i") == i:
                        break
                if i >= 20:  # warm-up
                    out.append((time.perf_counter() - t0) * 1000)
        return out

    return trio.run(main)


def live_feed(alice, bob, n: int) -> list[float]:
    source = kf.open_store(alice.storage_dir / "feeds.db").create_feed().load_subfeed("bench")
    source.append_message({"start": True})
    bob.client.request("POST", "/api/feeds/follow", json_body={"uri": source.uri})
    replica = kf.open_store(bob.storage_dir / "feeds.db").load_subfeed(source.uri)
    deadline = time.monotonic() + 30
    while replica.get_num_local_messages() < 1:
        if time.monotonic() > deadline:
            raise RuntimeError("bob never got the first message")
        time.sleep(0.01)
    out = []
    for i in range(n):
        count = replica.get_num_local_messages()
        t0 = time.perf_counter()
        source.append_message({"i": i})
        while replica.get_num_local_messages() <= count:
            if time.perf_counter() - t0 > 10:
                raise RuntimeError(f"message {i} did not arrive")
            time.sleep(0.0002)
        out.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.005)
    return out


def file_throughput(alice, bob, size_mb: int, tmp: Path) -> float:
    path = tmp / "payload.bin"
    path.write_bytes(os.urandom(size_mb * 1_000_000))
    uri = kn.open_storage(alice.storage_dir).store_file(path)
    token = (bob.storage_dir / "daemon-token").read_text().strip()
    t0 = time.perf_counter()
    with httpx.stream("POST", f"{bob.client.base_url}/api/files/fetch", json={"uri": uri},
                      headers={"Authorization": f"Bearer {token}"}, timeout=600) as r:
        last = None
        for line in r.iter_lines():
            last = json.loads(line)
    elapsed = time.perf_counter() - t0
    if not last or last.get("type") != "finished":
        raise RuntimeError(f"fetch failed: {last}")
    return size_mb / elapsed


def run_combo(combo: str, standins: dict, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-{combo.replace('+', '-')}-") as d:
        root = Path(d)
        hub = HubProcess(root / "hub")
        lab = Lab(root, hub, create_args=tuple(create_args(combo, root, standins)), backends=combo)
        try:
            alice = lab.add_node("alice", ALL_ROLES)
            bob = lab.add_node("bob", ["request-feeds", "request-files"])
            rtt = pubsub_rtt(lab, alice, bob, args.messages)
            live = live_feed(alice, bob, args.messages)
            mbps = file_throughput(alice, bob, args.size_mb, root)
        finally:
            lab.stop()
            hub.stop()
    return {"combo": combo, "pubsub_p50_ms": statistics.median(rtt), "pubsub_p99_ms": pct(rtt, 99),
            "live_p50_ms": statistics.median(live), "live_p99_ms": pct(live, 99), "file_MBps": mbps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=50)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--only", nargs="*", default=COMBINATIONS)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-standins-") as d:
        standins = {"nats": NatsCluster(Path(d) / "nats"), "gcs": GcsEmulator(Path(d) / "gcs"),
                    "ably": AblyFake(Path(d) / "ably"), "s3": MotoS3(Path(d) / "s3")}
        try:
            rounds = [[run_combo(c, standins, args) for c in args.only] for _ in range(args.rounds)]
        finally:
            for s in standins.values():
                s.stop()
    print(f"\n{'pub-sub+bucket':<20}{'pub-sub p50/p99 ms':>22}{'live feed p50/p99 ms':>24}"
          f"{f'file {args.size_mb} MB, MB/s':>22}")
    for i, r in enumerate(rounds[0]):
        runs = [rnd[i] for rnd in rounds]
        print(f"{r['combo']:<20}{_spread(runs, 'pubsub_p50_ms')} /{_spread(runs, 'pubsub_p99_ms')}"
              f"   {_spread(runs, 'live_p50_ms')} /{_spread(runs, 'live_p99_ms')}"
              f"   {_spread(runs, 'file_MBps')}")
    print(json.dumps(rounds))


def _spread(runs: list[dict], metric: str) -> str:
    """One number, or min/median/max over the rounds."""
    values = sorted(r[metric] for r in runs)
    if len(values) == 1:
        return f"{values[0]:>8.2f}"
    return f" {values[0]:.2f}/{statistics.median(values):.2f}/{values[-1]:.2f}"


if __name__ == "__main__":
    main()

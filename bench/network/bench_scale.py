"""Cost as channels grow (issue 15 item 5): one daemon following N subfeeds, at rest.

For each N (default 100, 1000, 10000), a fresh network of real processes (netlab.py: a hub,
owner A holding N subfeeds of one message each in one feed, reader B): B follows all N
(``POST /api/feeds/follow {"uris": [...]}``, 1,000 URIs a request; ``--one-by-one``: one
request per subfeed, as before the bulk form existed), waits until it holds every message and
the bucket work has settled, then the network is left idle and measured over ``--rounds``
consecutive windows of ``--window`` seconds each:

* CPU seconds per minute of B's daemon (the follower), A's daemon (the provider) and the hub;
* B's resident memory (RSS) at the end of the window;
* relay messages per minute (the channel's ``messages_in`` from ``kachery hub status``: every
  publish by any node; each is also delivered to every other node on the channel);
* hub HTTP requests per minute are not counted directly; the hub's CPU includes them.

"Settled" (before the first window): the relay carries no more in 10 s than renewals would, and
the provider and the hub each use under 30% of a core,
i.e. the bucket work the follows started is over (at most 15 minutes).

Each figure is printed as min / median / max over the windows, then the growth law between
the smallest and the largest N: the exponent k of cost ~ N^k (0: flat, 1: linear), from the
medians. Idle cost that grows with N is the price of keeping N subscriptions alive.

    .venv/bin/python bench/network/bench_scale.py [--sizes 100,1000,10000] [--window 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
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
from lightnodes import cpu_s  # noqa: E402
from netlab import ALL_ROLES, Lab  # noqa: E402

import kachery_feeds as kf  # noqa: E402

READER_ROLES = ["request-feeds"]
pyspy = str(Path(sys.executable).parent / "py-spy")


def log(msg: str) -> None:
    print(f"[scale] {msg}", file=sys.stderr, flush=True)


def relay_messages_in(owner) -> int:
    status = json.loads(owner.run("hub", "status", "--json"))
    return sum(ch["relay"]["messages_in"] for ch in status["channels"])


FOLLOW_CHUNK = 1000  # URIs per bulk follow request


SETTLE_SAMPLE_SECONDS = 10.0
SETTLE_MAX_SECONDS = 900.0


#: At rest the provider and the hub each use well under this share of a core (N = 10,000: ~6% and
#: ~18% before subfeedsHeld); uploading N heads and getting them witnessed keeps both far above.
SETTLE_MAX_CORE_SHARE = 0.3


def settle(n: int, owner, hub_pid: int) -> None:
    """Wait until the network is at rest: the bucket work the follows started (N heads uploaded,
    N checkpoints witnessed and announced) is over, seen as the relay carrying no more in
    :data:`SETTLE_SAMPLE_SECONDS` than renewals would (ceil(N/500) per 5 s tick, and a few) and
    the provider and the hub each using under :data:`SETTLE_MAX_CORE_SHARE` of a core. (The
    relay alone was not enough: at N = 10,000 it went quiet while the heads still uploaded.)"""
    started = time.monotonic()
    quiet = 2 * math.ceil(n / 500) + 10
    pids = {"provider": owner.pid, "hub": hub_pid}
    while True:
        before = relay_messages_in(owner)
        cpu0 = {k: cpu_s(p) for k, p in pids.items()}
        t0 = time.monotonic()
        time.sleep(SETTLE_SAMPLE_SECONDS)
        carried = relay_messages_in(owner) - before
        shares = {k: (cpu_s(p) - cpu0[k]) / (time.monotonic() - t0) for k, p in pids.items()}
        waited = time.monotonic() - started
        busy = ", ".join(f"{k} {v:.0%} of a core" for k, v in shares.items())
        if carried <= quiet and max(shares.values()) < SETTLE_MAX_CORE_SHARE:
            log(f"N={n}: settled after {waited:.0f} s ({carried} relay messages in the last "
                f"{SETTLE_SAMPLE_SECONDS:g} s; {busy})")
            return
        if waited > SETTLE_MAX_SECONDS:
            log(f"N={n}: not settled after {waited:.0f} s ({carried} relay messages in "
                f"{SETTLE_SAMPLE_SECONDS:g} s; {busy}); measuring anyway")
            return


def measure_size(n: int, window: float, rounds: int, tmp: Path, one_by_one: bool = False,
                 pyspy_dir: Path | None = None) -> dict[str, Any]:
    lab = Lab(tmp / f"net-{n}")
    try:
        a = lab.add_node("A", ALL_ROLES)
        b = lab.add_node("B", READER_ROLES)
        store = kf.open_store(a.storage_dir / "feeds.db")
        feed = store.create_feed()
        uris = []
        for i in range(n):
            sf = feed.load_subfeed(f"s{i}")
            sf.append_message({"i": i})
            uris.append(sf.uri)
        log(f"N={n}: B follows {n} subfeeds")
        t0 = time.monotonic()
        client = b.client
        if one_by_one:
            for uri in uris:
                client.request("POST", "/api/feeds/follow", json_body={"uri": uri}, timeout=60)
        else:
            for start in range(0, n, FOLLOW_CHUNK):
                chunk = uris[start:start + FOLLOW_CHUNK]
                client.request("POST", "/api/feeds/follow", json_body={"uris": chunk}, timeout=120)
        followed = time.monotonic() - t0
        log(f"N={n}: follow requests answered after {followed:.1f} s")
        replica_store = kf.open_store(b.storage_dir / "feeds.db")
        replica_feed = replica_store.load_feed(feed.feed_id)
        deadline = time.monotonic() + 120 + n * 0.1
        while True:
            have = sum(1 for s in replica_feed.list_subfeeds() if s["num_messages"] >= 1)
            if have == n:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"N={n}: B holds {have} of {n} subfeeds\n{b.log()[-3000:]}")
            time.sleep(0.5)
        caught_up = time.monotonic() - t0
        settle(n, a, lab.hub.pid)
        pids = {"B (follower)": b.pid, "A (provider)": a.pid, "hub": lab.hub.pid}
        windows = []
        for r in range(rounds):
            spies = []
            if pyspy_dir is not None and r == 0:  # where the idle time goes, during the first window
                for label, node in (("A", a), ("B", b)):
                    out = pyspy_dir / f"scale-{n}-{label}.txt"
                    spies.append(subprocess.Popen(
                        [pyspy, "record", "--pid", str(node.pid), "--format", "raw", "--rate", "100",
                         "--duration", str(int(window)), "--output", str(out)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            cpu0 = {k: cpu_s(p) for k, p in pids.items()}
            msgs0 = relay_messages_in(a)
            w0 = time.monotonic()
            time.sleep(window)
            elapsed = time.monotonic() - w0
            msgs1 = relay_messages_in(a)
            cpu1 = {k: cpu_s(p) for k, p in pids.items()}
            w = {f"cpu_s_per_min {k}": (cpu1[k] - cpu0[k]) * 60 / elapsed for k in pids}
            w["relay_msgs_per_min"] = (msgs1 - msgs0) * 60 / elapsed
            w["rss_mb B (follower)"] = psutil.Process(b.pid).memory_info().rss / 2**20
            w["rss_mb A (provider)"] = psutil.Process(a.pid).memory_info().rss / 2**20
            windows.append(w)
            for spy in spies:
                spy.wait(timeout=60)
            log(f"N={n} window {r + 1}/{rounds}: " + ", ".join(f"{k} {v:.2f}" for k, v in w.items()))
        return {"n": n, "follow_s": followed, "caught_up_s": caught_up, "windows": windows,
                "loadavg": os.getloadavg()}
    finally:
        lab.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--window", type=float, default=30.0, help="seconds per measured window")
    ap.add_argument("--rounds", type=int, default=3, help="consecutive windows per size")
    ap.add_argument("--one-by-one", action="store_true",
                    help="one follow request per subfeed (the only way before the bulk form)")
    ap.add_argument("--py-spy", metavar="DIR", type=Path,
                    help="record py-spy raw stacks of A and B during each size's first window")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--tmp", metavar="DIR")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="kachery-scale-", dir=args.tmp))
    load0 = os.getloadavg()
    results = []
    failed: dict[int, str] = {}
    try:
        for n in sizes:
            try:
                results.append(measure_size(n, args.window, args.rounds, tmp, args.one_by_one,
                                            args.py_spy))
            except Exception as exc:  # report the sizes that were measured, and why this one was not
                failed[n] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                log(f"N={n} failed: {failed[n]}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not results:
        raise SystemExit(f"no size was measured: {failed}")
    keys = list(results[0]["windows"][0])
    print(f"\nkachery at rest, one daemon following N subfeeds; {args.rounds} windows of "
          f"{args.window:g} s per N (min / median / max); load average at start "
          f"{load0[0]:.2f}, at end {os.getloadavg()[0]:.2f} (2 cores)\n")
    print("| figure | " + " | ".join(f"N = {r['n']:,}" for r in results) + " | growth ~ N^k |")
    print("|---|" + "---|" * len(results) + "---|")
    for key in keys:
        cells, medians = [], []
        for r in results:
            values = [w[key] for w in r["windows"]]
            lo, mid, hi = min(values), statistics.median(values), max(values)
            medians.append(mid)
            cells.append(f"{lo:.2f} / **{mid:.2f}** / {hi:.2f}")
        k = growth_exponent([r["n"] for r in results], medians)
        print(f"| {key} | " + " | ".join(cells) + f" | {k} |")
    print("| follow requests answered (s) | " + " | ".join(f"{r['follow_s']:.1f}" for r in results) + " | |")
    print("| catch-up of all N (s) | " + " | ".join(f"{r['caught_up_s']:.1f}" for r in results) + " | |")
    for n, why in failed.items():
        print(f"\nN = {n:,}: not measured ({why})")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "loadavg_start": load0}, indent=2))


def growth_exponent(ns: list[int], values: list[float]) -> str:
    """k in value ~ N^k between the smallest and the largest N (medians)."""
    if len(ns) < 2 or values[0] <= 0 or values[-1] <= 0:
        return "-"
    k = math.log(values[-1] / values[0]) / math.log(ns[-1] / ns[0])
    law = "O(1)" if k < 0.25 else "O(N)" if 0.75 <= k <= 1.25 else f"~N^{k:.2f}"
    return f"{k:.2f} ({law})"


if __name__ == "__main__":
    main()

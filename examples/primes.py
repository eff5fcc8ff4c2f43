"""Append primes to a signed feed in one process and follow it live from another.

    python examples/primes.py                 # everything in a temporary folder
    python examples/primes.py --count 50 --store ./my-feeds.db

The writer creates a feed, starts a follower process on the same store, then appends one prime
at a time. The follower prints each message the moment it is committed, with the delay it saw.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import kachery_feeds as kf


def primes():
    found: list[int] = []
    n = 2
    while True:
        if all(n % p for p in found if p * p <= n):
            found.append(n)
            yield n
        n += 1


def follow(store_path: str, uri: str, count: int) -> None:
    sf = kf.open_store(store_path).load_subfeed(uri)
    print(f"[follower] following {uri}", flush=True)
    for i, msg in enumerate(sf.follow(start=0, timeout=30)):
        delay_ms = (time.time_ns() - msg["sent_ns"]) / 1e6
        print(f"[follower] #{i}: prime {msg['p']:>5}   arrived {delay_ms:6.2f} ms after append", flush=True)
        if i + 1 == count:
            return
    raise SystemExit("[follower] timed out waiting for messages")


def write(store_path: str, count: int, interval: float) -> None:
    store = kf.open_store(store_path)
    sf = store.create_feed().load_subfeed("primes")
    print(f"[writer] store {store_path}\n[writer] subfeed {sf.uri}", flush=True)
    follower = subprocess.Popen(
        [sys.executable, __file__, "follow", "--store", store_path, "--uri", sf.uri, "--count", str(count)]
    )
    time.sleep(0.5)  # let the follower start (it would catch up anyway: it reads from 0)
    for _i, p in zip(range(count), primes(), strict=False):
        sf.append_message({"p": p, "sent_ns": time.time_ns()})
        time.sleep(interval)
    follower.wait(timeout=60)
    print(f"[writer] done: {sf.get_num_local_messages()} signed messages in {sf.uri}", flush=True)
    if follower.returncode:
        raise SystemExit(follower.returncode)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("role", nargs="?", default="write", choices=["write", "follow"])
    parser.add_argument("--store", help="SQLite store path (default: a temporary folder)")
    parser.add_argument("--uri", help="subfeed URI (follow only)")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between appends")
    args = parser.parse_args()
    if args.role == "follow":
        follow(args.store, args.uri, args.count)
        return
    if args.store:
        write(args.store, args.count, args.interval)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            write(str(Path(tmp) / "feeds.db"), args.count, args.interval)


if __name__ == "__main__":
    main()

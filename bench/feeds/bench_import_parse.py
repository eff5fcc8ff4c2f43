"""The import path's parsing, before and after issue 15, in one process (CPU time).

``old``: ``parse_wire`` on each line, then ``check_chain``, then the insert's parameter list
(what ``Store._import`` did); ``new``: ``parse_range`` (what it does now). 100k messages with
256-byte payloads, appended in batches of 1000 (one signature each); the two alternate
``--rounds`` times; the min and median of each are printed. SQLite is not included (the same for
both), so this isolates what parse_range changed.

    .venv/bin/python bench/feeds/bench_import_parse.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import kachery_feeds as kf
from kachery_feeds.messages import check_chain, parse_range, parse_wire


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--messages", type=int, default=100_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        src = kf.open_store(os.path.join(d, "a.db")).create_feed().load_subfeed("x")
        for b in range(0, args.messages, 1000):
            src.append_messages([{"data": "x" * 200, "i": i, "t": 0} for i in range(b, b + 1000)])
        lines = src.get_signed_messages()
    feed_id, sh, key = src.feed_id, src.subfeed_hash, bytes.fromhex(src.feed_id)

    def old() -> None:
        msgs = [parse_wire(line, feed_id, sh) for line in lines]
        check_chain(msgs, key)
        [(1, m[0], m[3], m[4]) for m in msgs]

    def new() -> None:
        parse_range(lines, feed_id, sh, key)

    seconds: dict[str, list[float]] = {"old (parse_wire + check_chain + params)": [], "new (parse_range)": []}
    print(f"load average {os.getloadavg()[0]:.2f}; {len(lines)} messages, {args.rounds} alternations")
    for _ in range(args.rounds):
        for (_name, values), f in zip(seconds.items(), (old, new), strict=True):
            t = time.process_time()
            f()
            values.append(time.process_time() - t)
    for name, values in seconds.items():
        lo, mid = min(values), statistics.median(values)
        print(f"{name}: {len(lines) / lo / 1e3:.0f}k msgs/s best ({lo * 1e6 / len(lines):.2f} µs a message), "
              f"{len(lines) / mid / 1e3:.0f}k/s median")


if __name__ == "__main__":
    main()

"""Child processes for the multi-process tests (run as scripts, never imported by pytest)."""

from __future__ import annotations

import sys
import time

import orjson

import kachery_feeds as kf


def appender(db: str, uri: str, writer: str, count: int, batch: int) -> None:
    """Append ``count`` messages in batches; print each returned number after its commit."""
    sf = kf.open_store(db).load_subfeed(uri)
    i = 0
    while i < count:
        k = min(batch, count - i)
        payloads = [{"writer": writer, "i": i + j, "batch_size": k} for j in range(k)]
        last = sf.append_message(payloads[0]) if k == 1 else sf.append_messages(payloads)
        print(last, flush=True)
        i += k


def follower(db: str, uri: str, count: int) -> None:
    """Follow live; print latency (ms) of each message from its 'sent_ns' field."""
    sf = kf.open_store(db).load_subfeed(uri)
    print("ready", flush=True)
    for got, msg in enumerate(sf.follow(start=0, timeout=20), start=1):
        print(orjson.dumps({"i": msg["i"], "latency_ms": (time.time_ns() - msg["sent_ns"]) / 1e6}).decode(),
              flush=True)
        if got == count:
            return


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "appender":
        appender(args[0], args[1], args[2], int(args[3]), int(args[4]))
    elif cmd == "follower":
        follower(args[0], args[1], int(args[2]))

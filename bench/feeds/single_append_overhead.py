"""Where a durable single append's time above its limit goes, in one process (wall µs).

Alternates, ``--rounds`` times: ``append_message`` of ``--messages`` 256-byte payloads into a
fresh store; the same with the store's notify-file write left out; the same with its checkpoint
thread never woken; and the limit ``run.py`` judges the row by (SHA-256, sign and one autocommit
INSERT of each row in one loop, :func:`run.sign_and_commit_rate`). Prints the median and min of
each. A benchmark, not a test.

    .venv/bin/python bench/feeds/single_append_overhead.py [--rounds 4] [--messages 3000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))

import run  # noqa: E402
from bench_common import payload  # noqa: E402

import kachery_feeds as kf  # noqa: E402


def append_us(folder: Path, messages: int, patch: Callable[[kf.Store], None] | None = None) -> float:
    """Wall µs of one append_message, over ``messages`` of them into a fresh store."""
    store = kf.open_store(folder / "append.db")
    subfeed = store.create_feed().load_subfeed("log")
    subfeed.append_message(payload(0))  # the first append reads the subfeed's head
    if patch is not None:
        patch(store)
    payloads = [payload(i) for i in range(messages)]
    run.settle()
    start = time.perf_counter()
    for p in payloads:
        subfeed.append_message(p)
    seconds = time.perf_counter() - start
    store.close()
    for f in folder.glob("append.db*"):
        f.unlink()
    return seconds / messages * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--messages", type=int, default=3000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        source = kf.open_store(folder / "source.db")
        log = source.create_feed().load_subfeed("log")
        for i in range(args.messages):
            log.append_message(payload(i))
        rows = run.rows_from_wire(log.get_signed_messages())
        schema = run.messages_schema(folder / "source.db")
        source.close()

        def quiet_notify(store: kf.Store) -> None:
            store._notifier.notify = lambda: None

        def no_checkpoint_thread(store: kf.Store) -> None:
            store._checkpointer.wrote = lambda *_: None

        cases: dict[str, Callable[[], float]] = {
            "append_message": lambda: append_us(folder, args.messages),
            "  without the notify-file write": lambda: append_us(folder, args.messages, quiet_notify),
            "  without waking the checkpoint thread": lambda: append_us(folder, args.messages,
                                                                          no_checkpoint_thread),
            "limit: hash + sign + one commit": lambda: 1e6 / run.sign_and_commit_rate(folder, schema, rows),
        }
        results: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, measure in cases.items():
                results[name].append(measure())
    limit = statistics.median(results["limit: hash + sign + one commit"])
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:42s} median {median:6.1f} µs, min {min(values):6.1f} µs "
              f"({limit / median:.2f}x the limit's median)")


if __name__ == "__main__":
    main()

"""CPU per live push, stage by stage, in one process (issue 15: live latency).

Run from the repository root::

    .venv/bin/python bench/bench_push_path.py [--pushes 2000] [--rounds 3]

The live path A -> B crosses four processes and the relay; on a shared machine its wall-clock
latency moves with the load, while the CPU each stage's code costs does not (much). This times
that code, with the project's own functions, one message a push as in the latency benchmark
(``bench/network/run.py --only latency``: a 256-byte payload appended every 5 ms):

* writer: ``append_message`` (sign, insert, commit, notify);
* A: the provider's count query and range read, the inline cut, and sealing the push, with an
  envelope signature (signed) or as an unsigned push (spec/node-protocol.md, Unsigned pushes);
* B: opening the envelope (signature verified, or the unsigned form), the replay check, the
  feed message's parse, and the verified import with its commit and notify.

Process time (``time.process_time_ns``) per push, min / median / max over the rounds. What is
not here: sockets, the relay, trio's scheduling, process wake-ups (see bench/README.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_common import payload, table  # noqa: E402

import kachery_feeds as kf  # noqa: E402
from kachery_node.identity import Keypair  # noqa: E402
from kachery_node.protocol import feed_messages, node_messages  # noqa: E402
from kachery_node.protocol.feed_provider import InlineSplitter  # noqa: E402

CHANNEL, BAND = "lab", "provide-feeds"


def per_call_us(fn: Callable[[int], object], n: int) -> float:
    t0 = time.process_time_ns()
    for i in range(n):
        fn(i)
    return (time.process_time_ns() - t0) / n / 1000


def one_round(tmp: Path, n: int) -> dict[str, float]:
    a_store, b_store = kf.open_store(tmp / "a.db"), kf.open_store(tmp / "b.db")
    source = a_store.create_feed().load_subfeed("live")
    key = Keypair.generate()
    out: dict[str, float] = {}
    out["writer: append_message"] = per_call_us(lambda i: source.append_message({**payload(i), "t": i}), n)
    feed_id, subfeed_hash = source.feed_id, source.subfeed_hash

    lines = [source.get_signed_messages(i, i + 1) for i in range(n)]
    out["A: count + range read"] = per_call_us(
        lambda i: (source.get_num_local_messages(), source.get_signed_messages(i, i + 1)), n)

    def cut(i: int) -> feed_messages.NewSubfeedMessages:
        splitter = InlineSplitter(feed_id, subfeed_hash)
        return (splitter.add(lines[i]) + splitter.finish())[0]

    out["A: inline cut"] = per_call_us(cut, n)
    pieces = [cut(i) for i in range(n)]

    def seal(i: int) -> bytes:
        return node_messages.seal(key, channel=CHANNEL, band=BAND, body=pieces[i].to_body(),
                                  now_ms=int(time.time() * 1000), attachment=pieces[i].attachment())

    def seal_unsigned(i: int) -> bytes:
        return node_messages.seal_unsigned_push(band=BAND, body=pieces[i].to_body(),
                                                attachment=pieces[i].attachment())

    out["A: seal, signed"] = per_call_us(seal, n)
    out["A: seal, unsigned"] = per_call_us(seal_unsigned, n)
    signed = [seal(i) for i in range(n)]
    unsigned = [seal_unsigned(i) for i in range(n)]
    now = int(time.time() * 1000)
    guard = node_messages.ReplayGuard()

    def open_(data: bytes) -> node_messages.Envelope:
        env = node_messages.open_envelope(data, channel=CHANNEL, band=BAND, now_ms=now,
                                          publisher=key.public_hex)
        guard.check(env, now_ms=now)
        return env

    out["B: open + replay check, signed"] = per_call_us(lambda i: open_(signed[i]), n)
    out["B: open + replay check, unsigned"] = per_call_us(lambda i: open_(unsigned[i]), n)
    envs = [open_(unsigned[i]) for i in range(n)]
    out["B: parse"] = per_call_us(lambda i: feed_messages.parse(BAND, envs[i].body, envs[i].attachment), n)
    replica = b_store.load_subfeed(source.uri)
    out["B: import + commit + notify"] = per_call_us(lambda i: replica.add_signed_messages(list(lines[i])), n)
    assert replica.get_num_local_messages() == n
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pushes", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rounds = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="kachery-push-path-") as tmp:
            rounds.append(one_round(Path(tmp), args.pushes))
    rows = []
    for name in rounds[0]:
        values = sorted(r[name] for r in rounds)
        rows.append([name, f"{values[0]:.1f} / **{statistics.median(values):.1f}** / {values[-1]:.1f}"])

    def median(name: str) -> float:
        return statistics.median(r[name] for r in rounds)

    saved = (median("A: seal, signed") - median("A: seal, unsigned")
             + median("B: open + replay check, signed") - median("B: open + replay check, unsigned"))
    print(table(["stage (one message a push)", "CPU µs per push, min / median / max"], rows))
    print(f"\nunsigned pushes save {saved:.1f} µs of CPU a push on the live path (medians); "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

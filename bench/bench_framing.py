"""What a feed's live messages cost on the relay: bytes of a relay operation per byte of wire lines
(issue 12: one framing for pub-sub payloads, no JSON inside JSON).

For 1, 10 and 100 small messages (``{"t", "value", "note"}``, each signed) it builds the
``newSubfeedMessages`` a provider publishes and prints, for the channel name given:

* wire lines: the messages' wire form (spec/feeds.md §3), what any framing must carry;
* v1 (before issue 12): the body's ``messages`` a list of JSON strings, the envelope a text line
  (``<body> TAB <sender hex> TAB <signature hex>``) sent as a JSON string in the relay's JSON
  ``publish`` op: reproduced here exactly as the v1 code built it;
* v2 (now): the lines attached to the signed node message as they are (segment form), the
  message in a binary ``publish`` record (spec/node-protocol.md, spec/pubsub.md), and the
  ``message`` record a subscriber receives.

Run: ``.venv/bin/python bench/bench_framing.py [--channel NAME]``. Deterministic up to random
keys (sizes do not depend on them).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kachery_feeds as kf
from kachery_node.identity import Keypair
from kachery_node.protocol import relay_frames
from kachery_node.protocol.node_messages import seal
from kachery_node.protocol.roles import band_name, pubsub_band

NOW = 1_700_000_000_000


def v1_relay_op(key: Keypair, channel: str, body: dict, lines: list[bytes]) -> bytes:
    """The v1 relay op for ``lines``: JSON strings in the body, the envelope line a JSON string
    in the op (node_messages v1 and relay_client v1, as they were before issue 12)."""
    full = {**body, "messages": [line.decode() for line in lines], "channel": channel,
            "band": "provide-feeds", "time_ms": NOW, "nonce": "0" * 24}
    raw = orjson.dumps(full, option=orjson.OPT_SORT_KEYS)
    sig = key.sign(b"kachery-pubsub-v1\x00" + hashlib.sha256(raw).digest())
    line = raw + b"\t" + key.public_hex.encode() + b"\t" + sig.hex().encode()
    return orjson.dumps({"op": "publish", "band": band_name(channel, "provideFeeds"), "data": line.decode()})


def v2_records(key: Keypair, channel: str, body: dict, lines: list[bytes]) -> tuple[bytes, bytes]:
    message = seal(key, channel=channel, band="provide-feeds", body=body, now_ms=NOW,
                   attachment=kf.encode_segment(lines))
    band = band_name(channel, pubsub_band("provide-feeds"))
    return (relay_frames.encode_publish(17, band, message),
            relay_frames.encode_message(band, key.public_hex, NOW, message))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channel", default="lab.ephys", help="channel name (its length counts)")
    args = parser.parse_args()
    key = Keypair.generate()
    with tempfile.TemporaryDirectory() as tmp:
        store = kf.open_store(Path(tmp) / "feeds.db")
        sf = store.create_feed().load_subfeed("sensor")
        for i in range(100):
            sf.append_message({"t": i, "value": i * 1.5, "note": "small"})
        all_lines = sf.get_signed_messages(0, 100)
        body = {"type": "newSubfeedMessages", "feed_id": sf.feed_id, "subfeed_hash": sf.subfeed_hash}
        print(f"relay op bytes per newSubfeedMessages, channel {args.channel!r}\n")
        print(f"{'messages':>8} {'wire lines':>10} {'v1 op':>14} {'v2 publish':>14} {'v2 delivered':>14}")
        for n in (1, 10, 100):
            lines = all_lines[:n]
            wire = sum(len(line) for line in lines)
            v1 = len(v1_relay_op(key, args.channel, body, lines))
            publish, delivered = (len(x) for x in v2_records(key, args.channel, body, lines))
            print(f"{n:>8} {wire:>10} {v1:>7} {v1 / wire:>5.3f}x {publish:>7} {publish / wire:>5.3f}x "
                  f"{delivered:>7} {delivered / wire:>5.3f}x")
        store.close()


if __name__ == "__main__":
    main()

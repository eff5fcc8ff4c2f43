"""Follow a subfeed live, wherever it lives, and print each message as it arrives.

    python examples/follow_remote_feed.py feed://<feedId>/<subfeed> [--channel lab] [--count N]

If this node does not own the feed, its daemon (`kachery node start`) follows it on the node's
channels: it catches up from the channel's bucket, then receives new messages within
milliseconds of their append on the owner's node. Every message is verified before it is stored.
"""

from __future__ import annotations

import argparse
import json
import time

import kachery_node as kn


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("uri", help="subfeed URI, feed://<feedId>/<name>")
    parser.add_argument("--channel", help="only this channel (default: every joined channel)")
    parser.add_argument("--start", type=int, default=0, help="first message number")
    parser.add_argument("--count", type=int, default=0, help="stop after this many messages")
    parser.add_argument("--timeout", type=float, default=None, help="stop after this many idle seconds")
    args = parser.parse_args()

    # live=True: wait for messages even if none can be found yet (else SubfeedNotFoundError
    # would say what was tried: the owner offline and nothing published).
    subfeed = kn.load_subfeed(args.uri, channel=args.channel, live=True)
    print(f"following {subfeed.uri}", flush=True)
    for i, record in enumerate(subfeed.follow(start=args.start, timeout=args.timeout, records=True), 1):
        age_ms = time.time() * 1000 - record.timestamp_ms
        print(f"#{record.number} ({age_ms:.1f} ms after append) {json.dumps(record.payload)}", flush=True)
        if args.count and i >= args.count:
            break


if __name__ == "__main__":
    main()

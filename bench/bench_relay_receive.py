"""Benchmark: the hub's CPU to receive one publish, alone on the wire, on each of the relay's two
receive paths (hub/direct_receive.py).

    .venv/bin/python bench/bench_relay_receive.py [--messages 3000] [--interval-ms 1] [--rounds 3]

Hubs (``kachery hub serve``, real processes), each with a channel, one publishing connection
and one subscribing connection (drained by a thread), raw WebSockets from this process with
masked frames written by hand (so the script runs against any tree):

* "this tree, plain": a plain connection, which the relay reads itself (its fast path);
* "this tree, deflate": one that negotiated permessage-deflate, which the relay leaves to
  hypercorn/wsproto/ASGI (the ordinary path; its frames are sent uncompressed, which is valid,
  but wsproto's extension hooks still run, so this is not the ordinary path's cost alone);
* with ``--other KACHERY``: a plain connection to a hub of another tree (e.g. a worktree of main
  before the fast path, with its own venv): the A/B.

Each round, hub after hub: ``--messages`` publishes of 200 bytes (no ack), one every
``--interval-ms`` (so the hub reads each frame on its own, as live pushes come), each fanned out
to the subscriber; the hub process's CPU time (user + system) over them, less its background
(the same process idle, measured right after). Printed: the hub's CPU per message, min / median
/ max over the rounds, and each channel's relay figures (``messages_in_direct``: read by the
relay itself).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from kachery_node.identity import Keypair
from kachery_node.protocol import relay_frames
from kachery_node.transport.hub_client import HubClient

KACHERY = str(Path(sys.executable).parent / "kachery")
CHANNEL = "bench.receive"


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client's frame (FIN, masked), written here so that the script needs no codec."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    else:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    key = os.urandom(4)
    stream = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")
    return head + key + masked


def connect(url: str, token: str, deflate: bool) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ext = "Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else ""
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /pubsub HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                  f"{ext}\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head
    assert (b"permessage-deflate" in head.lower()) == deflate, head
    sock.sendall(masked_frame(0x1, json.dumps({"op": "auth", "token": token, "v": 2}).encode()))
    return sock


def drain(sock: socket.socket) -> None:
    """Read and drop what the hub sends (replies, heartbeats, messages) until it closes."""
    sock.settimeout(None)
    try:
        while sock.recv(1 << 16):
            pass
    except OSError:
        pass


def hub_cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def start_hub(kachery: str, hub_dir: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([kachery, "hub", "serve", "--dir", str(hub_dir), "--port", "0",
                             "--max-publish-rate", "1000000"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while not (hub_dir / "hub.json").exists():
        if proc.poll() is not None:
            raise SystemExit(f"{kachery} hub serve did not start")
        time.sleep(0.05)
    return proc, json.loads((hub_dir / "hub.json").read_text())["url"]


class Setup:
    """One hub with a channel, a publishing connection (plain, or with permessage-deflate) and a
    subscribing one, drained by a thread."""

    def __init__(self, kachery: str, hub_dir: Path, deflate: bool) -> None:
        self.proc, url = start_hub(kachery, hub_dir)
        self.hub = psutil.Process(self.proc.pid)
        self.owner = HubClient(url, user_key=Keypair.generate())
        self.owner.create_channel(CHANNEL)

        def node(roles: list[str]) -> HubClient:
            c = HubClient(url, user_key=Keypair.generate(), node_key=Keypair.generate())
            c.register_node("bench")
            c.request_roles(CHANNEL, c.node_key.public_hex, roles)
            self.owner.grant(CHANNEL, c.node_key.public_hex, roles)
            return c

        pub, sub = node(["request-files"]), node(["provide-files"])
        band = f"{CHANNEL}-requestFiles"
        self.sock = connect(url, pub.pubsub_credentials(CHANNEL)["token"], deflate=deflate)
        subscriber = connect(url, sub.pubsub_credentials(CHANNEL)["token"], deflate=False)
        subscriber.sendall(masked_frame(0x1, json.dumps({"op": "subscribe", "band": band}).encode()))
        for s in (self.sock, subscriber):
            threading.Thread(target=drain, args=(s,), daemon=True).start()
        self.frame = masked_frame(0x2, relay_frames.encode_publish(0, band, b"x" * 200))

    def relay_figures(self) -> dict:
        [status] = self.owner.hub_status()["channels"]
        return status["relay"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--interval-ms", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--other", metavar="KACHERY",
                    help="also a hub run by this kachery executable (another tree's venv), alternated "
                         "with this tree's round by round: an A/B under the same load")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        setups: dict[str, Setup] = {}
        try:
            setups["this tree, plain"] = Setup(KACHERY, Path(tmp) / "a", deflate=False)
            setups["this tree, deflate"] = Setup(KACHERY, Path(tmp) / "b", deflate=True)
            if args.other:
                setups["other tree, plain"] = Setup(args.other, Path(tmp) / "c", deflate=False)
            time.sleep(0.5)
            results: dict[str, list[float]] = {name: [] for name in setups}
            interval = args.interval_ms / 1000
            for r in range(args.rounds):
                for name, s in setups.items():
                    cpu0, t0 = hub_cpu(s.hub), time.monotonic()
                    for i in range(args.messages):
                        s.sock.sendall(s.frame)
                        while time.monotonic() < t0 + (i + 1) * interval:
                            time.sleep(interval / 4)
                    time.sleep(0.05)
                    busy, elapsed = hub_cpu(s.hub) - cpu0, time.monotonic() - t0
                    cpu1 = hub_cpu(s.hub)
                    time.sleep(min(elapsed, 2.0))
                    idle = (hub_cpu(s.hub) - cpu1) * elapsed / min(elapsed, 2.0)
                    per = (busy - idle) / args.messages * 1e6
                    results[name].append(per)
                    print(f"round {r + 1} {name:20s}: hub CPU {busy * 1e6 / args.messages:6.1f} µs/message, "
                          f"{idle * 1e6 / args.messages:5.1f} of it background -> {per:6.1f} µs "
                          f"(load {os.getloadavg()[0]:.1f})", flush=True)
            for name, s in setups.items():
                figures = s.relay_figures()
                print(f"{name}: relay messages_in {figures['messages_in']}, "
                      f"read by the relay itself {figures.get('messages_in_direct', '(no such figure)')}")
            print("| hub | CPU per publish received and fanned out to 1 (µs), min / median / max |")
            print("|---|---|")
            for name, values in results.items():
                print(f"| {name} | {min(values):.1f} / {statistics.median(values):.1f} / {max(values):.1f} |")
        finally:
            for s in setups.values():
                s.stop()


if __name__ == "__main__":
    main()

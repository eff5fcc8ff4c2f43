"""CPU per received message of the node's relay client (issue 15, the live path's receiving end).

A stand-in relay in a child process (plain sockets, no kachery code: so the same script measures
any revision of the client) accepts one WebSocket connection, answers ``auth``, then sends N
binary frames, one ``message`` record each (spec/pubsub.md §3), spaced by ``--gap`` so that each
arrives on its own as a live push does. This process opens the relay client
(``open_embedded_pubsub``) and consumes ``messages()`` as the daemon's channel runtime does; the
CPU time of this process from the first message to the last, divided by the messages, is the
client's cost of receiving one (socket read, WebSocket frame, record decoding, hand-off to the
consumer). CPU, not wall time: the figure holds on a loaded machine.

    .venv/bin/python bench/bench_relay_client.py --messages 4000 --rounds 5
    # another revision's client, e.g. main's, from a worktree of it:
    PYTHONPATH=/path/to/main .venv/bin/python bench/bench_relay_client.py
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
BAND = "bench.relay-provideFeeds"
SENDER = bytes(range(32))


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _read_client_frame(conn: socket.socket) -> tuple[int, bytes]:
    b0, b1 = _recv_exact(conn, 2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack(">H", _recv_exact(conn, 2))
    elif n == 127:
        (n,) = struct.unpack(">Q", _recv_exact(conn, 8))
    key = _recv_exact(conn, 4)
    payload = _recv_exact(conn, n)
    stream = (key * (n // 4 + 1))[:n]
    return b0 & 0x0F, (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def _server_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    head = bytes((0x80 | opcode, n)) if n < 126 else bytes((0x80 | opcode, 126)) + struct.pack(">H", n)
    return head + payload


def serve(messages: int, size: int, gap: float) -> None:
    """The stand-in relay (child process): one connection, then ``messages`` frames."""
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    head = b""
    while b"\r\n\r\n" not in head:
        head += conn.recv(4096)
    key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:"))
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    while True:
        opcode, payload = _read_client_frame(conn)
        ops = json.loads(payload) if opcode == 1 else []
        auth = next((op for op in (ops if isinstance(ops, list) else [ops]) if op.get("op") == "auth"), None)
        if auth is not None:
            break
    reply = json.dumps([{"op": "connected", "id": auth["id"], "v": 2, "capability": {}}]).encode()
    conn.sendall(_server_frame(1, reply))
    band = BAND.encode()
    for i in range(messages):
        body = i.to_bytes(8, "big") + b"m" * (size - 8)
        record = (bytes((0x02, len(band))) + band + SENDER + struct.pack(">Q", time.time_ns() // 10**6)
                  + struct.pack(">I", len(body)) + body)
        conn.sendall(_server_frame(2, record))
        deadline = time.perf_counter() + gap
        while time.perf_counter() < deadline:  # finer than time.sleep
            pass
    try:  # wait for the client's close frame, answer it
        while _read_client_frame(conn)[0] != 8:
            pass
        conn.sendall(_server_frame(8, struct.pack(">H", 1000)))
    except (EOFError, OSError):
        pass
    conn.close()


async def one_round(messages: int, size: int, gap: float) -> dict:
    import trio

    from kachery_node.transport.pubsub.relay_client import open_embedded_pubsub

    child = subprocess.Popen([sys.executable, __file__, "--serve", str(messages), str(size), str(gap)],
                             stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())
        credentials = {"backend": "embedded", "url": f"ws://127.0.0.1:{port}/pubsub", "token": "t",
                       "capability": {}, "expires_ms": 2**62}
        async with open_embedded_pubsub(credentials) as pubsub:
            got = 0
            with trio.fail_after(60 + messages * gap * 4):
                async for message in pubsub.messages():
                    if got == 0:
                        cpu0, wall0 = time.process_time(), time.perf_counter()
                    assert int.from_bytes(message.data[:8], "big") == got
                    got += 1
                    if got == messages:
                        break
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    n = messages - 1
    return {"cpu_us": cpu / n * 1e6, "wall_us": wall / n * 1e6}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--size", type=int, default=300, help="bytes of each message")
    parser.add_argument("--gap", type=float, default=0.0005, help="seconds between frames")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import trio

    import kachery_node

    results = [trio.run(one_round, args.messages, args.size, args.gap) for _ in range(args.rounds)]
    cpu = sorted(r["cpu_us"] for r in results)
    print(f"relay client ({os.path.dirname(kachery_node.__file__)}): {args.messages} messages of "
          f"{args.size} B, one frame each, {args.gap * 1e6:.0f} µs apart, {args.rounds} rounds")
    print(f"  CPU per message: min {cpu[0]:.1f} µs, median {statistics.median(cpu):.1f} µs, "
          f"max {cpu[-1]:.1f} µs   (rounds: {', '.join(f'{c:.1f}' for c in (r['cpu_us'] for r in results))})")


if __name__ == "__main__":
    main()

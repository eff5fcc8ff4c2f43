"""Bytes moved and time for a 100-byte range of a large remote file (issue 14).

Run from the repository root::

    .venv/bin/python bench/bench_remote_range.py               # a 200 MB file
    .venv/bin/python bench/bench_remote_range.py --size 1G     # bounded by the disk: the file is
                                                               # stored twice (A, the bucket)

Real processes on loopback (bench/network/netlab.py): one hub (API, relay, embedded bucket),
reached only through a byte-counting TCP forwarder (the hub's ``--public-url`` is the
forwarder's, so the bucket's read URL is too); node A (daemon) which stores the file and uploads
it to the channel's bucket, node B with **no daemon**, node C with a daemon. Measured, each in a
fresh process:

* B: ``kn.load_bytes(uri, mid, mid + 100)`` (the bucket, read by the script itself);
* C: the same call, through C's daemon (its ``/api/files/fetch`` range mode, from the bucket);
* B: ``kn.load_file(uri)`` afterwards (the rest of the file), for comparison.

"from hub" is what the forwarder carried from the hub to every client during the read (the
reader's bucket GETs, plus whatever else flowed then: the daemons' relay connections idle at a
few hundred bytes), which a range read should keep to one 20 MB chunk plus small objects (the
manifest). "partial copy" is the disk space the partial copy took (allocated blocks of
``tmp/partial/<sha1>/content``, which is sparse). A benchmark, not a test: it prints a table and
never fails.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE / "network"))

from netlab import ALL_ROLES, KACHERY, Node, free_port  # noqa: E402


class CountingForwarder:
    """A TCP forwarder from a loopback port to the hub, counting the bytes the hub sends."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.from_hub = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=30)
            upstream.settimeout(None)
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        try:
            while data := src.recv(1 << 20):
                dst.sendall(data)
                if counted:
                    with self._lock:
                        self.from_hub += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._server.close()


def start_hub(hub_dir: Path) -> tuple[subprocess.Popen, CountingForwarder]:
    port = free_port()
    forwarder = CountingForwarder(port)
    hub_dir.mkdir(parents=True)
    with open(hub_dir / "stderr.txt", "ab") as err:
        proc = subprocess.Popen([*KACHERY, "hub", "serve", "--dir", str(hub_dir), "--port", str(port),
                                 "--public-url", f"http://127.0.0.1:{forwarder.port}"],
                                stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 30
    while not (hub_dir / "hub.json").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"hub did not start:\n{(hub_dir / 'stderr.txt').read_text()[-3000:]}")
        time.sleep(0.05)
    return proc, forwarder

READ = """
import json, os, sys, time
import kachery_node as kn
uri, what, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
if what == "range":
    data = kn.load_bytes(uri, start, start + 100)
    assert len(data) == 100
else:
    kn.load_file(uri)
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""


CHANNEL = "bench"


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def measure(node: Node, uri: str, what: str, start: int, forwarder: CountingForwarder) -> dict:
    before = forwarder.from_hub
    out = subprocess.run([sys.executable, "-c", READ, uri, what, str(start)],
                         env=node.env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"[{node.label}] {what} failed:\n{out.stderr}")
    return {**json.loads(out.stdout), "from_hub": forwarder.from_hub - before}


def partial_bytes(node: Node, sha1: str) -> int:
    content = node.storage_dir / "tmp" / "partial" / sha1 / "content"
    return content.stat().st_blocks * 512 if content.exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="200M", help="file size (default 200M; K, M, G suffixes)")
    parser.add_argument("--tmp", default=None, help="where the nodes and the hub keep their files")
    args = parser.parse_args()
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="kachery-range-") as tmp:
        root = Path(tmp)
        hub, forwarder = start_hub(root / "hub")
        hub_url = f"http://127.0.0.1:{forwarder.port}"
        nodes: list[Node] = []
        try:
            a, b, c = (Node(root, label, hub_url) for label in "abc")
            nodes += [a, b, c]
            a.run("channel", "create", CHANNEL)
            for node, roles in ((a, ALL_ROLES), (b, ["request-files"]), (c, ["request-files"])):
                node.run("node", "join", CHANNEL, "--roles", ",".join(roles))
                a.run("channel", "grant", CHANNEL, node.node_id, *roles)
            for node in (a, c):  # b has no daemon
                node.start()
                node.wait_connected()
            src = root / "big.dat"
            with open(src, "wb") as f:
                left = size
                while left:
                    f.write(os.urandom(min(left, 1 << 24)))
                    left -= min(left, 1 << 24)
            upload = f"import kachery_node as kn; print(kn.upload_file({str(src)!r}, channel={CHANNEL!r}))"
            t0 = time.perf_counter()
            uri = subprocess.run([sys.executable, "-c", upload], env=a.env, capture_output=True, text=True,
                                 timeout=3600, check=True).stdout.strip()
            print(f"uploaded {size:,} bytes in {time.perf_counter() - t0:.1f} s: {uri}", file=sys.stderr)
            sha1 = uri.split("://")[1].split("/")[0].split("?")[0]
            mid = size // 2
            rows = [
                ("B, no daemon: load_bytes, 100 bytes", measure(b, uri, "range", mid, forwarder),
                 partial_bytes(b, sha1)),
                ("C, daemon: load_bytes, 100 bytes", measure(c, uri, "range", mid, forwarder),
                 partial_bytes(c, sha1)),
                ("B, no daemon: load_file, the rest", measure(b, uri, "file", 0, forwarder),
                 partial_bytes(b, sha1)),
            ]
        finally:
            for node in nodes:
                if node.pid is not None:
                    node.stop()
            hub.send_signal(signal.SIGTERM)
            hub.wait(timeout=30)
            forwarder.close()
    print(f"\nremote reads of a {size:,}-byte file (chunks of 20,000,000 bytes), from the bucket\n")
    print(f"| {'read':<38} | {'time':>8} | {'from hub':>14} | {'partial copy':>14} |")
    print(f"|{'-' * 40}|{'-' * 10}:|{'-' * 15}:|{'-' * 15}:|")
    for name, m, partial in rows:
        print(f"| {name:<38} | {m['seconds']:>6.2f} s | {m['from_hub']:>14,} | {partial:>14,} |")


if __name__ == "__main__":
    main()

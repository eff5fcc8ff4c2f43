"""``kachery demo``: a whole kachery network on this machine, in a temporary folder, in one command.

It starts a hub (with its embedded relay and bucket) and two nodes, alice and bob, as real
processes; alice creates a channel and grants roles; then alice appends to a feed while bob
follows it live, and bob fetches a large file from alice with a progress bar. It prints what
happened with timings and removes everything it made (unless ``--keep``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import click

from .daemon_client import DaemonClient

# -P: the directory the demo was run from is not on its processes' sys.path (see start_daemon).
KACHERY = [sys.executable, "-P", "-c", "from kachery_node.cli import main; main()"]
ROLES_ALICE = "request-files,provide-files,request-feeds,provide-feeds"
ROLES_BOB = "request-files,request-feeds"


def _say(text: str) -> None:
    click.echo(text)


class _Node:
    def __init__(self, root: Path, label: str, hub_url: str) -> None:
        self.label = label
        self.storage_dir = root / label / "storage"
        self.env = {
            **os.environ,
            "KACHERY_STORAGE_DIR": str(self.storage_dir),
            "KACHERY_USER_DIR": str(root / label / "user"),
            "KACHERY_HUB_URL": hub_url,
            "KACHERY_DAEMON_PORT": str(_free_port()),
        }
        self.run("init", "--label", label)
        self.node_id = json.loads(self.run("info", "--json"))["node_id"]

    def run(self, *args: str) -> str:
        result = subprocess.run([*KACHERY, *args], env=self.env, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise click.ClickException(f"[{self.label}] kachery {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def python(self, code: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-P", "-c", code],
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _hub(root: Path) -> Iterator[str]:
    hub_dir = root / "hub"
    hub_dir.mkdir(parents=True)
    log = open(hub_dir / "stderr.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [*KACHERY, "hub", "serve", "--dir", str(hub_dir), "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 30
        while not (hub_dir / "hub.json").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise click.ClickException(
                    "the hub did not start: " + (hub_dir / "stderr.log").read_text()[-500:]
                )
            time.sleep(0.05)
        yield json.loads((hub_dir / "hub.json").read_text())["url"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextmanager
def _daemon(node: _Node) -> Iterator[DaemonClient]:
    node.run("node", "start")
    client = DaemonClient(node.storage_dir)
    try:
        deadline = time.monotonic() + 30
        while not all(ch["state"] == "connected" for ch in client.status()["channels"] or [{"state": ""}]):
            if time.monotonic() > deadline:
                raise click.ClickException(f"{node.label}'s daemon did not connect to the channel")
            time.sleep(0.05)
        yield client
    finally:
        try:
            client.stop()
        except Exception:
            pass


_WRITER = """
import sys, time, kachery_node as kn
sf = kn.create_feed().load_subfeed("readings")
print(sf.uri, flush=True)
sys.stdin.readline()                                   # wait until bob follows
for i in range({n}):
    sf.append_message({{"i": i, "temperature": 20 + (i * 7 % 10) / 10, "sent_ns": time.time_ns()}})
    time.sleep({interval})
"""

_FOLLOWER = """
import json, time, kachery_node as kn
sf = kn.load_subfeed({uri!r}, live=True)               # the daemon follows it; still empty
print("ready", flush=True)
for record in sf.follow(start=0, timeout=30, records=True):
    p = record.payload
    ms = (time.time_ns() - p["sent_ns"]) / 1e6
    print(json.dumps({{"i": p["i"], "t": p["temperature"], "ms": ms}}), flush=True)
    if p["i"] == {last}:
        break
"""


def run_demo(messages: int, file_mb: int, keep: bool) -> None:
    root = Path(tempfile.mkdtemp(prefix="kachery-demo-"))
    t_start = time.monotonic()
    try:
        with ExitStack() as stack:
            _say(f"kachery demo in {root}")
            _say("  starting a hub (API, web UI, pub-sub relay, bucket)…")
            hub_url = stack.enter_context(_hub(root))
            _say(f"  hub at {hub_url}")
            _say("  making two nodes, alice and bob (a storage folder and keys each)…")
            alice, bob = _Node(root, "alice", hub_url), _Node(root, "bob", hub_url)
            _say("  alice creates channel 'demo'; both join it; alice grants their roles…")
            alice.run("channel", "create", "demo")
            alice.run("node", "join", "demo", "--roles", ROLES_ALICE)
            bob.run("node", "join", "demo", "--roles", ROLES_BOB)
            alice.run("channel", "grant", "demo", alice.node_id, *ROLES_ALICE.split(","))
            alice.run("channel", "grant", "demo", bob.node_id, *ROLES_BOB.split(","))
            _say(
                f"  channel 'demo' created by alice; alice may provide, bob may request "
                f"(nodes {alice.node_id[:8]}…, {bob.node_id[:8]}…)"
            )
            _say("  starting both nodes' daemons and waiting until they are connected…")
            stack.enter_context(_daemon(alice))
            stack.enter_context(_daemon(bob))
            _say(f"  both daemons connected ({time.monotonic() - t_start:.1f} s so far)\n")

            _say(f"Live feed: alice appends {messages} readings; bob's script follows them")
            writer = alice.python(_WRITER.format(n=messages, interval=0.02))
            uri = writer.stdout.readline().strip()
            follower = bob.python(_FOLLOWER.format(uri=uri, last=messages - 1))
            if follower.stdout.readline().strip() != "ready":
                raise click.ClickException("bob's follower did not start")
            writer.stdin.write("go\n")
            writer.stdin.close()
            latencies = []
            for line in follower.stdout:
                row = json.loads(line)
                latencies.append(row["ms"])
                if row["i"] < 5 or row["i"] == messages - 1:
                    _say(
                        f"  bob got reading #{row['i']:<4} temperature {row['t']:.1f}  "
                        f"{row['ms']:6.2f} ms after alice's append"
                    )
                elif row["i"] == 5:
                    _say("  …")
            follower.wait(timeout=60)
            writer.wait(timeout=60)
            if len(latencies) != messages:
                raise click.ClickException(f"bob received {len(latencies)} of {messages} messages")
            latencies.sort()
            p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)]
            _say(
                f"  {messages} signed messages, each verified by bob: median "
                f"{statistics.median(latencies):.2f} ms, p99 {p99:.2f} ms\n"
            )

            _say(f"Large file: bob fetches {file_mb} MB that only alice has")
            big = root / "big.dat"
            with open(big, "wb") as f:
                for _ in range(file_mb):
                    f.write(os.urandom(1_000_000))
            file_uri = alice.run("store", str(big)).strip()
            _say(f"  alice stored it: {file_uri}")
            t0 = time.monotonic()
            _fetch_with_progress(bob, file_uri)
            took = time.monotonic() - t0
            _say(f"  bob has it, hash verified: {file_mb / took:.0f} MB/s ({took:.1f} s)\n")
        _say(f"Done in {time.monotonic() - t_start:.1f} s.")
    finally:
        if keep:
            _say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def _fetch_with_progress(node: _Node, uri: str) -> None:
    from tqdm import tqdm

    from .remote_reads import fetch_file

    bar = tqdm(
        total=0,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="  bob ← alice",
        file=sys.stderr,
        leave=False,
        disable=None,
    )
    seen = 0

    def progress(done: int, total: int) -> None:
        nonlocal seen
        if total and bar.total != total:
            bar.total = total
        bar.update(done - seen)
        seen = done

    try:
        fetch_file(node.storage_dir, uri, progress=progress)
    finally:
        bar.close()


@click.command()
@click.option("--messages", type=int, default=100, show_default=True, help="Feed messages alice appends.")
@click.option("--file-mb", type=int, default=100, show_default=True, help="Size of the file bob fetches.")
@click.option("--keep", is_flag=True, help="Keep the temporary folder (hub, storages, logs).")
def demo(messages: int, file_mb: int, keep: bool) -> None:
    """Run a hub and two nodes in a temporary folder: a live feed and a large file between them."""
    if messages < 1 or file_mb < 1:
        raise click.BadParameter("--messages and --file-mb must be at least 1")
    run_demo(messages, file_mb, keep)

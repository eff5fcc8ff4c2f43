"""Many lightweight nodes for the scale benchmarks (bench_fanout.py, bench_file_requests.py).

A *lightweight node* is a real node identity (an Ed25519 node key registered to a user on the
hub, requesting roles on the channel, granted by the channel's owner through signed hub requests,
exactly what ``kachery node join`` and ``kachery channel grant`` send) with real pub-sub
credentials from the hub (``pubsub_token``), but no daemon: the benchmark drives its pub-sub
connection (the project's own client, :func:`~kachery_node.transport.pubsub.open_pubsub.open_pubsub`)
and its bucket requests itself, many nodes in one process. A 2-core machine runs 200 of these,
not 200 daemons.

:func:`start_network` starts a hub (and a NATS server for the ``nats`` backend) and the owner
node (a real daemon, set up with the real CLI, not started yet) with the channel created on it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
for p in (str(HERE), str(ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)

import psutil  # noqa: E402
from netlab import ALL_ROLES, Hub, Node  # noqa: E402

from kachery_node.identity import Keypair, load_user_key  # noqa: E402
from kachery_node.transport.hub_client import HubClient  # noqa: E402


@dataclass
class LightNode:
    """A registered, granted node identity with its pub-sub credentials."""

    seed_hex: str
    node_id: str
    credentials: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"seed_hex": self.seed_hex, "node_id": self.node_id, "credentials": self.credentials}


class Network:
    """A hub (and nats-server for ``backend="nats"``) and the channel's owner node A."""

    def __init__(self, root: Path, channel: str, backend: str = "embedded") -> None:
        self.root, self.channel, self.backend = root, channel, backend
        self.nats = None
        self.hub: Hub | None = None
        self.owner: Node | None = None
        try:
            create_args: list[str] = []
            if backend == "nats":
                from tests.standins import NatsCluster

                self.nats = NatsCluster(root / "nats")
                seed = self.nats.seed_file(root / "nats-account.seed")
                create_args = ["--pubsub", self.nats.url(), "--nats-account-seed", str(seed)]
            elif backend != "embedded":
                raise ValueError(f"backend {backend!r}: embedded or nats")
            self.hub = Hub(root / "hub")
            self.owner = Node(root, "A", self.hub.url)
            self.owner.run("channel", "create", channel, *create_args)
            self.owner.run("node", "join", channel, "--roles", ",".join(ALL_ROLES))
            self.owner.run("channel", "grant", channel, self.owner.node_id, *ALL_ROLES)
            self.owner_client = HubClient(self.hub.url, user_key=load_user_key(self.owner.user_dir))
        except BaseException:
            self.stop()
            raise

    def add_light_nodes(self, n: int, roles: list[str], label: str = "light") -> list[LightNode]:
        """Register ``n`` node identities to one user, request and grant ``roles`` on the channel,
        and fetch each one's pub-sub credentials (four signed hub requests a node)."""
        assert self.hub is not None
        user = Keypair.generate()
        nodes = []
        for i in range(n):
            key = Keypair.generate()
            with HubClient(self.hub.url, user_key=user, node_key=key) as client:
                client.register_node(f"{label}-{i}")
                client.request_roles(self.channel, key.public_hex, roles)
                self.owner_client.grant(self.channel, key.public_hex, roles)
                credentials = client.pubsub_credentials(self.channel)
                nodes.append(LightNode(key.seed_hex(), key.public_hex, credentials))
        return nodes

    def pids(self) -> dict[str, int]:
        """The server processes: the hub, nats-server if any, and the owner's daemon if started."""
        assert self.hub is not None and self.owner is not None
        out = {"hub": self.hub.pid}
        if self.nats is not None:
            out["nats-server"] = self.nats.procs[0].pid
        if self.owner.pid:
            out["owner daemon"] = self.owner.pid
        return out

    def wire_counters(self) -> dict[str, int]:
        """Messages and payload bytes the pub-sub service took in and delivered so far: the
        relay's per-channel traffic (``kachery hub status``) or nats-server's ``/varz``."""
        if self.nats is not None:
            url = f"http://127.0.0.1:{self.nats.monitor_ports[0]}/varz"
            with urllib.request.urlopen(url, timeout=10) as resp:
                v = json.loads(resp.read())
            return {"messages_in": v["in_msgs"], "messages_out": v["out_msgs"],
                    "bytes_in": v["in_bytes"], "bytes_out": v["out_bytes"]}
        status = self.owner_client.hub_status()
        keys = ("messages_in", "messages_out", "bytes_in", "bytes_out")
        return {k: sum(ch["relay"][k] for ch in status["channels"]) for k in keys}

    def stop(self) -> None:
        if self.owner is not None:
            try:
                self.owner.stop()
            except Exception as exc:
                print(f"[bench] stopping the owner: {exc}", file=sys.stderr)
        if self.hub is not None:
            self.hub.stop()
        if self.nats is not None:
            self.nats.stop()


def wait_for(pred, timeout: float, what: str, poll: float = 0.05) -> None:
    """Poll ``pred()`` until true; RuntimeError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds so far of process ``pid`` (all its threads)."""
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


class WorkerProcesses:
    """The benchmark's worker processes (``script mode``), each holding many lightweight nodes:
    each is given its job (one JSON line), says ``ready`` once its nodes are up, then answers
    one line per line asked of it until it reads ``stop_line``."""

    def __init__(self, script: str, mode: str, jobs: list[dict], *, stop_line: str,
                 stop_timeout: float) -> None:
        self._stop_line, self._stop_timeout = stop_line, stop_timeout
        self.procs: list[subprocess.Popen] = []
        for job in jobs:
            p = subprocess.Popen([sys.executable, script, mode], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
            self.procs.append(p)
            self._say(p, json.dumps(job))
        for p in self.procs:
            line = p.stdout.readline()  # type: ignore[union-attr]
            if line.strip() != "ready":
                raise RuntimeError(f"a {mode} worker did not start (said {line!r})")

    def ask(self, lines: list[str]) -> list[Any]:
        """Send ``lines[i]`` to worker i (all first, so they work at once), then read each one's
        JSON answer, in worker order."""
        for p, line in zip(self.procs, lines, strict=True):
            self._say(p, line)
        return [json.loads(p.stdout.readline()) for p in self.procs]  # type: ignore[union-attr]

    def stop(self) -> None:
        for p in self.procs:
            try:
                self._say(p, self._stop_line)
            except OSError:
                pass
        for p in self.procs:
            try:
                p.wait(timeout=self._stop_timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)

    @staticmethod
    def _say(p: subprocess.Popen, line: str) -> None:
        p.stdin.write(line + "\n")  # type: ignore[union-attr]
        p.stdin.flush()  # type: ignore[union-attr]

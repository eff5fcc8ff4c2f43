"""A small kachery network of real processes for the network benchmarks.

A hub (``kachery hub serve --port 0``) and nodes, each with its own storage dir, user dir and
daemon port, set up with the real CLI exactly as ``tests/network/conftest.py`` does: ``kachery
init``, the owner's ``kachery channel create``, ``kachery node join CH --roles ...``,
``kachery channel grant ...`` and ``kachery node start``.

With ``profile_dir`` set (``run.py --profile DIR``), the hub and the daemons run under cProfile
instead (``python -m cProfile -o DIR/<name>.prof ...``, started by this harness in place of
``kachery node start``); each writes its profile when it is stopped (SIGTERM / ``/api/stop``),
which is a graceful shutdown for both. cProfile sees only the main thread (the event loop);
with ``pyspy`` set (``run.py --py-spy DIR``) a ``py-spy record`` attaches to the hub and to each
daemon once started and writes collapsed stacks of every thread (``DIR/<name>.txt``, CPU
samples only) when that process exits.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
_kachery = Path(sys.executable).parent / "kachery"
KACHERY = (
    [str(_kachery)]
    if _kachery.exists()
    else [sys.executable, "-c", "from kachery_node.cli import main; main()"]
)
ALL_ROLES = ["request-files", "provide-files", "request-feeds", "provide-feeds"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # reap it if it is our child (a zombie still answers kill 0)
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        time.sleep(0.05)
    return False


class PySpy:
    """``py-spy record`` on processes until they exit (then it writes its file)."""

    def __init__(self, exe: str, out_dir: Path) -> None:
        self.exe, self.out_dir = exe, out_dir
        self.procs: list[subprocess.Popen] = []

    def attach(self, pid: int, name: str) -> None:
        cmd = [self.exe, "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
               "--output", str(self.out_dir / f"{name}.txt")]  # fmt: skip
        self.procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def stop(self) -> None:
        """Call after the targets stopped: py-spy then writes its output and exits."""
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGINT)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)


class Hub:
    def __init__(self, hub_dir: Path, profile_dir: Path | None = None) -> None:
        self.dir = hub_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        info_path = self.dir / "hub.json"
        args = ["hub", "serve", "--dir", str(self.dir), "--port", "0"]
        if profile_dir:
            cmd = [
                sys.executable,
                "-m",
                "cProfile",
                "-o",
                str(profile_dir / "hub.prof"),
                str(HERE / "netlab.py"),
                "_cli",
                *args,
            ]
        else:
            cmd = [*KACHERY, *args]
        with open(self.dir / "stderr.txt", "ab") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 30
        while not info_path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"hub did not start:\n{(self.dir / 'stderr.txt').read_text()[-3000:]}")
            time.sleep(0.05)
        time.sleep(0.05)  # the file is written in one go, but be safe against a partial read
        info = json.loads(info_path.read_text())
        self.url = info["url"]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class Node:
    def __init__(self, root: Path, label: str, hub_url: str, profile_dir: Path | None = None) -> None:
        self.label = label
        self.storage_dir = root / label / "storage"
        self.user_dir = root / label / "user"
        self.port = free_port()
        self.profile_dir = profile_dir
        self.env = {
            **os.environ,
            "KACHERY_STORAGE_DIR": str(self.storage_dir),
            "KACHERY_USER_DIR": str(self.user_dir),
            "KACHERY_DAEMON_PORT": str(self.port),
            "KACHERY_HUB_URL": hub_url,
        }
        self.run("init", "--label", label)
        self.node_id = json.loads(self.run("info", "--json"))["node_id"]
        self.proc: subprocess.Popen | None = None  # only when we start the daemon ourselves
        self.pid: int | None = None

    def run(self, *args: str, timeout: float = 60) -> str:
        r = subprocess.run([*KACHERY, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(
                f"[{self.label}] kachery {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
            )
        return r.stdout

    @property
    def client(self):
        from kachery_node.daemon_client import DaemonClient

        return DaemonClient(self.storage_dir)

    @property
    def token(self) -> str:
        return (self.storage_dir / "daemon-token").read_text().strip()

    def start(self, timeout: float = 30) -> None:
        if self.profile_dir:
            cmd = [
                sys.executable,
                "-m",
                "cProfile",
                "-o",
                str(self.profile_dir / f"daemon-{self.label}.prof"),
                "-m",
                "kachery_node.daemon",
                "--storage-dir",
                str(self.storage_dir),
            ]
            with open(self.storage_dir / "daemon.log", "ab") as log:
                self.proc = subprocess.Popen(
                    cmd,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            deadline = time.monotonic() + timeout
            while not self.client.is_running():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"[{self.label}] daemon did not start:\n{self.log()[-3000:]}")
                time.sleep(0.05)
        else:
            self.run("node", "start", "--json", timeout=timeout)
        self.pid = json.loads((self.storage_dir / "daemon.json").read_text())["pid"]

    def wait_connected(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            channels = self.client.status()["channels"]
            if channels and all(ch["state"] == "connected" for ch in channels):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.label} did not connect: {channels}\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the daemon: graceful first, SIGKILL by pid if it does not go within 20 s."""
        pid, self.pid = self.pid, None
        if pid is None:  # maybe `node start` failed after spawning it
            try:
                pid = json.loads((self.storage_dir / "daemon.json").read_text())["pid"]
            except (OSError, ValueError, KeyError):
                return
        try:
            self.client.request("POST", "/api/stop", timeout=5)
        except Exception:
            pass
        if not _wait_gone(pid, 20):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait_gone(pid, 10)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def log(self) -> str:
        path = self.storage_dir / "daemon.log"
        return path.read_text(errors="replace") if path.exists() else ""


class Lab:
    """A hub, one channel owned by the first node's user, and member nodes with running daemons."""

    def __init__(
        self, root: Path, channel: str = "bench", profile_dir: Path | None = None, pyspy: PySpy | None = None
    ) -> None:
        self.root, self.channel, self.profile_dir, self.pyspy = root, channel, profile_dir, pyspy
        self.hub = Hub(root / "hub", profile_dir)
        if pyspy:
            pyspy.attach(self.hub.pid, "hub")
        self.nodes: dict[str, Node] = {}
        self.owner: Node | None = None

    def add_node(self, label: str, roles: list[str]) -> Node:
        node = Node(self.root, label, self.hub.url, self.profile_dir)
        self.nodes[label] = node
        if self.owner is None:
            self.owner = node
            node.run("channel", "create", self.channel)
        node.run("node", "join", self.channel, "--roles", ",".join(roles))
        self.owner.run("channel", "grant", self.channel, node.node_id, *roles)
        node.start()
        if self.pyspy and node.pid:
            self.pyspy.attach(node.pid, f"daemon-{label}")
        node.wait_connected()
        return node

    def stop(self) -> None:
        for node in self.nodes.values():
            try:
                node.stop()
            except Exception as exc:  # keep stopping the others
                print(f"[bench] stopping {node.label}: {exc}", file=sys.stderr)
        self.hub.stop()
        if self.pyspy:
            self.pyspy.stop()


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "_cli":
    from kachery_node.cli import main

    main(sys.argv[2:], prog_name="kachery")

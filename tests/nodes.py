"""Real kachery nodes for the tests: a storage directory, `kachery init`, and a daemon process.

Every :class:`TestNode` registers with tests/processes.py: its daemon is stopped when the test
(or the fixture) that made it ends, pass or fail."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil

import kachery_node as kn
from kachery_node.daemon_client import DaemonClient
from tests import processes

KACHERY = str(Path(sys.executable).parent / "kachery")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_EPHEMERAL = _ephemeral_range()
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port free now, for a server a test is about to start.

    Chosen below the kernel's ephemeral range: a port from ``bind(0)`` comes from that range,
    where any outgoing connection (tests run in parallel) may take it before the server binds.
    """
    low = 10000 if _EPHEMERAL[0] > 12000 else 1024
    high = _EPHEMERAL[0] - 1 if _EPHEMERAL[0] > 12000 else 65535
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(low, high)
        if port in _handed_out or _EPHEMERAL[0] <= port <= _EPHEMERAL[1]:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free loopback port found")


class TestNode:
    """One node: its own storage dir, user dir and daemon port; `run` invokes the real CLI."""

    __test__ = False  # not a test class

    def __init__(self, root: Path, label: str, user_dir: Path | None = None) -> None:
        self.label = label
        self.storage_dir = root / label / "storage"
        self.user_dir = user_dir or root / label / "user"
        self.port = free_port()
        self.env = {**os.environ, "KACHERY_STORAGE_DIR": str(self.storage_dir),
                    "KACHERY_USER_DIR": str(self.user_dir), "KACHERY_DAEMON_PORT": str(self.port)}
        self._pids: set[int] = set()  # every daemon started for this storage
        processes.register(self)
        self.run("init", "--label", label)
        self.node_id = kn.load_node_config(self.storage_dir).node_id

    def run(self, *args: str, check: bool = True, timeout: float = 60, input: str | None = None
            ) -> subprocess.CompletedProcess:
        proc = subprocess.run([KACHERY, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(f"[{self.label}] kachery {' '.join(args)} failed "
                                 f"({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def json(self, *args: str, **kw) -> dict:
        return json.loads(self.run(*args, "--json", **kw).stdout)

    def start(self) -> dict:
        status = self.json("node", "start")
        pid = self._recorded_pid()
        if pid is not None:
            self._pids.add(pid)
        return status

    @property
    def client(self) -> DaemonClient:
        # Found as users' scripts find it: through the storage's daemon.json only.
        return DaemonClient(self.storage_dir)

    def _recorded_pid(self) -> int | None:
        try:
            return int(json.loads((self.storage_dir / "daemon.json").read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None

    def _daemon_process(self, pid: int) -> psutil.Process | None:
        """The live daemon of this storage with this pid (not a process that reused the pid)."""
        try:
            proc = psutil.Process(pid)
            cmdline = proc.cmdline()
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
        except psutil.Error:
            return None
        is_ours = "kachery_node.daemon" in cmdline and str(self.storage_dir) in cmdline
        return proc if is_ours else None

    def kill(self) -> int:
        """SIGKILL the daemon (a crash: no clean shutdown); returns its process ID."""
        info = json.loads((self.storage_dir / "daemon.json").read_text())
        os.kill(info["pid"], signal.SIGKILL)
        return info["pid"]

    def begin_stop(self) -> None:
        """Ask the daemon to stop, without waiting for its process to end (:meth:`stop` waits):
        a lab's daemons then exit side by side (each takes a second or two)."""
        recorded = self._recorded_pid()
        if recorded is not None:
            self._pids.add(recorded)  # daemon.json may be gone once it stopped
        if self.client.is_running():
            try:
                self.client.stop()
            except Exception:
                pass  # stop()'s signals end it

    def stop(self) -> None:
        """Stop the daemon if one runs: through its API, else (or if it lingers) by signal."""
        self.begin_stop()
        for pid in set(self._pids):
            proc = self._daemon_process(pid)
            if proc is None:
                continue
            try:
                proc.wait(10)  # it may still be closing its storage after the API went quiet
            except psutil.TimeoutExpired:
                processes.terminate(proc)
            except psutil.Error:
                pass

    def log(self) -> str:
        path = self.storage_dir / "daemon.log"
        return path.read_text(errors="replace") if path.exists() else ""

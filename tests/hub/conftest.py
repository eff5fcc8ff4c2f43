"""Fixtures for the hub tests: real `kachery hub serve` processes on free loopback ports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kachery_node.identity import Keypair
from kachery_node.transport.hub_client import HubClient
from tests import processes

KACHERY = str(Path(sys.executable).parent / "kachery")


class HubProcess:
    """A running hub: ``url``, ``hub_id``, ``dir``; ``log()`` reads its log.

    ``kachery hub serve --dir <dir> --port 0 <args>``; or, with ``script``, ``python -c <script>
    <dir>`` (a hub with settings the CLI does not offer: the script calls ``run_hub``)."""

    def __init__(self, hub_dir: Path, *args: str, script: str | None = None) -> None:
        self.dir = hub_dir
        self.args = args
        self.script = script
        self.proc: subprocess.Popen | None = None
        self._terminated = False  # SIGTERM sent to this process
        processes.register(self)  # stopped with the test that made it, pass or fail
        self.start()

    def start(self) -> None:
        info_path = self.dir / "hub.json"
        info_path.unlink(missing_ok=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "stderr.txt", "ab") as err:
            command = ([sys.executable, "-c", self.script, str(self.dir)] if self.script else
                       [KACHERY, "hub", "serve", "--dir", str(self.dir), "--port", "0", *self.args])
            self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
            self._terminated = False
        deadline = time.monotonic() + 20
        while not info_path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"hub did not start:\n{(self.dir / 'stderr.txt').read_text()}")
            time.sleep(0.05)
        info = json.loads(info_path.read_text())
        self.url, self.hub_id = info["url"], info["hub_id"]

    def begin_stop(self) -> None:
        """SIGTERM without waiting (:meth:`stop` waits); once: a second one could cut its exit short."""
        if self.proc and self.proc.poll() is None and not self._terminated:
            self.proc.send_signal(signal.SIGTERM)
            self._terminated = True

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.begin_stop()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        path = self.dir / "hub.log"
        return path.read_text() if path.exists() else ""


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    h = HubProcess(tmp_path_factory.mktemp("hub"), "--max-publish-rate", "50")
    yield h
    h.stop()


class Actor:
    """A person with one node, as in-memory keys, and their HubClient."""

    def __init__(self, hub_url: str, label: str) -> None:
        self.label = label
        self.user_key = Keypair.generate()
        self.node_key = Keypair.generate()
        self.client = HubClient(hub_url, user_key=self.user_key, node_key=self.node_key)

    @property
    def node_id(self) -> str:
        return self.node_key.public_hex

    @property
    def user_id(self) -> str:
        return self.user_key.public_hex


@pytest.fixture
def make_actor(hub):
    made: list[Actor] = []

    def make(label: str = "n", register: bool = True) -> Actor:
        a = Actor(hub.url, label)
        if register:
            a.client.register_node(label)
        made.append(a)
        return a

    yield make
    for a in made:
        a.client.close()


_counter = iter(range(10**6))


@pytest.fixture
def channel_name() -> str:
    """A fresh channel name per test."""
    return f"test.ch{next(_counter)}-{os.getpid()}"

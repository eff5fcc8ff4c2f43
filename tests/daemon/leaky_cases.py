"""Tests that fail or forget to stop what they started: run only by
tests/daemon/test_process_cleanup.py, in a pytest of their own (the file name keeps the normal
collection away). Each writes the process IDs it started to $LEAKY_PIDS_DIR/<test>.pids."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil

from tests.hub.conftest import HubProcess
from tests.nodes import KACHERY, TestNode, free_port

PIDS = Path(os.environ.get("LEAKY_PIDS_DIR", "."))


def _record(name: str, pids: list[int]) -> None:
    (PIDS / f"{name}.pids").write_text(" ".join(map(str, pids)))


def _daemon_pid(storage_dir: Path) -> int:
    return int(json.loads((storage_dir / "daemon.json").read_text())["pid"])


def test_fails_with_a_hub_and_a_running_node(tmp_path):
    hub = HubProcess(tmp_path / "hub")
    node = TestNode(tmp_path, "left")
    node.start()
    _record("fails", [hub.proc.pid, _daemon_pid(node.storage_dir)])
    raise AssertionError("this test fails with its hub and daemon running")


def test_the_previous_tests_processes_are_gone_now():
    pids = [int(p) for p in (PIDS / "fails.pids").read_text().split()]
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    _record("checked", alive)
    assert not alive


def test_starts_processes_nobody_owns(tmp_path):
    """A daemon started with the CLI outside any TestNode, and a plain child process: the
    session's end kills both."""
    storage = tmp_path / "unowned"
    env = {**os.environ, "KACHERY_STORAGE_DIR": str(storage), "KACHERY_USER_DIR": str(tmp_path / "u"),
           "KACHERY_DAEMON_PORT": str(free_port())}
    subprocess.run([KACHERY, "init", "--label", "unowned"], env=env, check=True, capture_output=True)
    subprocess.run([KACHERY, "node", "start"], env=env, check=True, capture_output=True)
    daemon_pid = _daemon_pid(storage)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    _record("unowned", [daemon_pid, child.pid])

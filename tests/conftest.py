"""Fixtures shared by all test folders."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import processes
from tests.browser import chromium_path, launch_chromium

ARTIFACTS = Path(__file__).parents[1] / "test-artifacts"
TESTS = Path(__file__).parent
#: Folders of the unit suite (`pytest -m unit`): pure code, no processes, no sockets; it runs in
#: seconds. Every other folder is the end-to-end suite (`-m e2e`): real hubs, daemons, stores.
UNIT_FOLDERS = frozenset({"unit", "protocol"})


def pytest_collection_modifyitems(config, items):
    """Mark each test `unit` or `e2e` by its folder, so `-m unit` / `-m e2e` select a suite.

    Under pytest-xdist (``-n``), the tests marked `slow` are handed out first: one started last
    would keep its worker busy for its 20-60 s after the others ran out of tests."""
    for item in items:
        try:
            folder = item.path.relative_to(TESTS).parts[0]
        except ValueError:  # a test outside tests/ (none today)
            folder = ""
        item.add_marker(pytest.mark.unit if folder in UNIT_FOLDERS else pytest.mark.e2e)
    if os.environ.get("PYTEST_XDIST_WORKER"):  # every worker sorts alike, as xdist requires
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable


class UnitTestUsedTheOutsideWorld(AssertionError):
    """A unit test started a process or opened a network socket (move it out of the unit
    folders, or drive the code through its sans-IO core instead)."""


@pytest.fixture(autouse=True)
def _unit_tests_stay_inside(request, monkeypatch):
    """Unit tests may not start processes or open sockets: the split stays true by itself."""
    if request.node.get_closest_marker("unit") is None:
        yield
        return

    def refuse(what):
        def refused(*args, **kwargs):
            raise UnitTestUsedTheOutsideWorld(f"a unit test tried to {what}")
        return refused

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("start a process"))
    monkeypatch.setattr(socket.socket, "connect", refuse("connect a socket"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect a socket"))
    monkeypatch.setattr(socket.socket, "bind", refuse("bind a socket"))
    yield


@pytest.fixture(scope="session", autouse=True)
def _end_session_processes(tmp_path_factory):
    """At the session's end, kill whatever the tests started and left running
    (tests/processes.py); first, stop what runs killed before this one left."""
    basetemp = tmp_path_factory.getbasetemp()
    processes.set_basetemp(basetemp)
    root = processes.numbered_root(basetemp)
    if root is not None:
        processes.end_orphans_of_dead_sessions(root)
    yield
    processes.end_all()


#: The port an installed kachery daemon takes by default (the original's, for kachery-client).
DEFAULT_DAEMON_PORT = 20431


@pytest.fixture(scope="session", autouse=True)
def _an_unrelated_daemon_on_the_default_port(request, tmp_path_factory):
    """Hold the default daemon port with another storage's daemon while the e2e suite runs.

    A developer's or user's machine usually runs its own daemon there; the suite must pass
    anyway, and no test may reach that daemon (issue 13). So the suite makes it true itself: if
    the port is free, one test process starts a daemon of an unrelated storage on it.
    """
    wanted = any(item.get_closest_marker("e2e") for item in request.session.items)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    if not wanted or worker != "gw0" or not _port_is_free(DEFAULT_DAEMON_PORT):
        yield None
        return
    root = tmp_path_factory.mktemp("unrelated-daemon")
    env = {**os.environ, "KACHERY_STORAGE_DIR": str(root / "storage"),
           "KACHERY_USER_DIR": str(root / "user"), "KACHERY_DAEMON_PORT": str(DEFAULT_DAEMON_PORT)}
    kachery = Path(sys.executable).parent / "kachery"
    subprocess.run([str(kachery), "init", "--label", "unrelated"], env=env, check=True,
                   capture_output=True, timeout=60)
    with open(root / "daemon.out", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "kachery_node.daemon", "--storage-dir",
                                 str(root / "storage")], env=env, stdout=out, stderr=out)
    owner = _PopenOwner(proc)
    processes.register(owner)  # stopped at the session's end in any case
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if (root / "storage" / "daemon.json").exists():
                break
            time.sleep(0.05)
        yield proc
    finally:
        owner.stop()


class _PopenOwner:
    """A process started with Popen, as tests/processes.py's registry wants it."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(autouse=True)
def _end_test_processes():
    """Stop the daemons, hubs and backends a test made when it ends, pass or fail."""
    position = processes.mark()
    yield
    processes.stop_since(position)


@pytest.fixture(scope="session")
def chromium():
    """A headless Chromium (Debian's package; CI installs it), shared by the session's tests."""
    if chromium_path() is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    with launch_chromium() as browser:
        yield browser


@pytest.fixture
def artifacts() -> Path:
    """Folder for screenshots and other test artifacts (kept after the run, gitignored)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS

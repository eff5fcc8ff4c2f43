"""Fixtures shared by all test folders."""

from __future__ import annotations

import socket
import subprocess
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
    """Mark each test `unit` or `e2e` by its folder, so `-m unit` / `-m e2e` select a suite."""
    for item in items:
        try:
            folder = item.path.relative_to(TESTS).parts[0]
        except ValueError:  # a test outside tests/ (none today)
            folder = ""
        item.add_marker(pytest.mark.unit if folder in UNIT_FOLDERS else pytest.mark.e2e)


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
    (tests/processes.py)."""
    processes.set_basetemp(tmp_path_factory.getbasetemp())
    yield
    processes.end_all()


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

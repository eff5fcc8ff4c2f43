"""Fixtures shared by all test folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import processes
from tests.browser import chromium_path, launch_chromium

ARTIFACTS = Path(__file__).parents[1] / "test-artifacts"


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

"""DaemonClient's keep-alive connections (kachery_node.transport.http_connections), against a
stand-in daemon on a loopback socket that answers as told: connections kept alive, and dropped
once the daemon closed them; a request that meets the daemon's keep-alive close sent again once;
few idle connections however many daemons a process talked to; a forked child's own connection;
no proxy between a script and its daemon."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from kachery_node.daemon_client import DaemonClient
from kachery_node.errors import DaemonConnectionLostError
from tests.http_listener import NODE_ID
from tests.http_listener import ScriptedServer as StandInDaemon


@pytest.fixture
def daemons():
    started: list[StandInDaemon] = []

    def start(policy=lambda c, r, p: "answer") -> StandInDaemon:
        started.append(StandInDaemon(policy))
        return started[-1]

    yield start
    for daemon in started:
        daemon.stop()


def _storage(tmp_path: Path, daemon: StandInDaemon, name: str = "storage") -> Path:
    """A storage directory whose daemon.json points at ``daemon``."""
    storage = tmp_path / name
    storage.mkdir()
    (storage / "daemon.json").write_text(json.dumps({"host": "127.0.0.1", "port": daemon.port,
                                                     "node_id": NODE_ID, "pid": 1}))
    return storage


def test_requests_share_one_kept_alive_connection(tmp_path, daemons):
    daemon = daemons()
    client = DaemonClient(_storage(tmp_path, daemon))
    for _ in range(5):
        assert client.status()["path"] == "/api/status"
    assert daemon.connections == 1
    assert [r[2] for r in daemon.requests] == ["/probe"] + ["/api/status"] * 5


def test_a_daemon_that_closes_each_connection_after_its_answer_is_answered_every_time(tmp_path, daemons):
    daemon = daemons(lambda c, r, p: "answer-and-close")
    client = DaemonClient(_storage(tmp_path, daemon))
    for _ in range(3):
        daemon.closed.clear()
        assert client.status()["path"] == "/api/status"
        assert daemon.closed.wait(5)  # the close has reached this side before the next request
    # Each request on a connection of its own (the first one after the probe's): an idle
    # connection found closed is dropped before use (or, had the close come a moment later,
    # the request sent again once: the test below).
    assert [r[2] for r in daemon.requests] == ["/probe"] + ["/api/status"] * 3
    assert daemon.connections == 4


def test_a_request_that_meets_the_keep_alive_close_is_sent_again_once(tmp_path, daemons):
    # The daemon closes connection 1 when its second request arrives, unanswered: what a
    # request sent just as the daemon's keep-alive timeout closed the connection meets.
    daemon = daemons(lambda c, r, p: "close" if (c, r) == (1, 1) else "answer")
    client = DaemonClient(_storage(tmp_path, daemon))
    assert client.status()["path"] == "/api/status"
    assert daemon.requests == [(1, "GET", "/probe"), (1, "GET", "/api/status"), (2, "GET", "/api/status")]


def test_a_new_connection_closed_unanswered_is_not_sent_again(tmp_path, daemons):
    daemon = daemons(lambda c, r, p: "close" if p == "/api/status" else "answer-and-close")
    client = DaemonClient(_storage(tmp_path, daemon))
    with pytest.raises(DaemonConnectionLostError, match="dropped the connection"):
        client.status()
    assert [r[2] for r in daemon.requests] == ["/probe", "/api/status"]


def test_few_idle_connections_stay_open_however_many_daemons(tmp_path, daemons):
    own = os.getpid()

    def open_to(ports: set[int]) -> int:
        import psutil

        return sum(1 for c in psutil.Process(own).net_connections("tcp")
                   if c.raddr and c.raddr.port in ports and c.status == "ESTABLISHED")

    started = [daemons() for _ in range(40)]
    for i, daemon in enumerate(started):
        assert DaemonClient(_storage(tmp_path, daemon, f"s{i}")).status()["path"] == "/api/status"
    assert 1 <= open_to({d.port for d in started}) <= 16


def test_a_proxy_in_the_environment_does_not_stand_between_a_script_and_its_daemon(tmp_path, daemons,
                                                                                  monkeypatch):
    # The daemon is this machine's: a proxy (here one that nothing serves) could not reach it.
    # httpx, the client before, sent the requests there unless NO_PROXY named the address.
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    daemon = daemons()
    assert DaemonClient(_storage(tmp_path, daemon)).status()["path"] == "/api/status"


def test_stop_returns_once_the_daemon_has_let_go_of_its_storage(tmp_path, daemons):
    # A daemon stops answering before it has closed its storage and written its last log line.
    # `kachery node stop` returned in that gap (CI saw a log without "stopped"); a `node start`
    # or a copy of the storage right after it could meet a daemon still closing its database.
    import fcntl

    stopping = threading.Event()

    def policy(connection: int, index: int, path: str) -> str:
        if path == "/api/stop":
            stopping.set()
            return "answer-and-close"
        return "close" if stopping.is_set() else "answer"  # no answer once stopping

    daemon = daemons(policy)
    storage = _storage(tmp_path, daemon)
    held = os.open(storage / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)  # the stand-in daemon's lock, as a real daemon holds it
    released_at: list[float] = []

    def let_go() -> None:
        assert stopping.wait(30)
        time.sleep(0.3)  # closing the storage
        released_at.append(time.monotonic())
        os.close(held)

    closer = threading.Thread(target=let_go, daemon=True)
    closer.start()
    DaemonClient(storage).stop(timeout=10)
    returned_at = time.monotonic()
    closer.join(10)
    assert released_at and returned_at >= released_at[0]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_opens_its_own_connection(tmp_path, daemons):
    daemon = daemons()
    client = DaemonClient(_storage(tmp_path, daemon))
    assert client.status()["path"] == "/api/status"  # an idle connection in the pool now
    pid = os.fork()
    if pid == 0:  # the child: its request must not go out on the parent's connection
        try:
            ok = DaemonClient(client.storage_dir).status()["path"] == "/api/status"
        except BaseException:
            ok = False
        os._exit(0 if ok else 1)
    assert _exit_code(pid, timeout=30) == 0
    assert client.status()["path"] == "/api/status"  # and the parent's still serves the parent
    by_connection = [(c, p) for c, _m, p in daemon.requests]
    assert by_connection[:2] == [(1, "/probe"), (1, "/api/status")]
    assert by_connection[-1] == (1, "/api/status")
    assert all(c != 1 for c, _p in by_connection[2:-1]) and len(by_connection) > 3


def _exit_code(pid: int, timeout: float) -> int:
    """The exit code of child ``pid``, killed (and the test failed) if it runs past ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"the forked child did not end within {timeout} s")


def test_a_daemon_starting_while_a_client_asks_about_its_storage_still_starts(tmp_path):
    # storage_is_held takes a shared lock for an instant; a daemon starting in that instant
    # must not report "already running".
    import fcntl

    from kachery_node.daemon.paths import StorageHold, storage_is_held
    from kachery_node.errors import DaemonError

    asking = os.open(tmp_path / "daemon.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(asking, fcntl.LOCK_SH)  # a client's probe, caught in the middle
    threading.Timer(0.05, os.close, args=(asking,)).start()
    hold = StorageHold(tmp_path)
    try:
        assert storage_is_held(tmp_path)
        with pytest.raises(DaemonError, match="already running"):
            StorageHold(tmp_path)
    finally:
        hold.release()
    assert not storage_is_held(tmp_path)

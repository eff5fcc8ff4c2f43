"""The daemon as a real process: start/stop/status, its local API, auth, SSE streams."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest

import kachery_feeds as kf
from kachery_node.daemon_client import DaemonClient
from kachery_node.errors import DaemonConnectionLostError, DaemonError, DaemonNotRunningError
from tests.nodes import KACHERY, TestNode, free_port


@pytest.fixture
def node(tmp_path):
    n = TestNode(tmp_path, "alpha")
    n.start()
    yield n
    n.stop()


def _tokens(node: TestNode) -> tuple[str, str]:
    return ((node.storage_dir / "daemon-token").read_text().strip(),
            (node.storage_dir / "browser-token").read_text().strip())


def test_start_status_stop_from_the_cli(tmp_path):
    n = TestNode(tmp_path, "beta")
    missing = n.run("node", "status", check=False)
    assert missing.returncode == 1 and "kachery node start" in missing.stderr
    started = n.start()
    assert started["node_id"] == n.node_id and started["label"] == "beta"
    status = n.json("node", "status")
    assert status["storage_dir"] == str(n.storage_dir) and status["channels"] == []
    assert "running at" in n.run("node", "status").stdout
    # One daemon per storage directory, even on another port.
    second = subprocess.run([sys.executable, "-m", "kachery_node.daemon", "--storage-dir",
                             str(n.storage_dir), "--port", str(free_port())],
                            capture_output=True, text=True, timeout=30, env=n.env)
    assert second.returncode == 1 and "already running" in second.stderr
    n.run("node", "stop")
    assert not n.client.is_running()
    assert "shutting down" in n.log() and "stopped" in n.log()
    for name in ["daemon-token", "browser-token", "node.key"]:
        assert (n.storage_dir / name).stat().st_mode & 0o077 == 0, name


def test_the_daemon_starts_from_a_directory_holding_modules_named_like_its_own(tmp_path):
    # `kachery node start` run from a folder with a person's own trio.py or h2.py: the daemon
    # (python -m) put that folder first on its sys.path, imported them and exited at start.
    n = TestNode(tmp_path, "delta")
    work = tmp_path / "analysis"
    work.mkdir()
    for name in ("trio", "h2", "hypercorn", "select", "kachery_node"):
        (work / f"{name}.py").write_text("raise SystemExit('a module of the folder was imported')\n")
    try:
        started = subprocess.run([KACHERY, "node", "start"], env=n.env, cwd=work, capture_output=True,
                                 text=True, timeout=60)
        assert started.returncode == 0, started.stderr
        assert n.client.is_running()
    finally:
        n.stop()


def test_port_in_use_is_a_clear_error(tmp_path):
    n = TestNode(tmp_path, "gamma")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", n.port))
        s.listen()
        result = n.run("node", "start", check=False)
    assert result.returncode == 1 and ("cannot listen" in result.stderr or "exited" in result.stderr)


def test_sigterm_and_sigkill_leave_a_usable_storage(tmp_path):
    n = TestNode(tmp_path, "delta")
    n.start()
    pid = n.kill()
    _wait_exited(pid)
    with pytest.raises(DaemonNotRunningError):
        n.client.status()
    n.start()  # the lock died with the process; a new daemon starts
    assert n.client.status()["node_id"] == n.node_id
    n.stop()


def test_daemon_stops_when_its_storage_directory_is_deleted(tmp_path):
    """A daemon nobody can reach any more (its storage and daemon.json are gone) stops on its
    own, within a few seconds (issue 11: a failed test run left its daemons running)."""
    import shutil

    gone = TestNode(tmp_path, "gone")
    gone.start()
    pid = json.loads((gone.storage_dir / "daemon.json").read_text())["pid"]
    shutil.rmtree(gone.storage_dir)
    _wait_exited(pid, timeout=15)

    # Only daemon.json removed: the log (still there) says why it stopped, and that it did cleanly.
    orphan = TestNode(tmp_path, "orphan")
    orphan.start()
    info = orphan.storage_dir / "daemon.json"
    pid = json.loads(info.read_text())["pid"]
    info.unlink()
    _wait_exited(pid, timeout=15)
    log = orphan.log()
    assert "daemon.json was deleted or replaced: stopping" in log and log.rstrip().endswith("stopped"), log
    orphan.start()  # the storage is usable: a new daemon starts
    assert orphan.client.status()["node_id"] == orphan.node_id
    orphan.stop()


def test_local_api_authentication(node):
    client_token, browser_token = _tokens(node)
    base = node.client.base_url
    assert httpx.get(f"{base}/probe").json()["node_id"] == node.node_id
    assert httpx.get(f"{base}/api/status").status_code == 401
    assert httpx.get(f"{base}/api/status", headers={"Authorization": "Bearer " + "0" * 64}).status_code == 403
    assert httpx.get(f"{base}/api/status", params={"token": browser_token}).status_code == 403
    assert httpx.post(f"{base}/api/stop", params={"token": browser_token}).status_code == 403
    authorized = {"Authorization": f"Bearer {client_token}"}
    assert httpx.get(f"{base}/api/status", headers=authorized).status_code == 200
    # The full-access token never travels in a URL (logs, history, Referer): refused there,
    # on client and browser endpoints, GET and POST alike (issue 11, defect 10).
    feed_uri = "feed://" + "a" * 64 + "/x"
    in_url = [httpx.get(f"{base}/api/status", params={"token": client_token}),
              httpx.get(f"{base}/api/feeds/messages", params={"uri": feed_uri, "token": client_token}),
              httpx.post(f"{base}/api/feeds/follow", params={"token": client_token}, json={"uri": feed_uri}),
              httpx.post(f"{base}/api/stop", params={"token": client_token})]
    for r in in_url:
        assert r.status_code == 403 and "Authorization header" in r.json()["error"], r.text
    # The read-only browser token may: EventSource cannot set headers.
    ok = httpx.get(f"{base}/api/feeds/messages", params={"uri": feed_uri, "token": browser_token})
    assert ok.status_code == 200 and ok.json()["messages"] == []
    # DNS rebinding: a page on evil.example resolving to 127.0.0.1 is refused.
    assert httpx.get(f"{base}/probe", headers={"Host": "evil.example"}).status_code == 403
    assert node.client.is_running()  # nothing above stopped it


def test_cors_allow_list(tmp_path):
    n = TestNode(tmp_path, "cors")
    n.env["KACHERY_CORS_ORIGINS"] = "http://localhost:3000"
    n.start()
    try:
        base = n.client.base_url
        ok = httpx.get(f"{base}/probe", headers={"Origin": "http://localhost:3000"})
        assert ok.headers.get("access-control-allow-origin") == "http://localhost:3000"
        # Another origin gets only the refusal (readable, so a page can say why), never the answer.
        other = httpx.get(f"{base}/probe", headers={"Origin": "http://attacker.example"})
        assert other.status_code == 403 and other.json()["kind"] == "OriginNotAllowed"
        assert n.node_id not in other.text
    finally:
        n.stop()


def _wait_exited(pid: int, timeout: float = 10) -> None:
    """Wait until process ``pid`` is gone (or a zombie nobody reaped yet)."""
    deadline = time.monotonic() + timeout
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, f"process {pid} did not exit within {timeout} s"
        time.sleep(0.02)


def _read_events(response_or_lines, count: int) -> list[tuple[int, dict]]:
    import json

    lines = response_or_lines.iter_lines() if hasattr(response_or_lines, "iter_lines") else response_or_lines
    events, current = [], {}
    for line in lines:
        if line.startswith("id: "):
            current["id"] = int(line[4:])
        elif line.startswith("data: "):
            current["data"] = json.loads(line[6:])
        elif line == "" and "data" in current:
            events.append((current["id"], current["data"]))
            current = {}
            if len(events) == count:
                return events
    raise AssertionError("stream ended early")


def test_subfeed_stream_is_live_and_resumable(node):
    _client_token, browser_token = _tokens(node)
    sf = kf.open_store(node.storage_dir / "feeds.db").create_feed().load_subfeed("sensor")
    sf.append_messages([{"t": i, "value": i * i} for i in range(5)])
    base, params = node.client.base_url, {"uri": sf.uri, "token": browser_token}
    with httpx.stream("GET", f"{base}/api/feeds/stream", params={**params, "start": 2}, timeout=10) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        events = _read_events(lines, 3)  # what was there: the stream now waits for more
        sf.append_message({"t": 5, "value": 25})
        events += _read_events(lines, 1)
    assert [e[0] for e in events] == [2, 3, 4, 5]
    assert events[-1][1]["payload"] == {"t": 5, "value": 25}
    # Each event carries the signed wire line, so a page can verify it (spec/feeds.md §3).
    wires = [e[1]["wire"].encode() for e in events]
    assert wires == sf.get_signed_messages(2, 6)
    # EventSource reconnects with Last-Event-ID: the stream resumes after it.
    with httpx.stream("GET", f"{base}/api/feeds/stream", params=params,
                      headers={"Last-Event-ID": "3"}, timeout=10) as r:
        assert [e[0] for e in _read_events(r, 2)] == [4, 5]
    msgs = httpx.get(f"{base}/api/feeds/messages", params={**params, "start": 4}).json()
    assert [m["payload"]["t"] for m in msgs["messages"]] == [4, 5]


def test_bad_stream_requests(node):
    _c, browser_token = _tokens(node)
    base = node.client.base_url
    for params, status in [({"token": browser_token}, 400),
                           ({"token": browser_token, "uri": "feed://nothex/x"}, 400),
                           ({"token": browser_token, "uri": "feed://" + "a" * 64 + "/x", "start": "-1"}, 400),
                           ({"uri": "feed://" + "a" * 64 + "/x"}, 401)]:
        r = httpx.get(f"{base}/api/feeds/messages", params=params)
        assert r.status_code == status and "error" in r.json()


BAD_NUMBERS = ["99999999999999999999", str(2**53), "\u00b2", "\u0663", "1_0", " 1", "+1", "-1",
               "1e3", "0x10", "1.0", "\uff11"]


def test_bad_numbers_and_uris_are_400_not_500_or_a_cut_stream(node):
    """Numbers are ASCII digits in range, URIs parse before a stream starts (issue 11, defect 8:
    a 20-digit start was a SQLite OverflowError (500), the same Last-Event-ID and a chunkOf of
    '~²~3' cut the stream)."""
    client_token, browser_token = _tokens(node)
    sf = kf.open_store(node.storage_dir / "feeds.db").create_feed().load_subfeed("s")
    sf.append_messages([{"i": i} for i in range(3)])
    base, params = node.client.base_url, {"uri": sf.uri, "token": browser_token}
    for bad in BAD_NUMBERS:
        for name in ("start", "end"):
            r = httpx.get(f"{base}/api/feeds/messages", params={**params, name: bad}, timeout=10)
            assert r.status_code == 400 and name in r.json()["error"], (name, bad, r.text)
        r = httpx.get(f"{base}/api/feeds/stream", params={**params, "start": bad}, timeout=10)
        assert r.status_code == 400 and "start" in r.json()["error"], (bad, r.text)
        if bad.isascii() and bad == bad.strip():  # what a header can carry (latin-1 below)
            r = httpx.get(f"{base}/api/feeds/stream", params=params, headers={"Last-Event-ID": bad},
                          timeout=10)
            assert r.status_code == 400 and "Last-Event-ID" in r.json()["error"], (bad, r.text)
    r = httpx.get(f"{base}/api/feeds/stream", params=params, timeout=10,
                  headers={"Last-Event-ID": "\u00b2".encode("latin-1")})
    assert r.status_code == 400 and "Last-Event-ID" in r.json()["error"], r.text
    # The largest accepted number is answered, not overflowed.
    r = httpx.get(f"{base}/api/feeds/messages", params={**params, "start": str(2**53 - 1)}, timeout=10)
    assert r.status_code == 200 and r.json()["messages"] == []

    authorized = {"Authorization": f"Bearer {client_token}"}
    for uri in ["sha1://" + "a" * 40 + "?chunkOf=" + "b" * 40 + "~\u00b2~3",
                "sha1://" + "a" * 40 + "?chunkOf=" + "b" * 40 + "~0~99999999999999999999999",
                "sha1://" + "a" * 40 + "?manifest=zz", "http://example.org/x", 42]:
        for path in ("/api/files/fetch", "/api/files/upload"):
            r = httpx.post(f"{base}{path}", json={"uri": uri, "channel": "lab"}, headers=authorized,
                           timeout=10)
            assert r.status_code == 400 and r.json()["error"], (path, uri, r.text)
    assert node.client.is_running()


def test_bad_daemon_port_variable_is_a_clear_error(tmp_path):
    n = TestNode(tmp_path, "port")
    for bad in ["\u00b2", "99999", "0", "1_0"]:
        n.env["KACHERY_DAEMON_PORT"] = bad
        result = n.run("node", "start", check=False)
        assert result.returncode == 1 and "KACHERY_DAEMON_PORT must be a port number" in result.stderr, (
            bad, result.stderr)


def test_client_without_daemon_raises_typed_error(tmp_path):
    n = TestNode(tmp_path, "idle")
    with pytest.raises(DaemonNotRunningError, match="kachery node start"):
        DaemonClient(n.storage_dir).status()


def test_connection_dropped_mid_request_is_a_typed_error(tmp_path):
    """A daemon killed while answering resets the connection: a typed error, and not "running"."""
    import socket
    import struct

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def accept_and_reset() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            conn.recv(4096)
            # SO_LINGER 0: close() sends a TCP reset, as a killed process's kernel does.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    t = threading.Thread(target=accept_and_reset, daemon=True)
    t.start()
    client = DaemonClient(tmp_path, port=listener.getsockname()[1])
    with pytest.raises(DaemonConnectionLostError, match="dropped the connection"):
        client.status()
    assert client.is_running() is False
    t.join(5)
    listener.close()


def test_a_daemon_gone_while_answering_is_not_running(tmp_path):
    """A daemon killed with a connection still queued resets it and then listens no more: that
    is a daemon not running, not a lost connection (tests/daemon/test_daemon_local.py::
    test_sigterm_and_sigkill_leave_a_usable_storage failed so under load)."""
    import socket
    import struct

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def stop_listening_then_reset() -> None:
        conn, _ = listener.accept()
        conn.recv(4096)
        listener.close()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    t = threading.Thread(target=stop_listening_then_reset, daemon=True)
    t.start()
    client = DaemonClient(tmp_path, port=listener.getsockname()[1])
    with pytest.raises(DaemonNotRunningError, match="kachery node start"):
        client.status()
    t.join(5)


def test_one_client_for_json_and_streamed_answers(node, tmp_path):
    """DaemonClient.stream: NDJSON lines decoded; a refusal typed (with the daemon's status and
    words) before any line; a connection lost midway typed too (issue 12: one daemon client)."""
    import socket
    import struct

    import kachery_node as kn

    uri = kn.open_storage(node.storage_dir).store_text("streamed")
    with node.client.stream("POST", "/api/files/fetch", json_body={"uri": uri}) as lines:
        events = list(lines)
    assert events[-1]["type"] == "finished" and events[-1]["path"]
    bad = {"uri": "http://example.org/x"}
    with pytest.raises(DaemonError) as refused, node.client.stream("POST", "/api/files/fetch", json_body=bad):
        raise AssertionError("a refused request yields nothing")
    assert refused.value.status == 400 and refused.value.reason

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    line = b'{"type": "progress", "done": 1, "total": 2}\n'

    def one_line_then_reset() -> None:
        # First the probe (the client checks whose daemon answers before it sends a token)...
        conn, _ = listener.accept()
        conn.recv(65536)
        probe = json.dumps({"kachery_daemon": True, "node_id": node.node_id}).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(probe), probe))
        conn.close()
        # ... then the stream: one line, and the connection reset.
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(line), line))
        time.sleep(0.3)
        # SO_LINGER 0: close() sends a TCP reset, as a killed daemon's kernel does.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    t = threading.Thread(target=one_line_then_reset, daemon=True)
    t.start()
    client = DaemonClient(node.storage_dir, port=listener.getsockname()[1])
    got = []
    with (pytest.raises(DaemonConnectionLostError, match="dropped the connection"),
          client.stream("POST", "/api/files/fetch", json_body={"uri": uri}) as lines):
        got.extend(lines)
    assert got == [{"type": "progress", "done": 1, "total": 2}]
    t.join(5)
    listener.close()


def test_the_daemon_copies_the_stores_log_back_soon_after_appends(node):
    """The daemon checkpoints the feed store in the background (daemon/store_upkeep.py), so a
    script's appends (and the daemon's own imports) never pay for the checkpoint SQLite would
    otherwise run inside the commit that takes the log past 4000 pages."""
    db = node.storage_dir / "feeds.db"
    store = kf.open_store(db)
    try:
        sf = store.create_feed().load_subfeed("log")
        size = db.stat().st_size
        for i in range(300):  # a few hundred log frames: far from the autocheckpoint
            sf.append_message({"i": i})
        deadline = time.monotonic() + 30
        while db.stat().st_size <= size:  # only a checkpoint writes the database file itself
            assert time.monotonic() < deadline, "the daemon did not checkpoint the store"
            time.sleep(0.1)
        assert sf.get_num_local_messages() == 300
    finally:
        store.close()


def test_the_daemons_log_is_rotated_and_its_stderr_follows(tmp_path):
    """A detached daemon logs into <storage>/daemon.log itself, rotated (daemon_log.LOG_MAX_BYTES):
    a member flooding the channel with messages it drops (an INFO line each) must not fill the
    disk. What Python writes to its stdout and stderr (a traceback that escaped everything)
    follows the log into its new file. Run in a child: the rotation re-points fds 1 and 2."""
    log_file = tmp_path / "daemon.log"
    code = f"""
import logging, os, sys
from kachery_node.daemon.daemon_log import DaemonLogFile
handler = DaemonLogFile({str(log_file)!r})
handler.maxBytes, handler.backupCount = 2000, 2
logging.basicConfig(level=logging.INFO, handlers=[handler])
for i in range(100):
    logging.getLogger("kachery.channel").info("dropped a message %d: %s", i, "x" * 60)
print("on stdout", flush=True)
sys.stderr.write("on stderr\\n")
"""
    with open(log_file, "ab") as inherited:  # as start_daemon hands it over
        subprocess.run([sys.executable, "-c", code], stdout=inherited, stderr=inherited, check=True,
                       timeout=60)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["daemon.log", "daemon.log.1", "daemon.log.2"]
    assert all((tmp_path / name).stat().st_size <= 2200 for name in files)
    current = log_file.read_text()
    assert "dropped a message 99" in current and "on stdout" in current and "on stderr" in current
    assert "on stdout" not in (tmp_path / "daemon.log.1").read_text()

"""One daemon per storage, found only through that storage (issue 13, item 1).

A daemon records where it listens in its storage's daemon.json; clients read only that, and
check the node ID of whoever answers there before a token leaves the process. A second storage
on the same machine gets a daemon of its own on a free port, and a storage without a daemon is
told so, never answered by another storage's daemon.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

from tests.nodes import TestNode


def _without_port(node: TestNode) -> TestNode:
    """The node as a person runs it: no port named anywhere."""
    node.env = {k: v for k, v in node.env.items() if k != "KACHERY_DAEMON_PORT"}
    return node


def _port(node: TestNode) -> int:
    return json.loads((node.storage_dir / "daemon.json").read_text())["port"]


def test_two_storages_without_a_port_get_a_daemon_each(tmp_path):
    a = _without_port(TestNode(tmp_path, "a"))
    b = _without_port(TestNode(tmp_path, "b"))
    try:
        started_a = a.run("node", "start")
        started_b = b.run("node", "start")
        assert _port(a) != _port(b)
        # Each says where it listens, and each storage's commands reach its own daemon.
        assert f":{_port(a)}" in started_a.stdout and f":{_port(b)}" in started_b.stdout
        assert a.json("node", "status")["node_id"] == a.node_id
        assert b.json("node", "status")["node_id"] == b.node_id
        # A second start for the same storage is refused, naming that storage.
        again = b.run("node", "start", check=False)
        assert again.returncode == 1 and "already running for" in again.stderr
        assert str(b.storage_dir) in again.stderr
    finally:
        a.stop()
        b.stop()


def test_a_storage_without_a_daemon_is_told_so_not_answered_by_another(tmp_path):
    a = _without_port(TestNode(tmp_path, "a"))
    c = _without_port(TestNode(tmp_path, "c"))
    try:
        a.start()
        missing = "sha1://" + "0" * 40
        out = c.run("cat", missing, check=False)
        assert out.returncode == 1
        assert "is not in the local storage" in out.stderr
        assert f"no daemon is running for {c.storage_dir}" in out.stderr
        assert str(a.storage_dir) not in out.stderr  # nothing of the other storage leaks
        status = c.run("node", "status", check=False)
        assert status.returncode == 1 and f"no daemon is running for {c.storage_dir}" in status.stderr
        # The Python API says what it tried.
        script = f"import kachery_node as kn\nkn.load_bytes({missing!r})"
        out = subprocess.run([sys.executable, "-c", script], env=c.env, capture_output=True, text=True,
                             timeout=60)
        assert "NotFoundError" in out.stderr and f"no daemon is running for {c.storage_dir}" in out.stderr
        assert "so no node was asked" in out.stderr and "joined no channel" in out.stderr
    finally:
        a.stop()


class _Impostor(BaseHTTPRequestHandler):
    """Another storage's daemon: answers /probe with its own node ID; records what it was sent."""

    seen_authorization: ClassVar[list[str]] = []

    def do_GET(self):
        self._answer()

    def do_POST(self):
        self._answer()

    def _answer(self):
        auth = self.headers.get("Authorization")
        if auth:
            type(self).seen_authorization.append(auth)
        body = json.dumps({"ok": True, "kachery_daemon": True, "node_id": "f" * 64}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_stale_daemon_json_never_sends_the_token_to_whoever_holds_the_port(tmp_path):
    node = _without_port(TestNode(tmp_path, "n"))
    node.start()
    node.stop()  # its daemon.json is gone; put back one pointing at another daemon's port
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Impostor)
    _Impostor.seen_authorization = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        (node.storage_dir / "daemon.json").write_text(json.dumps(
            {"pid": 1, "host": "127.0.0.1", "port": server.server_address[1], "node_id": node.node_id}))
        (node.storage_dir / "daemon-token").write_text("secret-token-of-this-storage")
        out = node.run("node", "status", check=False)
        assert out.returncode == 1 and "serves another node" in out.stderr, out.stderr
        out = node.run("cat", "sha1://" + "1" * 40, check=False)
        assert out.returncode == 1
        assert _Impostor.seen_authorization == []
    finally:
        server.shutdown()
        server.server_close()


def test_the_default_port_taken_means_another_free_port(tmp_path):
    """Whatever holds the default port (the suite's unrelated daemon, or a real one), a daemon
    started without a port comes up and says where."""
    node = _without_port(TestNode(tmp_path, "p"))
    try:
        status = node.json("node", "start")
        assert status["node_id"] == node.node_id
        assert status["url"].endswith(f":{_port(node)}")
    finally:
        node.stop()
    shutil.rmtree(tmp_path / "p", ignore_errors=True)

"""A local HTTP listener for tests of the clients that talk HTTP over sockets of their own (the
bucket's direct downloads and uploads, the daemon and hub clients): a real server on a free
loopback port whose answers each test writes."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable

#: The node ID :class:`ScriptedServer` answers with as a daemon.
NODE_ID = "f" * 64


class Listener:
    """A local HTTP server on a free port: :meth:`on_connection` handles each accepted
    connection, in the accepting thread, until :meth:`close`."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}{path}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.on_connection(conn)

    def on_connection(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()


def _daemon_answer(path: str) -> tuple[int, str, bytes]:
    body = {"kachery_daemon": True, "node_id": NODE_ID, "path": path}
    return 200, "application/json", json.dumps(body).encode()


class ScriptedServer(Listener):
    """A loopback HTTP/1.1 server: each connection in a thread of its own; each request read
    whole, recorded as (connection number, method, path) and handed to ``policy(connection
    number, request number on that connection, path)``, which says what to do: "answer" (keep
    the connection open), "answer-and-close" (FIN after the answer) or "close" (FIN, no answer).
    The answer is ``answer(path)``: (status, content type, body); by default 200 and a daemon's
    JSON (``{"kachery_daemon": true, "node_id": NODE_ID, "path": path}``)."""

    def __init__(self, policy: Callable[[int, int, str], str] = lambda c, r, p: "answer",
                 answer: Callable[[str], tuple[int, str, bytes]] | None = None) -> None:
        self.policy = policy
        self.answer = answer or _daemon_answer
        self.requests: list[tuple[int, str, str]] = []
        self.closed = threading.Event()  # set each time the server closed a connection
        self._connections = 0
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        super().__init__("/")
        self.port = self.sock.getsockname()[1]

    def on_connection(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections += 1
            number = self._connections
            self._open.append(conn)
        threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        reader = conn.makefile("rb")
        try:
            for index in range(1_000):
                request_line = reader.readline()
                if not request_line:
                    return
                method, path, _version = request_line.decode().split(" ", 2)
                length = 0
                while (header := reader.readline()) not in (b"\r\n", b""):
                    name, _, value = header.decode().partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                reader.read(length)
                with self._lock:
                    self.requests.append((number, method, path))
                action = self.policy(number, index, path)
                if action != "close":
                    status, content_type, body = self.answer(path)
                    conn.sendall(b"HTTP/1.1 %d Whatever\r\nContent-Type: %s\r\n"
                                 b"Content-Length: %d\r\n\r\n%s"
                                 % (status, content_type.encode(), len(body), body))
                if action != "answer":
                    return
        except OSError:
            return
        finally:
            reader.close()
            conn.close()
            self.closed.set()

    @property
    def connections(self) -> int:
        with self._lock:
            return self._connections

    def stop(self) -> None:
        self.close()
        with self._lock:
            for conn in self._open:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

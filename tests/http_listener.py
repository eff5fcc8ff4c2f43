"""A local HTTP listener for tests of the clients that talk HTTP over sockets of their own (the
bucket's direct downloads and uploads, the daemon client): a real server on a free loopback port
whose answers each test writes."""

from __future__ import annotations

import socket
import threading


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

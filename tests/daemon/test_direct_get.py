"""bucket/direct_get.py: whole-object GETs off the socket, against a real local HTTP server that
answers as each test needs (a hub serves the common case in the network tests)."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable

import pytest

from kachery_node.errors import HubRequestError, NotFoundError
from kachery_node.transport.bucket.direct_get import DirectGet, DirectGetAborted, DirectGetUnsupported
from tests.http_listener import Listener

BODY = os.urandom(3 * (1 << 20) + 12345)  # several 1 MiB buffers and a remainder


class Server(Listener):
    """Answers each connection's one request with ``respond(conn)`` (raw bytes, any shape)."""

    def __init__(self, respond: Callable[[socket.socket], None]) -> None:
        self.respond = respond
        self.requests: list[bytes] = []
        super().__init__("/bucket/lab/sha1/ab/cd/ef/x")

    def on_connection(self, conn: socket.socket) -> None:
        with conn:
            self.requests.append(conn.recv(65536))
            try:
                self.respond(conn)
            except OSError:
                pass


@pytest.fixture
def serve():
    servers = []

    def start(respond):
        servers.append(Server(respond))
        return servers[-1]
    yield start
    for s in servers:
        s.close()


def get(url: str, **kw) -> DirectGet:
    return DirectGet(url, connect_timeout=5, read_timeout=kw.pop("read_timeout", 10))


def collect() -> tuple[list[bytes], Callable[[memoryview], None]]:
    got: list[bytes] = []
    return got, lambda view: got.append(bytes(view))


def test_a_whole_object_arrives_in_order_with_progress(serve):
    server = serve(lambda c: c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n"
                                       b"Content-Type: application/octet-stream\r\n\r\n" % len(BODY) + BODY))
    got, write = collect()
    progress = []
    assert get(server.url).run(write, lambda d, t: progress.append((d, t))) == len(BODY)
    assert hashlib.sha1(b"".join(got)).digest() == hashlib.sha1(BODY).digest()
    assert progress[-1] == (len(BODY), len(BODY)) and len(progress) >= 3
    request = server.requests[0].decode()
    assert request.startswith("GET /bucket/lab/sha1/ab/cd/ef/x HTTP/1.1\r\n")
    assert "\r\nHost: 127.0.0.1:" in request and "Accept-Encoding: identity" in request


def test_a_range_is_asked_for_and_its_206_taken_directly(serve):
    part = BODY[1000:1_500_000]
    head = (b"HTTP/1.1 206 Partial Content\r\nContent-Length: %d\r\n"
            b"Content-Range: bytes 1000-1499999/%d\r\n\r\n" % (len(part), len(BODY)))
    server = serve(lambda c: c.sendall(head + part))
    got, write = collect()
    ranged = DirectGet(server.url, connect_timeout=5, read_timeout=10, start=1000, end=1_500_000)
    assert ranged.run(write) == len(part)
    assert b"".join(got) == part
    assert "\r\nRange: bytes=1000-1499999\r\n" in server.requests[0].decode()
    ignored = serve(lambda c: c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY))
    got, write = collect()
    with pytest.raises(DirectGetUnsupported, match="range"):  # the server ignored the range
        DirectGet(ignored.url, connect_timeout=5, read_timeout=10, start=1000).run(write)
    assert got == []


def test_error_statuses_are_typed(serve):
    missing = serve(lambda c: c.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"))
    with pytest.raises(NotFoundError):
        get(missing.url).run(collect()[1])
    body = b'{"error": {"code": "forbidden", "message": "no access"}}'
    head = b"HTTP/1.1 403 Forbidden\r\nContent-Length: %d\r\n\r\n" % len(body)
    refused = serve(lambda c: c.sendall(head + body))
    with pytest.raises(HubRequestError) as e:
        get(refused.url).run(collect()[1])
    assert (e.value.status, e.value.code, e.value.message) == (403, "forbidden", "no access")


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\n\r\nhello",  # no length: read to the end, which a full client does
    b"HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\n\r\nhello",
])
def test_what_it_does_not_handle_is_left_to_a_full_client_before_any_write(serve, head):
    server = serve(lambda c: c.sendall(head))
    got, write = collect()
    with pytest.raises(DirectGetUnsupported):
        get(server.url).run(write)
    assert got == []


def test_a_proxy_in_the_environment_leaves_it_to_httpx(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    with pytest.raises(DirectGetUnsupported, match="proxy"):
        get("https://storage.example/b/o")
    with pytest.raises(DirectGetUnsupported):
        DirectGet("ftp://x/y", connect_timeout=1, read_timeout=1)


def test_a_body_cut_short_is_an_error(serve):
    server = serve(lambda c: c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 500))
    with pytest.raises(HubRequestError, match="connection closed after 500 of 1000 bytes"):
        get(server.url).run(collect()[1])


def test_a_silent_server_times_out(serve):
    server = serve(lambda c: time.sleep(3))
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        get(server.url, read_timeout=0.5).run(collect()[1])
    assert time.monotonic() - t0 < 2.5


def test_abort_stops_a_blocked_download_and_no_write_follows(serve):
    def trickle(c: socket.socket) -> None:
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 1000)
        time.sleep(5)
    server = serve(trickle)
    got, write = collect()
    download = get(server.url)
    outcome: list[BaseException | int] = []

    def run() -> None:
        try:
            outcome.append(download.run(write))
        except BaseException as exc:
            outcome.append(exc)
    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    download.abort()
    writes_at_abort = len(got)
    t.join(2)
    assert not t.is_alive(), "the download did not stop"
    assert isinstance(outcome[0], DirectGetAborted), outcome
    assert len(got) == writes_at_abort == 1


@pytest.mark.parametrize("length", ["²", "1²", "٣", "+5", "99999999999999999999999"])
def test_a_malformed_content_length_is_a_typed_error(serve, length):
    """isdigit() alone accepted '²' and '٣', which int() then refused with a ValueError."""
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {length}\r\n\r\n".encode()
    server = serve(lambda c: c.sendall(head + b"hello"))
    with pytest.raises(HubRequestError, match="malformed Content-Length"):
        get(server.url).run(collect()[1])


class KeepAliveServer(Listener):
    """Answers every request on a connection until the client closes it; counts connections."""

    def __init__(self, body: bytes, extra_headers: bytes = b"") -> None:
        self.response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), extra_headers) + body
        self.connections = 0
        self.requests = 0
        super().__init__("/bucket/lab/feeds/x/0")

    def on_connection(self, conn: socket.socket) -> None:
        self.connections += 1
        threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    piece = conn.recv(65536)
                    if not piece:
                        return
                    data += piece
                _request, data = data.split(b"\r\n\r\n", 1)
                self.requests += 1
                conn.sendall(self.response)


def test_downloads_from_one_origin_share_a_kept_connection():
    """A catch-up downloads a hundred segments from the hub: one connection, not one each."""
    server = KeepAliveServer(b"segment" * 1000)
    try:
        for _ in range(5):
            got, write = collect()
            assert get(server.url).run(write) == 7000 and b"".join(got) == b"segment" * 1000
        assert (server.connections, server.requests) == (1, 5)
    finally:
        server.close()


def test_a_connection_the_server_closes_is_not_kept():
    """``Connection: close`` in the response: the next download connects anew."""
    server = KeepAliveServer(b"x" * 100, b"Connection: close\r\n")
    try:
        for _ in range(3):
            assert get(server.url).run(collect()[1]) == 100
        assert server.connections == 3
    finally:
        server.close()


def test_a_kept_connection_closed_meanwhile_is_replaced_without_an_error(serve):
    """The server closed the idle connection (this one answers once per connection, without
    saying so): the next download fails on it before any byte and goes again on a new one."""
    body = b"y" * 5000
    server = serve(lambda c: c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body))
    for _ in range(3):
        got, write = collect()
        assert get(server.url).run(write) == 5000 and b"".join(got) == body
    assert len(server.requests) == 3


def test_an_idle_connection_is_kept_only_for_a_while(monkeypatch):
    from kachery_node.transport.bucket import direct_get
    monkeypatch.setattr(direct_get, "IDLE_SECONDS", 0.0)
    server = KeepAliveServer(b"z" * 10)
    try:
        for _ in range(2):
            assert get(server.url).run(collect()[1]) == 10
        assert server.connections == 2
    finally:
        server.close()

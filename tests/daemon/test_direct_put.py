"""bucket/direct_put.py: PUTs straight onto the socket (a file range with sendfile), against a real
local HTTP server that reads and answers as each test needs (the hub serves the usual case in
tests/hub/test_bucket_client.py and the network tests)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kachery_node.errors import HubRequestError, LinkedFileChangedError
from kachery_node.transport.bucket.bucket_interface import FileRange
from kachery_node.transport.bucket.direct_put import DirectPut, DirectPutAborted, DirectPutUnsupported
from tests.http_listener import Listener

CONTENT = os.urandom(20 * (1 << 20) + 4321)  # many 1 MiB pieces and a remainder
OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{"size": 123}'


class UploadServer(Listener):
    """A local HTTP server on a free port: each connection's request head and body are read
    (``read_body(conn, head, length)`` decides how much of the body), then ``answer`` is sent."""

    def __init__(self, answer: bytes = OK,
                 read_body: Callable[[socket.socket, bytes, int], bytes] | None = None) -> None:
        self.answer = answer
        self.read_body = read_body or _read_all
        self.requests: list[tuple[bytes, bytes]] = []  # (head, body received)
        self.done = threading.Event()
        super().__init__("/bucket/lab/sha1/ab/x?sig=1")

    def on_connection(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                piece = conn.recv(65536)
                if not piece:
                    break
                data += piece
            head, _, rest = data.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            try:
                body = self.read_body(conn, rest, length)
                self.requests.append((head, body))
                if self.answer:
                    conn.sendall(self.answer)
            except OSError:
                pass
        self.done.set()


def _read_all(conn: socket.socket, first: bytes, length: int) -> bytes:
    body = bytearray(first)
    while len(body) < length:
        piece = conn.recv(1 << 20)
        if not piece:
            break
        body += piece
    return bytes(body)


@pytest.fixture
def server_factory():
    servers: list[UploadServer] = []

    def start(**kw) -> UploadServer:
        servers.append(UploadServer(**kw))
        return servers[-1]
    yield start
    for s in servers:
        s.close()


def put(url: str, data, size: int, **kw) -> DirectPut:
    source = data if isinstance(data, FileRange) else FileRange(Path(data), 0, size)
    return DirectPut(url, source, connect_timeout=5, read_timeout=kw.pop("read_timeout", 10))


@pytest.fixture
def big_file(tmp_path) -> Path:
    path = tmp_path / "big.bin"
    path.write_bytes(b"head" + CONTENT + b"tail")
    return path


def test_a_file_range_goes_out_exactly_with_progress(server_factory, big_file):
    server = server_factory()
    progress: list[tuple[int, int]] = []
    source = FileRange(big_file, 4, 4 + len(CONTENT), lambda st: True)
    answer = put(server.url, source, len(CONTENT)).run(lambda d, t: progress.append((d, t)))
    assert answer == b'{"size": 123}'
    head, body = server.requests[0]
    assert body == CONTENT
    assert head.startswith(b"PUT /bucket/lab/sha1/ab/x?sig=1 HTTP/1.1\r\n")
    assert b"\r\nContent-Length: %d\r\n" % len(CONTENT) in head + b"\r\n"
    assert progress[-1] == (len(CONTENT), len(CONTENT)) and len(progress) >= 3


def test_a_whole_file_goes_out_exactly(server_factory, big_file):
    server = server_factory()
    put(server.url, big_file, big_file.stat().st_size).run()
    assert [body for _head, body in server.requests] == [big_file.read_bytes()]


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"HTTP/1.1 201 Created\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc",
    b"HTTP/1.0 200 OK\r\n\r\n",  # no length: read to the end
])
def test_any_success_answer_once_the_body_is_sent_is_success(server_factory, big_file, answer):
    """An unusual answer's shape comes after the body: too late to leave the upload to httpx."""
    server = server_factory(answer=answer)
    put(server.url, FileRange(big_file, 0, 1000), 1000).run()
    assert server.requests[0][1] == big_file.read_bytes()[:1000]


def test_an_error_answer_is_typed_with_the_buckets_code(server_factory, big_file):
    body = b'{"error": {"code": "quota_exceeded", "message": "the channel is full"}}'
    server = server_factory(answer=b"HTTP/1.1 507 Insufficient Storage\r\nContent-Length: %d\r\n\r\n"
                            % len(body) + body)
    with pytest.raises(HubRequestError) as e:
        put(server.url, FileRange(big_file, 0, 100), 100).run()
    assert (e.value.status, e.value.code, e.value.message) == (507, "quota_exceeded", "the channel is full")


def test_a_refusal_before_the_body_is_read_is_reported_as_the_bucket_said_it(server_factory, big_file):
    """The bucket answers after the head and reads no further (but drains, so no reset)."""
    body = b'{"error": {"code": "forbidden", "message": "the grant expired"}}'
    answer = b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body

    def answer_first(conn: socket.socket, first: bytes, length: int) -> bytes:
        conn.sendall(answer)
        conn.shutdown(socket.SHUT_WR)
        _read_all(conn, first, length)  # drained after answering
        return b""
    server = server_factory(answer=b"", read_body=answer_first)
    with pytest.raises(HubRequestError) as e:
        put(server.url, FileRange(big_file, 0, big_file.stat().st_size), big_file.stat().st_size).run()
    assert (e.value.status, e.value.code) == (403, "forbidden")


def test_a_bucket_that_closes_without_reading_is_a_typed_error(server_factory, big_file):
    def close_at_once(conn: socket.socket, first: bytes, length: int) -> bytes:
        conn.close()
        return b""
    server = server_factory(answer=b"", read_body=close_at_once)
    size = big_file.stat().st_size
    with pytest.raises((HubRequestError, ConnectionError)):
        put(server.url, FileRange(big_file, 0, size), size).run()


def test_a_file_changed_before_its_last_piece_ends_the_body_short(server_factory, big_file):
    server = server_factory()
    checks = []

    def unchanged(st: os.stat_result) -> bool:
        checks.append(st)
        return len(checks) == 1  # as opened: fine; before the last piece: changed
    size = len(CONTENT)
    with pytest.raises(LinkedFileChangedError):
        put(server.url, FileRange(big_file, 4, 4 + size, unchanged), size).run()
    assert server.done.wait(10)
    assert len(server.requests[0][1]) < size  # the bucket saw an incomplete body
    assert len(checks) == 2


def test_a_file_shorter_than_its_range_ends_the_body_short(server_factory, big_file):
    server = server_factory()
    size = big_file.stat().st_size
    with pytest.raises(LinkedFileChangedError, match="ends before"):
        put(server.url, FileRange(big_file, 0, size + 100), size + 100).run()
    assert server.done.wait(10)
    assert len(server.requests[0][1]) == size


def test_a_proxy_in_the_environment_leaves_it_to_httpx(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    with pytest.raises(DirectPutUnsupported, match="proxy"):
        put("http://storage.example/b/o", Path("x"), 1)


def test_a_silent_bucket_times_out(server_factory, big_file):
    server = server_factory(read_body=lambda conn, first, length: (time.sleep(3), b"")[1])
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        put(server.url, FileRange(big_file, 0, 10), 10, read_timeout=0.5).run()
    assert time.monotonic() - t0 < 2.5


def test_abort_stops_an_upload_the_bucket_does_not_read(server_factory, big_file):
    reading = threading.Event()

    def stall(conn: socket.socket, first: bytes, length: int) -> bytes:
        reading.set()
        time.sleep(5)
        return b""
    server = server_factory(read_body=stall)
    size = big_file.stat().st_size
    upload = put(server.url, FileRange(big_file, 0, size), size, read_timeout=30)
    outcome: list[BaseException | bytes] = []

    def run() -> None:
        try:
            outcome.append(upload.run())
        except BaseException as exc:  # what the upload ended with is the result
            outcome.append(exc)
    t = threading.Thread(target=run)
    t.start()
    assert reading.wait(10)  # the head is in: the body is being sent, into buffers nobody reads
    upload.abort()
    t.join(5)
    assert not t.is_alive(), "the upload did not stop"
    assert isinstance(outcome[0], (DirectPutAborted, OSError)), outcome

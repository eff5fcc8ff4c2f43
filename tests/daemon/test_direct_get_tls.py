"""bucket/direct_get.py and direct_put.py over TLS: their own sockets trust what every other client trusts
(transport/tls.py: the system's store plus the lab's CA from KACHERY_CA_FILE), against a real
TLS server on 127.0.0.2 with a certificate from the test's own CA."""

from __future__ import annotations

import socket
import ssl
import threading

import pytest

from kachery_node.transport.bucket.bucket_interface import FileRange
from kachery_node.transport.bucket.direct_get import DirectGet
from kachery_node.transport.bucket.direct_put import DirectPut
from tests.tls_certs import TestCA

BODY = b"x" * 300_000


def _tls_server(cert, key, handle) -> tuple[socket.socket, int]:
    """An HTTPS server on 127.0.0.2 in a thread: ``handle(conn)`` answers each connection."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    sock = socket.socket()
    sock.bind(("127.0.0.2", 0))
    sock.listen()

    def serve() -> None:
        while True:
            try:
                raw, _ = sock.accept()
            except OSError:
                return
            try:
                with ctx.wrap_socket(raw, server_side=True) as conn:
                    handle(conn)
            except (OSError, ssl.SSLError):
                pass  # a client that refused our certificate

    threading.Thread(target=serve, daemon=True).start()
    return sock, sock.getsockname()[1]


def _answer_body(conn) -> None:
    conn.recv(65536)
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(BODY) + BODY)


def test_direct_get_trusts_the_lab_ca_and_only_it(tmp_path, monkeypatch):
    ca = TestCA(tmp_path / "ca")
    server = ca.issue("bucket", ["127.0.0.2"])
    sock, port = _tls_server(server.cert, server.key, _answer_body)
    url = f"https://127.0.0.2:{port}/bucket/lab/sha1/ab/cd/ef/x"
    try:
        monkeypatch.delenv("KACHERY_CA_FILE", raising=False)
        with pytest.raises(ssl.SSLCertVerificationError):
            DirectGet(url, connect_timeout=5, read_timeout=5).run(lambda piece: None)
        monkeypatch.setenv("KACHERY_CA_FILE", str(ca.cert))
        got = bytearray()
        assert DirectGet(url, connect_timeout=5, read_timeout=5).run(got.extend) == len(BODY)
        assert bytes(got) == BODY
    finally:
        sock.close()


def _receive_upload(received: list[bytes]):
    """A connection handler that reads a PUT's body (by its Content-Length) into ``received``
    and answers 200."""
    def handle(conn) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += conn.recv(1 << 20)
        received.append(body)
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
    return handle


def test_direct_put_sends_a_file_range_over_tls_trusting_the_lab_ca_only(tmp_path, monkeypatch):
    ca = TestCA(tmp_path / "ca")
    server = ca.issue("bucket", ["127.0.0.2"])
    received: list[bytes] = []
    sock, port = _tls_server(server.cert, server.key, _receive_upload(received))
    url = f"https://127.0.0.2:{port}/bucket/lab/sha1/ab/cd/ef/x?sig=1"
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * 12_000)  # ~3 MiB: several pieces
    source = FileRange(path, 100, path.stat().st_size - 100)
    try:
        monkeypatch.delenv("KACHERY_CA_FILE", raising=False)
        with pytest.raises(ssl.SSLCertVerificationError):
            DirectPut(url, source, connect_timeout=5, read_timeout=5).run()
        monkeypatch.setenv("KACHERY_CA_FILE", str(ca.cert))
        assert DirectPut(url, source, connect_timeout=5, read_timeout=5).run() == b"{}"
        assert received == [path.read_bytes()[100:-100]]
    finally:
        sock.close()

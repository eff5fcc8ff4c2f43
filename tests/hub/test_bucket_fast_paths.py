"""The bucket's fast paths in a real hub process, over raw sockets.

* hub/object_sendfile.py: a whole object's body goes out with sendfile on a plain connection,
  and the connection stays usable; a reader that stops reading is cut at the body rate
  (hypercorn's own sends would wait for it for ever).
* hub/body_passthrough.py: an upload's body goes from the socket to the bucket past h11, whatever
  follows it on the connection; the bodies h11 must read (chunked, ``Expect: 100-continue``)
  still arrive whole."""

from __future__ import annotations

import hashlib
import os
import socket
import textwrap
import time
from urllib.parse import urlsplit

import httpx
import pytest

from kachery_node.identity import Keypair
from kachery_node.protocol.signed_urls import sign_upload_url
from kachery_node.transport.hub_client import HubClient

from .conftest import HubProcess

MiB = 1 << 20

# A hub whose bucket GETs must move at 4 MiB/s after 1 s (the defaults: 16 KiB/s after 10 s).
STRICT_HUB = textwrap.dedent("""
    import sys
    from pathlib import Path
    from kachery_node.hub.app import HubSettings
    from kachery_node.hub.http_limits import HttpLimits
    from kachery_node.hub.serve import run_hub

    from kachery_node.hub import body_passthrough

    passed = Path(sys.argv[1]) / "passed-body-bytes"
    real_pass_body = body_passthrough.pass_body

    async def counting_pass_body(server, data):  # what went past h11, for the tests to see
        if not await real_pass_body(server, data):
            return False
        total = int(passed.read_text()) if passed.exists() else 0
        passed.write_text(str(total + len(data)))
        return True

    body_passthrough.pass_body = counting_pass_body
    limits = HttpLimits(body_grace_s=1.0, body_min_rate=4 << 20)
    run_hub(Path(sys.argv[1]), "127.0.0.1", 0, None, HubSettings(http=limits))
""")


@pytest.fixture(scope="module")
def strict_hub(tmp_path_factory):
    h = HubProcess(tmp_path_factory.mktemp("hub"), script=STRICT_HUB)
    with HubClient(h.url, user_key=Keypair.generate()) as owner:
        owner.create_channel("lab")
    yield h
    h.stop()


def _put_url(hub: HubProcess, key: str, size: int) -> str:
    hub_key = Keypair.from_seed_hex((hub.dir / "hub.key").read_text().strip())
    return sign_upload_url(hub_key, f"{hub.url}/bucket", f"lab/{key}", max_size=size,
                           expires=int(time.time()) + 600, node_id="0" * 64)


def _put(hub: HubProcess, key: str, data: bytes) -> str:
    """Store ``data`` as bucket object ``lab/<key>``; its GET path."""
    r = httpx.put(_put_url(hub, key, len(data)), content=data, timeout=30)
    assert r.status_code == 200, r.text
    return f"/bucket/lab/{key}"


def _connect(hub: HubProcess) -> socket.socket:
    parts = urlsplit(hub.url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def _read_response(s: socket.socket, buffered: bytearray) -> tuple[bytes, bytes]:
    """One whole response (head, body) off ``s``; bytes after it stay in ``buffered``."""
    while b"\r\n\r\n" not in buffered:
        piece = s.recv(1 << 16)
        assert piece, f"the connection ended before a response head: {bytes(buffered[:200])!r}"
        buffered += piece
    end = buffered.index(b"\r\n\r\n") + 4
    head = bytes(buffered[:end])
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(buffered) < end + length:
        piece = s.recv(1 << 20)
        assert piece, "the connection ended within a body"
        buffered += piece
    body = bytes(buffered[end : end + length])
    del buffered[: end + length]
    return head, body


def test_whole_objects_come_whole_and_the_connection_serves_on(strict_hub):
    big = os.urandom(24 * MiB + 12345)
    small = b"a small object"
    big_path = _put(strict_hub, "feeds/big", big)
    small_path = _put(strict_hub, "feeds/small", small)
    empty_path = _put(strict_hub, "feeds/empty", b"")
    with _connect(strict_hub) as s:
        buffered = bytearray()
        # One after the other, then three pipelined: each answer whole, in order.
        for path, data in ((big_path, big), (small_path, small)):
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head, body = _read_response(s, buffered)
            assert head.startswith(b"HTTP/1.1 200 ") and body == data
            assert b"access-control-allow-origin: *" in head.lower()
        s.sendall(b"".join(f"GET {p} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                           for p in (small_path, empty_path, big_path)))
        answers = [_read_response(s, buffered) for _ in range(3)]
        assert [body for _head, body in answers] == [small, b"", big]
        # HEAD and ranges still go Starlette's way on the same connection.
        s.sendall(f"HEAD {big_path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        while b"\r\n\r\n" not in buffered:
            buffered += s.recv(1 << 16)
        head = bytes(buffered[: buffered.index(b"\r\n\r\n") + 4])
        del buffered[: len(head)]
        assert f"content-length: {len(big)}".encode() in head.lower()
        s.sendall(f"GET {big_path} HTTP/1.1\r\nHost: x\r\nRange: bytes=100-199\r\n\r\n".encode())
        head, body = _read_response(s, buffered)
        assert head.startswith(b"HTTP/1.1 206 ") and body == big[100:200]
    got = httpx.get(f"{strict_hub.url}{big_path}", timeout=30)
    assert hashlib.sha1(got.content).digest() == hashlib.sha1(big).digest()


# A hub whose h11, as far as the sendfile path can tell, does not count a whole object's body
# after its head (another hypercorn or h11 than the pinned ones): the body must then go the
# ordinary way after all, read out of the open file. Each time it does is counted.
UNCOUNTED_HUB = textwrap.dedent("""
    import sys
    from pathlib import Path
    from kachery_node.hub import object_sendfile
    from kachery_node.hub.app import HubSettings
    from kachery_node.hub.serve import run_hub

    fallbacks = Path(sys.argv[1]) / "read-out-bodies"

    def not_ready(self, size):
        total = int(fallbacks.read_text()) if fallbacks.exists() else 0
        fallbacks.write_text(str(total + 1))
        return False

    object_sendfile.BodySender.ready_for = not_ready
    run_hub(Path(sys.argv[1]), "127.0.0.1", 0, None, HubSettings())
""")


def test_a_body_h11_does_not_count_is_read_out_the_ordinary_way(tmp_path):
    hub = HubProcess(tmp_path / "hub", script=UNCOUNTED_HUB)  # stopped with the test
    with HubClient(hub.url, user_key=Keypair.generate()) as owner:
        owner.create_channel("lab")
    big = os.urandom(3 * MiB + 777)
    paths = {_put(hub, "feeds/big", big): big, _put(hub, "feeds/small", b"small"): b"small",
             _put(hub, "feeds/empty", b""): b""}
    with _connect(hub) as s:
        buffered = bytearray()
        s.sendall(b"".join(f"GET {p} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for p in paths))
        answers = [_read_response(s, buffered) for _ in paths]
        assert [body for _head, body in answers] == list(paths.values())
        assert all(head.startswith(b"HTTP/1.1 200 ") for head, _body in answers)
        s.sendall(f"GET {next(iter(paths))} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert _read_response(s, buffered)[1] == big  # the connection serves on
    assert int((hub.dir / "read-out-bodies").read_text()) == 4


def _wait_for_log(hub: HubProcess, text: str, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while text not in hub.log():
        assert time.monotonic() < deadline, f"no {text!r} in the hub's log within {timeout} s"
        time.sleep(0.05)
    return time.monotonic()


def test_a_reader_that_stops_reading_is_cut_at_the_body_rate(strict_hub):
    path = _put(strict_hub, "feeds/stalled", os.urandom(64 * MiB))
    before = strict_hub.log().count("closing the connection")
    with _connect(strict_hub) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        started = time.monotonic()
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        # Nothing is read: the socket buffers fill and the hub waits, then cuts the connection
        # once the body is behind 1 s + 4 MiB/s.
        deadline = time.monotonic() + 20
        while strict_hub.log().count("closing the connection") == before:
            assert time.monotonic() < deadline, "the hub kept waiting for a reader that stopped"
            time.sleep(0.05)
        assert time.monotonic() - started < 10
        assert httpx.get(f"{strict_hub.url}/api/hub", timeout=5).status_code == 200  # serving on
        s.settimeout(10)
        received = 0
        try:
            while piece := s.recv(1 << 20):
                received += len(piece)
        except ConnectionResetError:
            pass
        assert received < 64 * MiB  # the connection ended short of the announced body
    assert "stopped after" in strict_hub.log() and "the reader took" in strict_hub.log()


def test_a_reader_that_leaves_mid_body_changes_nothing_for_others(strict_hub):
    data = os.urandom(32 * MiB)
    path = _put(strict_hub, "feeds/left", data)
    for _ in range(3):
        with _connect(strict_hub) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert s.recv(1 << 16)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        # closed with a reset, mid-body
    got = httpx.get(f"{strict_hub.url}{path}", timeout=30)
    assert got.status_code == 200 and got.content == data
    assert "Traceback" not in strict_hub.log()
    assert "Traceback" not in (strict_hub.dir / "stderr.txt").read_text()


def _passed(hub: HubProcess) -> int:
    path = hub.dir / "passed-body-bytes"
    return int(path.read_text()) if path.exists() else 0


def _request_target(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def test_upload_bodies_go_past_h11_and_what_follows_them_is_served(strict_hub):
    with _connect(strict_hub) as s:
        buffered = bytearray()
        for i, size in enumerate((1, 3 * MiB + 5, 24 * MiB, 0)):
            data = os.urandom(size)
            put = _request_target(_put_url(strict_hub, f"feeds/up{i}", size))
            before = _passed(strict_hub)
            # The body's end and a GET of the object travel together: the GET waits in the same
            # receive as the body's last bytes.
            s.sendall(f"PUT {put} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode()
                      + data + f"GET /bucket/lab/feeds/up{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head, body = _read_response(s, buffered)
            assert head.startswith(b"HTTP/1.1 200 "), head + body
            assert f'"size":{size}}}'.encode() in body
            head, body = _read_response(s, buffered)
            assert head.startswith(b"HTTP/1.1 200 ") and body == data
            if size > MiB:  # past h11, apart from what came with the request's head
                assert _passed(strict_hub) - before >= size - MiB


def test_bodies_h11_must_read_still_arrive_whole(strict_hub):
    data = os.urandom(2 * MiB + 7)
    with _connect(strict_hub) as s:
        buffered = bytearray()
        put = _request_target(_put_url(strict_hub, "feeds/continue", len(data)))
        s.sendall(f"PUT {put} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n"
                  "Expect: 100-continue\r\n\r\n".encode())
        while b"\r\n\r\n" not in buffered:
            buffered += s.recv(1 << 16)
        assert buffered.startswith(b"HTTP/1.1 100 ")
        del buffered[: buffered.index(b"\r\n\r\n") + 4]
        s.sendall(data)
        head, body = _read_response(s, buffered)
        assert head.startswith(b"HTTP/1.1 200 "), head + body
        put = _request_target(_put_url(strict_hub, "feeds/chunked", len(data)))
        pieces = [data[i : i + 300_000] for i in range(0, len(data), 300_000)]
        s.sendall(f"PUT {put} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                  + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n")
        head, body = _read_response(s, buffered)
        assert head.startswith(b"HTTP/1.1 200 "), head + body
    for key in ("continue", "chunked"):
        assert httpx.get(f"{strict_hub.url}/bucket/lab/feeds/{key}", timeout=30).content == data


def test_an_upload_cut_short_stores_nothing_and_the_hub_serves_on(strict_hub):
    data = os.urandom(8 * MiB)
    put = _request_target(_put_url(strict_hub, "feeds/cut", len(data)))
    with _connect(strict_hub) as s:
        s.sendall(f"PUT {put} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                  + data[: 5 * MiB])
    # The hub sees the connection end within the body; the object never appears.
    _wait_for_log(strict_hub, "bucket upload of lab/feeds/cut cut short by its client", 20)
    assert list((strict_hub.dir / "bucket" / ".tmp").iterdir()) == []
    assert httpx.get(f"{strict_hub.url}/bucket/lab/feeds/cut", timeout=10).status_code == 404
    r = httpx.put(_put_url(strict_hub, "feeds/cut", len(data)), content=data, timeout=30)
    assert r.status_code == 200
    assert httpx.get(f"{strict_hub.url}/bucket/lab/feeds/cut", timeout=30).content == data
    assert "Traceback" not in (strict_hub.dir / "stderr.txt").read_text()

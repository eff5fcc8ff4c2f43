"""The node's bucket client (transport/bucket): streamed downloads of whole objects or byte
ranges into a file or a sink, with progress, and signed PUTs with progress, against the hub's
real object store; and the httpx fallback (a chunked answer, a server ignoring ``Range``)
against a raw HTTP server."""

from __future__ import annotations

import hashlib
import os
import socket
import threading

import pytest

from kachery_node.errors import HubRequestError, LinkedFileChangedError, NotFoundError
from kachery_node.transport.bucket.bucket_interface import FileRange
from kachery_node.transport.bucket.http_bucket import HttpBucket

from .conftest import Actor

DATA = os.urandom(3 * (1 << 20) + 4321)  # several 1 MiB pieces and a remainder


class Sink:
    """A ByteSink: takes every piece in a worker thread (as a hashing chunk sink does)."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.threads: set[int] = set()

    def write_blocking(self, data: bytes | memoryview) -> None:
        self.pieces.append(bytes(data))
        self.threads.add(threading.get_ident())

    @property
    def data(self) -> bytes:
        return b"".join(self.pieces)


def sha1_path(data: bytes) -> str:
    h = hashlib.sha1(data).hexdigest()
    return f"sha1/{h[:2]}/{h[2:4]}/{h[4:6]}/{h}"


@pytest.fixture(scope="module")
def channel(hub):
    owner = Actor(hub.url, "owner")
    name = f"bucketclient.t{os.getpid()}"
    owner.client.create_channel(name)
    p = Actor(hub.url, "prov")
    p.client.register_node("prov")
    p.client.request_roles(name, p.node_id, ["provide-files"])
    owner.client.grant(name, p.node_id, ["provide-files"])
    return name, p


@pytest.mark.trio
async def test_put_and_download_whole_and_ranges(hub, channel, tmp_path):
    name, p = channel
    path = sha1_path(DATA)
    [url] = p.client.upload_urls(name, [{"path": path, "size": len(DATA)}])
    bucket = HttpBucket(f"{hub.url}/bucket")
    try:
        sent: list[tuple[int, int]] = []
        await bucket.put(url, DATA, progress=lambda d, t: sent.append((d, t)))
        assert sent[-1] == (len(DATA), len(DATA)) and len(sent) == 4  # live, per 1 MiB piece
        key = f"{name}/{path}"

        got: list[tuple[int, int]] = []
        dest = tmp_path / "whole"
        assert await bucket.download(key, dest, progress=lambda d, t: got.append((d, t))) == len(DATA)
        assert dest.read_bytes() == DATA and got[-1] == (len(DATA), len(DATA))
        with pytest.raises(FileExistsError):  # a path is a new file: never overwritten
            await bucket.download(key, dest)

        sink, got = Sink(), []
        start, end = (1 << 20) - 7, 2 * (1 << 20) + 9
        n = await bucket.download(key, sink, start=start, end=end, progress=lambda d, t: got.append((d, t)))
        assert n == end - start and sink.data == DATA[start:end] and got[-1] == (n, n)
        assert threading.get_ident() not in sink.threads  # written off the event loop's thread

        tail = Sink()
        assert await bucket.download(key, tail, start=len(DATA) - 10) == 10 and tail.data == DATA[-10:]
        past = Sink()  # a range reaching past the end gets what there is
        assert await bucket.download(key, past, start=len(DATA) - 3, end=len(DATA) + 100) == 3
        assert await bucket.download(key, Sink(), start=5, end=5) == 0  # empty: nothing asked
        assert await bucket.get(key, 10, 20) == DATA[10:20]

        with pytest.raises(NotFoundError):
            await bucket.download(f"{name}/{sha1_path(b'absent')}", Sink())
    finally:
        await bucket.aclose()


@pytest.mark.trio
async def test_put_streams_a_file_and_refusals_are_typed(hub, channel, tmp_path):
    name, p = channel
    data = os.urandom(2 * (1 << 20) + 1)
    src = tmp_path / "src"
    src.write_bytes(data)
    path = sha1_path(data)
    [url] = p.client.upload_urls(name, [{"path": path, "size": len(data)}])
    bucket = HttpBucket(f"{hub.url}/bucket")
    try:
        sent: list[tuple[int, int]] = []
        await bucket.put(url, src, progress=lambda d, t: sent.append((d, t)))
        # live: the first MiB's report, then at most one each 50 ms, and the last
        assert sent[0] == (1 << 20, len(data)) and sent[-1] == (len(data), len(data)) and len(sent) <= 3
        sink = Sink()
        await bucket.download(f"{name}/{path}", sink)
        assert sink.data == data
        [other] = p.client.upload_urls(name, [{"path": sha1_path(b"x" * 5), "size": 5}])
        with pytest.raises(HubRequestError) as e:
            await bucket.put(other, b"y" * 5)  # does not hash to its name
        assert (e.value.status, e.value.code) == (422, "hash_mismatch")
    finally:
        await bucket.aclose()


@pytest.mark.trio
async def test_put_streams_a_file_range_and_stops_short_when_the_file_changed(hub, channel, tmp_path):
    """A provider's chunk goes up as bytes [start, end) of its stored file, read a piece at a
    time; a file whose stat changed by the last piece, or that ends early, fails the upload
    before its body is complete, and the bucket stores nothing."""
    name, p = channel
    src = tmp_path / "stored"
    src.write_bytes(DATA)
    start, end = 12345, 12345 + 2 * (1 << 20) + 777
    path = sha1_path(DATA[start:end])
    stat_then = os.stat(src)
    bucket = HttpBucket(f"{hub.url}/bucket")
    try:
        [url] = p.client.upload_urls(name, [{"path": path, "size": end - start}])
        sent: list[tuple[int, int]] = []
        checks: list[int] = []

        def unchanged(st: os.stat_result) -> bool:
            checks.append(st.st_ino)
            return (st.st_ino, st.st_mtime_ns, st.st_size) == (
                stat_then.st_ino, stat_then.st_mtime_ns, stat_then.st_size)

        await bucket.put(url, FileRange(src, start, end, unchanged),
                         progress=lambda d, t: sent.append((d, t)))
        # live: the first MiB's report, then at most one each 50 ms, and the last
        assert sent[0] == (1 << 20, end - start) and sent[-1] == (end - start, end - start) and len(sent) <= 3
        assert len(checks) == 2  # opened, and before the last piece
        sink = Sink()
        await bucket.download(f"{name}/{path}", sink)
        assert sink.data == DATA[start:end]

        other = DATA[start + 1 : end + 1]
        other_path = sha1_path(other)
        verdicts = iter([True, False])  # the file changes while its range is being read
        [url] = p.client.upload_urls(name, [{"path": other_path, "size": len(other)}])
        with pytest.raises(LinkedFileChangedError, match="changed while"):
            await bucket.put(url, FileRange(src, start + 1, end + 1, lambda st: next(verdicts)))
        [url] = p.client.upload_urls(name, [{"path": other_path, "size": len(other)}])
        with pytest.raises(LinkedFileChangedError, match="ends before"):
            await bucket.put(url, FileRange(src, len(DATA) - 10, len(DATA) + len(other) - 10))
        with pytest.raises(NotFoundError):
            await bucket.download(f"{name}/{other_path}", Sink())
    finally:
        await bucket.aclose()


class RawServer:
    """Answers every GET with what ``respond(request_bytes)`` returns (raw HTTP)."""

    def __init__(self, respond) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests: list[bytes] = []

        def serve() -> None:
            while True:
                try:
                    conn, _ = self.sock.accept()
                except OSError:
                    return
                with conn:
                    request = conn.recv(65536)
                    self.requests.append(request)
                    try:
                        conn.sendall(respond(request))
                    except OSError:
                        pass

        threading.Thread(target=serve, daemon=True).start()


def chunked(status: bytes, body: bytes, extra: bytes = b"") -> bytes:
    """A chunked answer: the direct download leaves it to httpx."""
    pieces = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 70000]), body[i:i + 70000])
                      for i in range(0, len(body), 70000))
    return (b"HTTP/1.1 " + status + b"\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n" + extra
            + b"\r\n" + pieces + b"0\r\n\r\n")


@pytest.mark.trio
@pytest.mark.parametrize("honours_range", [True, False])
async def test_the_httpx_fallback_keeps_exactly_the_range(tmp_path, honours_range):
    def respond(request: bytes) -> bytes:
        line = next((x for x in request.split(b"\r\n") if x.lower().startswith(b"range: bytes=")), None)
        if line is None or not honours_range:
            return chunked(b"200 OK", DATA)
        a, b = line.split(b"=", 1)[1].split(b"-")
        return chunked(b"206 Partial Content", DATA[int(a):int(b) + 1])

    server = RawServer(respond)
    bucket = HttpBucket(server.url)
    try:
        start, end = 1_500_000, 2_600_000
        sink, got = Sink(), []
        n = await bucket.download("lab/sha1/ab/cd/ef/x", sink, start=start, end=end,
                                  progress=lambda d, t: got.append(d))
        assert n == end - start and sink.data == DATA[start:end] and got[-1] == n
        assert b"Range: bytes=1500000-2599999" in server.requests[-1]
        dest = tmp_path / "whole"
        assert await bucket.download("lab/sha1/ab/cd/ef/x", dest) == len(DATA)
        assert dest.read_bytes() == DATA
    finally:
        await bucket.aclose()

"""Bucket downloads (whole objects or byte ranges) straight off a socket, in a worker thread.

Why not httpx for these: a bucket object of 20 MB or more (a chunk of a large file) arrives in
64 KiB pieces, each passed through h11, httpcore and the event loop; measured on this machine,
1 GiB from the hub took 3.1-3.5 CPU-s in the receiving process that way and 0.9 CPU-s here
(270-290 MB/s against 850 MB/s, same hub). Here one blocking ``recv_into`` fills a 1 MiB
buffer, which the caller's ``write`` consumes (hash and ``pwrite``, both releasing the GIL)
before the next ``recv_into``: one copy from the kernel, none in Python.

Connections are kept alive: a response read to its end (status 200 or 206, no ``Connection:
close``, nothing after its body) leaves its connection in a small pool for the next download
from the same origin (:data:`IDLE_PER_ORIGIN` at most, each for :data:`IDLE_SECONDS`, below
common servers' keep-alive timeouts). A catch-up downloads a hundred segments; a new connection
for each cost the hub an accept and a connection set-up per segment. A kept connection the
server closed meanwhile fails before any response byte, and the download then goes once more
on a new connection (a GET changes nothing, and nothing was written yet).

Only the plain case is handled: ``GET`` of a whole object (``200``), or of a byte range
(``Range: bytes=a-b``, answered ``206``), over HTTP/1.1 (``https`` with SNI, certificates checked
as by every other client: :func:`~kachery_node.transport.tls.ssl_context`), a response with
``Content-Length`` and no transfer or content coding, no proxy configured. Anything else raises
:class:`DirectGetUnsupported` before a byte reaches ``write``, and the caller uses its general
HTTP client instead (:mod:`.http_transfer` does both).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import orjson

from ...errors import HubRequestError, InvalidDataError, NotFoundError
from ..tls import ssl_context
from .xml_errors import xml_error

BUFFER_BYTES = 1 << 20
MAX_HEADER_BYTES = 64 << 10
MAX_ERROR_BODY = 64 << 10
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy")
IDLE_PER_ORIGIN = 8  # kept-alive connections kept per (scheme, host, port)
IDLE_SECONDS = 2.0  # how long one is kept unused (hypercorn closes after 5 s, S3 after ~20)


class DirectGetUnsupported(Exception):
    """This download needs a full HTTP client (a proxy, a chunked or encoded response, ...)."""


class DirectGetAborted(Exception):
    """:meth:`DirectGet.abort` was called: the download stopped, and ``write`` is not called again."""


class _NoResponse(HubRequestError):
    """The connection ended before a byte of the response: on a kept connection, the server
    closed it while it was idle, and the request may go again on a new one."""


Origin = tuple[bool, str, int]  # (https, host, port)


class _IdleConnections:
    """Connections whose last response was read to its end, per origin, newest last."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[Origin, list[tuple[socket.socket, float]]] = {}

    def take(self, origin: Origin) -> socket.socket | None:
        """The newest connection to ``origin`` idle for less than IDLE_SECONDS, if any."""
        now = time.monotonic()
        with self._lock:
            kept = self._idle.pop(origin, [])
            fresh = [(sock, since) for sock, since in kept if now - since < IDLE_SECONDS]
            found = fresh.pop()[0] if fresh else None
            if fresh:
                self._idle[origin] = fresh
        for sock, since in kept:
            if now - since >= IDLE_SECONDS:
                sock.close()
        return found

    def give(self, origin: Origin, sock: socket.socket) -> None:
        with self._lock:
            kept = self._idle.setdefault(origin, [])
            kept.append((sock, time.monotonic()))
            extra = kept[:-IDLE_PER_ORIGIN] if len(kept) > IDLE_PER_ORIGIN else []
            del kept[:len(extra)]
        for old, _since in extra:
            old.close()


_idle_connections = _IdleConnections()


def proxy_configured() -> bool:
    """Whether the environment names an HTTP proxy (httpx would use it; this module cannot)."""
    return any(os.environ.get(v) or os.environ.get(v.upper()) for v in _PROXY_VARS)


def range_header(start: int | None, end: int | None) -> str | None:
    """The ``Range`` header value for bytes ``[start, end)`` (None: the whole object)."""
    if start is None and end is None:
        return None
    if (start or 0) < 0 or (end is not None and end <= (start or 0)):
        raise InvalidDataError(f"not a non-empty byte range: [{start}, {end})")
    return f"bytes={start or 0}-{'' if end is None else end - 1}"


class DirectGet:
    """One GET of ``url`` (bytes ``[start, end)`` of it if either is given); :meth:`run` blocks
    (call it in a worker thread), :meth:`abort` stops it from any thread and returns only once
    ``write`` is no longer running nor called again."""

    def __init__(self, url: str, *, connect_timeout: float, read_timeout: float,
                 start: int | None = None, end: int | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DirectGetUnsupported(f"not an http(s) URL: {url}")
        if proxy_configured():
            raise DirectGetUnsupported("an HTTP proxy is configured")
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._range = range_header(start, end)
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._lock = threading.Lock()  # held while ``write`` runs; abort() takes it
        self._aborted = False
        self._sock: socket.socket | None = None

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a recv blocked in the worker thread
            except OSError:
                pass

    def run(self, write: Callable[[memoryview], None],
            progress: Callable[[int, int], None] | None = None) -> int:
        """Download the object (or the range), handing its bytes to ``write`` in order; returns
        how many bytes that was.

        Raises NotFoundError (404), HubRequestError (another error status, or the connection
        ending early), DirectGetUnsupported (nothing written yet), DirectGetAborted, or OSError
        (network failure, timeout)."""
        origin = (self._https, self._host, self._port)
        kept = _idle_connections.take(origin)
        sock = kept if kept is not None else self._connect()
        reusable = False
        try:
            self._hold(sock)
            try:
                status, headers, body_start = self._ask(sock)
            except (_NoResponse, ConnectionError):  # (not a timeout: that one is the server's)
                if kept is None:
                    raise
                self._hold(None)  # the server closed the kept connection: once more, anew
                sock.close()
                sock = self._connect()
                self._hold(sock)
                status, headers, body_start = self._ask(sock)
            length = _content_length(headers)
            if status >= 400:
                raise self._error(sock, status, headers, body_start, length)
            # A range is answered 206; a server that ignored it (200) is left to the full client.
            if status != (206 if self._range else 200):
                raise DirectGetUnsupported(f"HTTP {status}" + (" to a range request" if self._range else ""))
            if length is None:
                raise DirectGetUnsupported("no Content-Length")
            done = self._read_body(sock, body_start, length, write, progress)
            reusable = len(body_start) <= length and _keeps_alive(headers)
            return done
        finally:
            with self._lock:
                self._sock = None
                reusable = reusable and not self._aborted  # an abort may be shutting it down
            if reusable:
                _idle_connections.give(origin, sock)
            else:
                sock.close()

    def _hold(self, sock: socket.socket | None) -> None:
        """Make ``sock`` the one :meth:`abort` shuts down (raises if aborted already)."""
        with self._lock:
            if self._aborted and sock is not None:
                raise DirectGetAborted(self.url)
            self._sock = sock

    def _ask(self, sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
        """Send the request and read the response's head."""
        host = self._host if ":" not in self._host else f"[{self._host}]"
        default_port = 443 if self._https else 80
        host_header = host if self._port == default_port else f"{host}:{self._port}"
        range_line = f"Range: {self._range}\r\n" if self._range else ""
        sock.sendall(f"GET {self._target} HTTP/1.1\r\nHost: {host_header}\r\n"
                     f"Accept-Encoding: identity\r\n{range_line}"
                     "User-Agent: kachery\r\n\r\n".encode("latin-1"))
        return self._read_head(sock)

    # ------------------------------------------------------------------ pieces
    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self._host, self._port), timeout=self._connect_timeout)
        try:
            sock.settimeout(self._read_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._https:
                sock = ssl_context().wrap_socket(sock, server_hostname=self._host)
        except BaseException:
            sock.close()
            raise
        return sock

    def _read_head(self, sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
        data = b""
        while b"\r\n\r\n" not in data:
            if len(data) > MAX_HEADER_BYTES:
                raise HubRequestError(502, "http_error", f"GET {self.url}: response headers too long")
            piece = sock.recv(65536)
            if not piece:
                self._check_aborted()
                error = _NoResponse if not data else HubRequestError
                raise error(502, "http_error", f"GET {self.url}: connection closed before a response")
            data += piece
        head, rest = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        try:
            version, code = lines[0].split(" ", 2)[:2]
            status = int(code)
        except ValueError:
            raise HubRequestError(502, "http_error", f"GET {self.url}: malformed status line") from None
        if not version.startswith("HTTP/1."):
            raise DirectGetUnsupported(f"protocol {version}")
        headers: dict[str, str] = {_VERSION: version}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise HubRequestError(502, "http_error", f"GET {self.url}: malformed header line")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        if headers.get("transfer-encoding", "identity").lower() != "identity":
            raise DirectGetUnsupported(f"Transfer-Encoding {headers['transfer-encoding']}")
        if headers.get("content-encoding", "identity").lower() != "identity":
            raise DirectGetUnsupported(f"Content-Encoding {headers['content-encoding']}")
        return status, headers, rest

    def _error(self, sock: socket.socket, status: int, headers: dict[str, str], body: bytes,
               length: int | None) -> Exception:
        if status == 404:
            return NotFoundError(f"{self.url}: no such object")
        want = min(length if length is not None else MAX_ERROR_BODY, MAX_ERROR_BODY)
        try:
            while len(body) < want and (piece := sock.recv(want - len(body))):
                body += piece
        except OSError:
            pass
        try:
            err = orjson.loads(body)["error"]
            return HubRequestError(status, str(err["code"]), str(err["message"]))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            pass
        s3 = xml_error(body)  # an object store's own refusal (S3: AccessDenied, …)
        if s3 is not None:
            return HubRequestError(status, s3[0], f"GET {self.url}: {s3[1]}")
        return HubRequestError(status, "http_error", f"GET {self.url}: HTTP {status}")

    def _read_body(self, sock: socket.socket, first: bytes, length: int,
                   write: Callable[[memoryview], None], progress: Callable[[int, int], None] | None) -> int:
        done = 0
        if first:
            first_view = memoryview(first)[:length]
            self._deliver(write, first_view)
            done = len(first_view)
        buf = bytearray(BUFFER_BYTES)
        view = memoryview(buf)
        while done < length:
            n = sock.recv_into(view, min(BUFFER_BYTES, length - done))
            if not n:
                self._check_aborted()
                raise HubRequestError(502, "http_error",
                                      f"GET {self.url}: connection closed after {done} of {length} bytes")
            self._deliver(write, view[:n])
            done += n
            if progress is not None:
                progress(done, length)
        return done

    def _deliver(self, write: Callable[[memoryview], None], piece: memoryview) -> None:
        with self._lock:
            if self._aborted:
                raise DirectGetAborted(self.url)
            write(piece)

    def _check_aborted(self) -> None:
        with self._lock:
            if self._aborted:
                raise DirectGetAborted(self.url)


_VERSION = ":version"  # the response's HTTP version, kept among its headers (not a header name)


def _keeps_alive(headers: dict[str, str]) -> bool:
    """Whether the server keeps the connection open after this response (HTTP/1.1's default)."""
    return headers[_VERSION] == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()


def _content_length(headers: dict[str, str]) -> int | None:
    value = headers.get("content-length")
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 18:  # isdigit alone takes '²'
        raise HubRequestError(502, "http_error", f"malformed Content-Length {value!r}")
    return int(value)

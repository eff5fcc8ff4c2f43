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
HTTP client instead (:mod:`.http_transfer` does both). What a GET shares with an upload (the
connection, the response's head, its typed errors, the abort) is in :mod:`.direct_http`.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from ...errors import HubRequestError, InvalidDataError
from .direct_http import (
    DirectAborted,
    DirectExchange,
    DirectUnsupported,
    NoResponse,
    Origin,
    content_length,
    keeps_alive,
    proxy_configured,
)

BUFFER_BYTES = 1 << 20
IDLE_PER_ORIGIN = 8  # kept-alive connections kept per (scheme, host, port)
IDLE_SECONDS = 2.0  # how long one is kept unused (hypercorn closes after 5 s, S3 after ~20)


class DirectGetUnsupported(DirectUnsupported):
    """This download needs a full HTTP client (a proxy, a chunked or encoded response, ...)."""


class DirectGetAborted(DirectAborted):
    """:meth:`DirectGet.abort` was called: the download stopped, and ``write`` is not called again."""


__all__ = ["DirectGet", "DirectGetAborted", "DirectGetUnsupported", "proxy_configured", "range_header"]


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


def range_header(start: int | None, end: int | None) -> str | None:
    """The ``Range`` header value for bytes ``[start, end)`` (None: the whole object)."""
    if start is None and end is None:
        return None
    if (start or 0) < 0 or (end is not None and end <= (start or 0)):
        raise InvalidDataError(f"not a non-empty byte range: [{start}, {end})")
    return f"bytes={start or 0}-{'' if end is None else end - 1}"


class DirectGet(DirectExchange):
    """One GET of ``url`` (bytes ``[start, end)`` of it if either is given); :meth:`run` blocks
    (call it in a worker thread), :meth:`abort` stops it from any thread and returns only once
    ``write`` is no longer running nor called again."""

    method = "GET"
    unsupported = DirectGetUnsupported
    aborted = DirectGetAborted

    def __init__(self, url: str, *, connect_timeout: float, read_timeout: float,
                 start: int | None = None, end: int | None = None) -> None:
        super().__init__(url, connect_timeout=connect_timeout, read_timeout=read_timeout)
        self._range = range_header(start, end)

    def run(self, write: Callable[[memoryview], None],
            progress: Callable[[int, int], None] | None = None) -> int:
        """Download the object (or the range), handing its bytes to ``write`` in order; returns
        how many bytes that was.

        Raises NotFoundError (404), HubRequestError (another error status, or the connection
        ending early), DirectGetUnsupported (nothing written yet), DirectGetAborted, or OSError
        (network failure, timeout)."""
        origin = self.origin
        kept = _idle_connections.take(origin)
        sock = kept if kept is not None else self._connect()
        reusable = False
        try:
            self._hold(sock)
            try:
                status, headers, body_start = self._ask(sock)
            except (NoResponse, ConnectionError):  # (not a timeout: that one is the server's)
                if kept is None:
                    raise
                self._hold(None)  # the server closed the kept connection: once more, anew
                sock.close()
                sock = self._connect()
                self._hold(sock)
                status, headers, body_start = self._ask(sock)
            length = content_length(headers)
            if status >= 400:
                raise self._error(sock, status, headers, body_start, length)
            # A range is answered 206; a server that ignored it (200) is left to the full client.
            if status != (206 if self._range else 200):
                raise DirectGetUnsupported(f"HTTP {status}" + (" to a range request" if self._range else ""))
            if length is None:
                raise DirectGetUnsupported("no Content-Length")
            done = self._read_body(sock, body_start, length, write, progress)
            reusable = len(body_start) <= length and keeps_alive(headers)
            return done
        finally:
            with self._lock:
                self._sock = None
                reusable = reusable and not self._aborted  # an abort may be shutting it down
            if reusable:
                _idle_connections.give(origin, sock)
            else:
                sock.close()

    def _ask(self, sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
        """Send the request and read the response's head."""
        range_line = [f"Range: {self._range}"] if self._range else []
        sock.sendall(self._request_head(["Accept-Encoding: identity", *range_line, "User-Agent: kachery"]))
        return self._read_head(sock)

    # ------------------------------------------------------------------ pieces
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
                                      f"{self._what}: connection closed after {done} of {length} bytes")
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

"""What bucket transfers straight off a socket share (:mod:`.direct_get` downloads, :mod:`.direct_put`
uploads): one HTTP/1.1 exchange with an ``http(s)`` URL on a blocking socket, run in a worker
thread, which :meth:`DirectExchange.abort` can stop from any other thread.

Only the plain case is handled: no proxy configured, HTTP/1.x, a response without transfer or
content coding. Anything else raises the subclass's ``unsupported`` exception before a byte of
the body was handed over or sent, and the caller uses its general HTTP client instead.
"""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit

import orjson

from ...errors import HubRequestError, NotFoundError
from ..http_connections import Origin, proxy_configured
from ..tls import ssl_context
from .xml_errors import xml_error

MAX_HEADER_BYTES = 64 << 10
MAX_ERROR_BODY = 64 << 10
VERSION = ":version"  # the response's HTTP version, kept among its headers (not a header name)


class DirectUnsupported(Exception):
    """This exchange needs a full HTTP client (a proxy, a chunked or encoded response, ...)."""


class DirectAborted(Exception):
    """:meth:`DirectExchange.abort` was called: the exchange stopped."""


class NoResponse(HubRequestError):
    """The connection ended before a byte of the response: on a kept connection, the server
    closed it while it was idle, and the request may go again on a new one."""


class DirectExchange:
    """The parts of one request/response on a socket of its own (subclasses send and read)."""

    method = "GET"
    unsupported: type[Exception] = DirectUnsupported
    aborted: type[Exception] = DirectAborted

    def __init__(self, url: str, *, connect_timeout: float, read_timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self.unsupported(f"not an http(s) URL: {url}")
        if proxy_configured():
            raise self.unsupported("an HTTP proxy is configured")
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._lock = threading.Lock()  # held while bytes are handed over; abort() takes it
        self._aborted = False
        self._sock: socket.socket | None = None

    @property
    def origin(self) -> Origin:
        return (self._https, self._host, self._port)

    def abort(self) -> None:
        """Stop the exchange from another thread; returns once no byte is handed over any more."""
        with self._lock:
            self._aborted = True
            sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a recv or send blocked in the worker thread
            except OSError:
                pass

    # ------------------------------------------------------------------ pieces
    def _hold(self, sock: socket.socket | None) -> None:
        """Make ``sock`` the one :meth:`abort` shuts down (raises if aborted already)."""
        with self._lock:
            if self._aborted and sock is not None:
                raise self.aborted(self.url)
            self._sock = sock

    def _check_aborted(self) -> None:
        with self._lock:
            if self._aborted:
                raise self.aborted(self.url)

    def _request_head(self, lines: list[str]) -> bytes:
        """The request line, Host and ``lines`` (each a header without its line end)."""
        host = self._host if ":" not in self._host else f"[{self._host}]"
        default_port = 443 if self._https else 80
        host_header = host if self._port == default_port else f"{host}:{self._port}"
        return "".join([f"{self.method} {self._target} HTTP/1.1\r\nHost: {host_header}\r\n",
                        *(f"{line}\r\n" for line in lines), "\r\n"]).encode("latin-1")

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

    def _read_head(self, sock: socket.socket, *, codings_allowed: bool = False
                   ) -> tuple[int, dict[str, str], bytes]:
        """The response's status, headers (names lowercased) and what came after them. A
        transfer or content coding is :attr:`unsupported` unless ``codings_allowed`` (the
        caller then does not read the body as bytes it needs)."""
        data = b""
        while b"\r\n\r\n" not in data:
            if len(data) > MAX_HEADER_BYTES:
                raise HubRequestError(502, "http_error", f"{self._what}: response headers too long")
            piece = sock.recv(65536)
            if not piece:
                self._check_aborted()
                error = NoResponse if not data else HubRequestError
                raise error(502, "http_error", f"{self._what}: connection closed before a response")
            data += piece
        head, rest = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        try:
            version, code = lines[0].split(" ", 2)[:2]
            status = int(code)
        except ValueError:
            raise HubRequestError(502, "http_error", f"{self._what}: malformed status line") from None
        if not version.startswith("HTTP/1."):
            raise self.unsupported(f"protocol {version}")
        headers: dict[str, str] = {VERSION: version}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise HubRequestError(502, "http_error", f"{self._what}: malformed header line")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        if codings_allowed:
            return status, headers, rest
        if headers.get("transfer-encoding", "identity").lower() != "identity":
            raise self.unsupported(f"Transfer-Encoding {headers['transfer-encoding']}")
        if headers.get("content-encoding", "identity").lower() != "identity":
            raise self.unsupported(f"Content-Encoding {headers['content-encoding']}")
        return status, headers, rest

    def _error(self, sock: socket.socket, status: int, headers: dict[str, str], body: bytes,
               length: int | None) -> Exception:
        """The typed error for an error status, with the bucket's own code and message when its
        body (read up to MAX_ERROR_BODY) gives them."""
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
            return HubRequestError(status, s3[0], f"{self._what}: {s3[1]}")
        return HubRequestError(status, "http_error", f"{self._what}: HTTP {status}")

    @property
    def _what(self) -> str:
        return f"{self.method} {self.url}"


def keeps_alive(headers: dict[str, str]) -> bool:
    """Whether the server keeps the connection open after this response (HTTP/1.1's default)."""
    return headers[VERSION] == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()


def content_length(headers: dict[str, str]) -> int | None:
    """The response's Content-Length (None without one); a malformed one is a typed error."""
    value = headers.get("content-length")
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 18:  # isdigit alone takes '²'
        raise HubRequestError(502, "http_error", f"malformed Content-Length {value!r}")
    return int(value)

"""Keep-alive HTTP/1.1 connections on the standard library's ``http.client``, shared by a
process's threads: what the daemon client (the local API) and the hub client send requests on.

Not httpx: importing it costs every script and `kachery` command ~0.1-0.2 s (httpcore imports
trio and anyio when they are installed, as the daemon needs them), for requests that are one
HTTP/1.1 exchange each. A request takes an idle connection to its origin or opens one, and
gives it back once its answer was read whole (:func:`send`, :func:`done`).

What httpx did that this does not: proxies. A caller that may be asked to go through one
checks :func:`proxy_configured` first and uses httpx then (the daemon is this machine's: no
proxy stands between a script and it).
"""

from __future__ import annotations

import http.client
import os
import select
import threading

#: (https, host, port).
Origin = tuple[bool, str, int]

#: What a request can fail with once a connection is open: the socket's errors (reset, refused,
#: timed out: TimeoutError is an OSError; ssl's are OSErrors too) and http.client's (closed
#: before an answer, a malformed answer).
TRANSPORT_ERRORS = (OSError, http.client.HTTPException)
#: How a connection closed by the other side before any answer fails a request.
CLOSED_UNANSWERED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy")


class ConnectFailed(Exception):
    """No connection to the origin could be opened (nothing listens, no answer in time, or the
    TLS handshake failed: the ``ssl`` error is the ``__cause__``)."""


def proxy_configured() -> bool:
    """Whether the environment names an HTTP proxy (httpx would use it; this module cannot)."""
    return any(os.environ.get(v) or os.environ.get(v.upper()) for v in _PROXY_VARS)


class ConnectionPool:
    """Idle keep-alive connections, by origin, shared by the process's threads."""

    MAX_IDLE = 16  # in all: the oldest idle connection is closed when one more is given back

    def __init__(self) -> None:
        self._forget()
        # A child process must not use its parent's connections (their bytes would interleave),
        # nor a lock another thread of the parent held when it forked.
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._idle: list[tuple[Origin, http.client.HTTPConnection]] = []  # oldest first
        self._lock = threading.Lock()

    def _pop_idle(self, origin: Origin) -> http.client.HTTPConnection | None:
        with self._lock:
            for i in range(len(self._idle) - 1, -1, -1):  # the most recently used first
                if self._idle[i][0] == origin:
                    return self._idle.pop(i)[1]
        return None

    def take(self, origin: Origin, connect_timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        """A connection to ``origin``: an idle one still open, else a new one; and whether it
        was idle (see :func:`send`). Raises :class:`ConnectFailed`."""
        while (conn := self._pop_idle(origin)) is not None:
            if _reusable(conn):
                return conn, True
            conn.close()  # the server closed it while it was idle (its keep-alive timeout)
        return self.open(origin, connect_timeout), False

    @staticmethod
    def open(origin: Origin, connect_timeout: float) -> http.client.HTTPConnection:
        """A new connection to ``origin`` (TLS verified with :func:`~.tls.ssl_context` for
        https). Raises :class:`ConnectFailed`."""
        https, host, port = origin
        if https:
            from .tls import ssl_context

            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, timeout=connect_timeout, context=ssl_context())
        else:
            conn = http.client.HTTPConnection(host, port, timeout=connect_timeout)
        try:
            conn.connect()  # http.client sets TCP_NODELAY: a small request goes out at once
        except OSError as exc:
            conn.close()
            raise ConnectFailed(str(exc)) from exc
        return conn

    def give_back(self, conn: http.client.HTTPConnection, origin: Origin) -> None:
        with self._lock:
            self._idle.append((origin, conn))
            oldest = self._idle.pop(0)[1] if len(self._idle) > self.MAX_IDLE else None
        if oldest is not None:
            oldest.close()


def _reusable(conn: http.client.HTTPConnection) -> bool:
    """Whether an idle connection is still open: nothing to read on it (a closed one reads EOF)."""
    if conn.sock is None:
        return False
    poller = select.poll()
    poller.register(conn.sock, select.POLLIN)
    return not poller.poll(0)


#: The process's connections (the daemon's and the hub's alike).
POOL = ConnectionPool()


def send(origin: Origin, method: str, target: str, body: bytes | None, headers: dict[str, str],
         connect_timeout: float, read_timeout: float | None
         ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """Send one request on a pooled connection; the connection and the answer's head. The
    caller reads the body, then gives the connection back (:func:`done`). Raises
    :class:`ConnectFailed` or one of :data:`TRANSPORT_ERRORS` (the connection is closed then).

    A request that meets an idle connection the server closed just as it went out (its
    keep-alive timeout) was not read: it is sent again, once, on a new connection. A new
    connection closed unanswered is a server that died (or refused to answer): not sent again."""
    conn, was_idle = POOL.take(origin, connect_timeout)
    while True:
        try:
            conn.sock.settimeout(read_timeout)  # each later send and receive, not the whole answer
            conn.request(method, target, body=body, headers=headers)
            return conn, conn.getresponse()
        except CLOSED_UNANSWERED:
            conn.close()
            if not was_idle:
                raise
            conn, was_idle = POOL.open(origin, connect_timeout), False
        except BaseException:
            conn.close()
            raise


def done(origin: Origin, conn: http.client.HTTPConnection, answer: http.client.HTTPResponse) -> None:
    """Give back a connection whose answer was read whole, unless it is to be closed."""
    if answer.isclosed() and not answer.will_close:
        POOL.give_back(conn, origin)
    else:
        conn.close()


def exchange(origin: Origin, method: str, target: str, body: bytes | None, headers: dict[str, str],
             connect_timeout: float, read_timeout: float | None) -> tuple[int, bytes]:
    """One request whose answer is read whole: (status, body). Raises as :func:`send`."""
    conn, answer = send(origin, method, target, body, headers, connect_timeout, read_timeout)
    try:
        content = answer.read()
    except BaseException:
        conn.close()
        raise
    done(origin, conn, answer)
    return answer.status, content

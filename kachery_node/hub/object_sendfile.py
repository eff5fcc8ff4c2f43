"""A bucket object's bytes sent with ``sendfile``, from its open file straight into the
connection's socket (the bucket GET's fast path).

Sent the ordinary way (Starlette's ``FileResponse``), each 4 MiB of an object is read into a new
bytes object in a worker thread (a copy, into freshly faulted pages), then handed through
hypercorn's ASGI send, h11 and trio's ``send_all`` to the socket (a second copy). A node fetching
a 1 GiB file makes the hub do that for every byte: measured with ``perf`` during the network
bench's file row, the reads, the page faults and the sends were about a fifth of the hub's CPU.
Here the kernel moves the file's pages to the socket itself (over loopback it only passes page
references: the receiver's ``recv`` is the one copy).

Used for a whole object (``GET`` without ``Range``, answered 200) on a plain-TCP connection of
``kachery hub serve`` (registered in :mod:`.direct_send`); HEAD, ranges, TLS connections and other
servers (tests' ASGI transports) go the ordinary way. The response's head still goes out through
hypercorn (``http.response.start``, which hypercorn writes at once). Then, holding the
connection's send lock (nothing hypercorn sends can interleave), ``sendfile`` writes what the
socket takes, waiting for it to be writable in between; h11 is then told the body's bytes were
sent (its Content-Length writer's count, the one piece of h11's state this touches) and the
response ends through hypercorn as usual (``more_body`` false), so the connection is kept for the
next request.

A reader must keep reading: after a grace, the body must move at the hub's minimum body rate
(:class:`~kachery_node.hub.http_limits.HttpLimits`, the same bounds as for request bodies), else
the connection is aborted (hypercorn's own sends wait as long as a peer keeps its window shut).
So is a connection whose body could not be sent whole (the peer left, the task was cancelled
because the peer disconnected, or the file ended early): its head announced a length that can
no longer be honoured.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Any, BinaryIO

import trio

from . import direct_send
from .http_limits import HttpLimits

log = logging.getLogger("kachery.hub.bucket")

SENDFILE_STEP = 16 << 20  # what one call may move at most (the socket usually takes less)


class BodySender:
    """Sends one response body with ``sendfile`` on one connection (see the module docstring)."""

    def __init__(self, server: Any, limits: HttpLimits) -> None:
        self._server = server  # hypercorn's TCPServer of the connection
        self._limits = limits

    @classmethod
    def for_scope(cls, scope: dict[str, Any], limits: HttpLimits) -> BodySender | None:
        """The sender for the connection an HTTP ``scope`` came in on, or None if the body must go
        the ordinary way (not a plain-TCP connection of ``kachery hub serve``, or hypercorn's
        HTTP/1.1 protocol is not as this module knows it)."""
        sender = direct_send.sender_for(scope)
        if sender is None:
            return None
        try:
            sender.server.protocol.protocol.connection._writer  # noqa: B018 (h11's, checked below)
        except AttributeError:
            return None
        return cls(sender.server, limits)

    def _h11_writer(self) -> Any:
        return self._server.protocol.protocol.connection._writer

    def ready_for(self, size: int) -> bool:
        """Whether h11 waits for exactly ``size`` body bytes of this response (its head sent, a
        Content-Length body): then :meth:`send_body` may send them."""
        writer = self._h11_writer()
        return type(writer).__name__ == "ContentLengthWriter" and getattr(writer, "_length", None) == size

    async def send_body(self, file: BinaryIO, size: int) -> bool:
        """Send ``size`` bytes of ``file`` from its start, and count them as sent in h11 (the
        caller then ends the response the ordinary way). Returns False if they could not all be
        sent: the connection is then aborted (the caller sends nothing more). A cancellation
        aborts the connection too, and propagates."""
        server = self._server
        sock = server.stream.socket
        sent = 0
        started = trio.current_time()
        done = False
        why = "the peer went away"
        try:
            async with server.send_lock:
                in_fd = file.fileno()
                while sent < size:
                    out_fd = sock.fileno()  # -1 once closed
                    if out_fd < 0:
                        break
                    try:
                        n = os.sendfile(out_fd, in_fd, sent, min(size - sent, SENDFILE_STEP))
                    except BlockingIOError:
                        deadline = (started + self._limits.body_grace_s
                                    + sent / self._limits.body_min_rate)
                        with trio.move_on_at(deadline):
                            await trio.lowlevel.wait_writable(sock)
                            continue
                        why = (f"the reader took {sent} bytes in {trio.current_time() - started:.0f} s "
                               f"(at least {self._limits.body_min_rate} bytes/s after "
                               f"{self._limits.body_grace_s:.0f} s)")
                        break
                    except OSError as exc:
                        if exc.errno == errno.EINTR:
                            continue
                        why = f"the socket failed: {exc}"
                        break
                    if n == 0:
                        why = f"the file ended after {sent} of {size} bytes"
                        break
                    sent += n
                else:
                    done = True
        finally:
            if not done:
                log.info("bucket GET of %d bytes stopped after %d: %s; closing the connection",
                         size, sent, why)
                try:
                    sock.shutdown(2)  # SHUT_RDWR: the head announced bytes that will not come
                except OSError:
                    pass
        if done:
            self._h11_writer()._length -= size  # h11 did not see these bytes pass
        return done

"""Writing a publish frame straight into the relay connection's socket (the publish fast path).

Sent the ordinary way, a publish is queued for the connection's writer task, which then goes
through trio-websocket's send lock and trio's ``send_all``: two task switches and a few
scheduler round trips before the bytes leave, during which the publishing task (e.g. a
provider's push) carries on with its other work first half of the time (trio runs a batch of
ready tasks in random order). When nothing else is being sent on the connection, the publisher
instead frames the record itself (wsproto, masked as a client must) and writes it with one
non-blocking ``os.write`` on the socket: no task switch, no wait.

The frame must never interleave with another one: the write happens only while the
connection's send lock (trio-websocket's, which its own pong and close frames take too) is free,
and holds it until the whole frame is in the socket; what the socket does not take at once is
sent under that lock by the same task, shielded from cancellation so that a frame is never cut
(at most :data:`REST_TIMEOUT_S`; after that the connection is aborted, since its stream can no
longer be framed). TLS connections (no plain socket) are not sent this way.

This reaches into trio-websocket's connection (``_stream``, ``_stream_lock``, ``_wsproto``):
:func:`direct_publisher` checks that they are there and returns None otherwise, so an upgrade
that renames them falls back to the writer task instead of breaking.
"""

from __future__ import annotations

import os
from typing import Any

import trio
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage

REST_TIMEOUT_S = 10.0


class DirectPublisher:
    """Writes whole binary frames into one trio-websocket client connection's socket."""

    def __init__(self, ws: Any, stream: Any, lock: Any, proto: Any) -> None:
        self._ws = ws
        self._stream = stream
        self._lock = lock
        self._proto = proto

    def idle(self) -> bool:
        """Whether a frame may be written now: no frame is being sent, and the connection is open."""
        return (not self._lock.locked() and self._ws._close_reason is None
                and self._proto.state is ConnectionState.OPEN)

    async def send(self, payload: bytes) -> None:
        """Send ``payload`` as one binary message. Call only when :meth:`idle` (and without a
        checkpoint in between); raises trio.BrokenResourceError if the connection is broken."""
        frame = self._proto.send(BytesMessage(data=payload))
        self._lock.acquire_nowait()  # no checkpoint between idle() and here: nobody took it
        try:
            try:
                sent = os.write(self._stream.socket.fileno(), frame)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                raise trio.BrokenResourceError(f"relay socket: {exc}") from exc
            if sent < len(frame):
                await self._send_rest(memoryview(frame)[sent:])
        finally:
            self._lock.release()

    async def _send_rest(self, rest: memoryview) -> None:
        with trio.CancelScope(shield=True, deadline=trio.current_time() + REST_TIMEOUT_S) as scope:
            await self._stream.send_all(rest)
        if scope.cancelled_caught:  # a frame cut short: nothing more can be framed on this stream
            with trio.CancelScope(shield=True):
                await self._stream.aclose()
            raise trio.BrokenResourceError("the relay did not read a frame within "
                                           f"{REST_TIMEOUT_S:g} s; connection aborted")


def direct_publisher(ws: Any) -> DirectPublisher | None:
    """A :class:`DirectPublisher` for a trio-websocket connection over plain TCP, else None."""
    stream = getattr(ws, "_stream", None)
    lock = getattr(ws, "_stream_lock", None)
    proto = getattr(ws, "_wsproto", None)
    if (not isinstance(stream, trio.SocketStream) or not isinstance(lock, trio.Lock | trio.StrictFIFOLock)
            or proto is None or not hasattr(ws, "_close_reason")):
        return None
    return DirectPublisher(ws, stream, lock, proto)

"""Reading the relay's WebSocket frames straight off a connection's socket (the receive side's
fast path; :mod:`.direct_send` is the send side's).

Received the ordinary way, each frame a node sends the relay goes from hypercorn's reading task
through h11's WebSocket pass-through, hypercorn's ``WSStream``, wsproto's parser and an ASGI
queue to a task switch into Starlette's ``receive`` in the relay: ~0.34 ms of wall time a frame
on a quiet machine (bench/README.md, "Where the live path's 1.7-2 ms go"), where nats-server's
whole hop is 0.15 ms. Here, once the relay has accepted a WebSocket, the connection's reading
task (``hub/serve.py``'s ``_BoundedTCPServer._read_data``, which calls :func:`read_data`)
parses the client's frames itself (:mod:`kachery_node.transport.websocket_frames`) and hands
each whole message to the relay's per-connection handling in that same task: no wsproto, no
ASGI event, no task switch. The hub's CPU per publish received and fanned out to one
subscriber went from ~165 to ~110 µs (bench/bench_relay_receive.py, A/B under the same load).

The relay asks for this (:func:`take_over`) right after accepting, and, should the answer be
"not yet", again after each message it received the ordinary way. It is granted only when
nothing can be lost or reordered by the switch:

* the connection is plain TCP and registered in :mod:`.direct_send` (TLS streams are not: the
  socket carries TLS records, not frames);
* no WebSocket extension was negotiated (Chromium offers permessage-deflate, and wsproto accepts
  it: those frames may be compressed, RSV1 set, which this reader refuses);
* wsproto holds no part of a frame or of a fragmented message (what it holds otherwise, whole
  frames and whole messages in the relay's ASGI queue, is taken from it and handled first).

Otherwise the connection stays on the ordinary path, which behaves the same (the relay's checks
are one per-message handler called by both). Everything the relay sends still goes through
hypercorn's send path or :mod:`.direct_send` (whose frames never interleave with hypercorn's), so
a close the relay decides is sent by hypercorn/wsproto as before; only the answer to a ping
(a pong) is written by the relay's writer through :mod:`.direct_send`.

How a connection on the fast path ends:

* end of stream, a broken socket or hypercorn's read timeout: hypercorn is told the connection
  closed (as its own reader would: the ASGI app sees ``websocket.disconnect``), then the relay
  (:meth:`Receiver.stopped`), which ends its tasks;
* a close frame from the client, a frame that breaks the framing (close code 1002 or 1009
  from the codec, 1007 for text or a close reason that is not UTF-8), or a message after which
  the relay must close: the relay is asked to close
  (:meth:`Receiver.message` / :meth:`Receiver.failed`); its writer sends what was queued, then
  hypercorn sends the close frame and closes the socket; this task stops reading, waits for the
  relay's connection to end (:meth:`Receiver.finished`), then tells hypercorn as above.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from math import inf
from typing import Any, Protocol

import hypercorn.trio.tcp_server
import trio
from hypercorn.events import Closed, RawData

from ..transport.websocket_frames import FrameError, MessageReader
from . import body_passthrough

log = logging.getLogger("kachery.hub.relay")

# What one read asks of the socket on the fast path: a relay frame is small (a publish is ~100
# bytes; at most the relay's max_frame_bytes), and a bytes object of the size asked is allocated
# by every read before it is cut to what came; hypercorn's reads stay at its MAX_RECV (1 MiB,
# set by serve.py for bucket uploads).
FAST_RECV = 1 << 16


class Receiver(Protocol):
    """What the relay gives the fast path for one connection."""

    def message(self, opcode: int, payload: bytes) -> bool:
        """Handle one whole message (a data message or a control frame); False when the
        connection must stop reading (the relay has asked for it to be closed)."""

    def failed(self, close_code: int, reason: str) -> None:
        """The client broke the framing: close with ``close_code``."""

    def stopped(self) -> None:
        """The fast path stopped reading (the client went away, or a close was asked for)."""

    async def finished(self) -> None:
        """Return once the relay's handling of the connection has ended (its close sent)."""


def take_over(server: Any, receiver: Receiver, max_message_bytes: int, asgi_receive: Any,
              handle_asgi: Callable[[dict[str, Any]], bool]) -> str | None:
    """Let ``server`` (the hypercorn ``TCPServer`` of a connection the relay accepted a
    WebSocket on, from :meth:`.direct_send.DirectSender.server`) deliver its next frames to
    ``receiver``, the relay's handling of that WebSocket, whose ASGI ``receive`` is
    ``asgi_receive``. Returns None when granted, else why not: ``"pending"`` when wsproto holds
    part of a frame or of a fragmented message (ask again after the next message), or another
    reason that will not change (the connection stays on the ordinary path).

    What hypercorn already read of the connection is not lost or reordered: the whole messages
    in the relay's ASGI queue are taken out and given to ``handle_asgi`` (False from it: the
    connection closes, the rest is dropped), then the bytes wsproto holds (whole frames it has
    not parsed yet, its reading task being suspended between two of them) are taken from it and
    parsed here, all in the caller's task before it awaits anything: the fast path's reading
    task can deliver nothing before."""
    try:
        h11 = server.protocol.protocol
        stream = h11.stream
        ws = stream.connection  # wsproto's Connection, made when the relay accepted
        frames = ws._proto
        if frames.extensions:
            return "extension"
        decoder = frames._frame_decoder
        held = decoder.buffer  # wsproto's Buffer: bytes received, not parsed yet
        # (WSStream's message buffer is not looked at: it is cleared only after the message
        # was put in the queue, so it may hold one that is gone already; a message under way
        # is wsproto's message decoder's opcode.)
        pending = (len(h11.connection.buffer) or decoder.header is not None or held.bytes_used
                   or frames._message_decoder.opcode is not None)
        queue_used = stream.app_put.__self__.statistics().current_buffer_used
    except AttributeError:  # not hypercorn's HTTP/1.1 WebSocket stream as this module knows it
        return "unknown"
    if stream.closed:
        return "closed"
    if pending:
        return "pending"
    channel = getattr(asgi_receive, "__self__", None)
    if queue_used and not isinstance(channel, trio.MemoryReceiveChannel):
        return "pending"
    reader = MessageReader(masked=True, max_message_bytes=max_message_bytes)
    fast = server.direct_receiver = _FastPath(receiver, reader)
    rest = bytes(held.buffer)
    del held.buffer[:]  # wsproto's parser, resumed, finds nothing more
    if queue_used:
        # Hypercorn's reading task may even be waiting to add one more to a full queue: that
        # one comes out too, last.
        while True:
            try:
                if not handle_asgi(channel.receive_nowait()):
                    return None
            except trio.WouldBlock:
                break
    if rest:
        fast.feed(rest)
    return None


class _FastPath:
    def __init__(self, receiver: Receiver, reader: MessageReader) -> None:
        self.receiver = receiver
        self.reader = reader

    def feed(self, data: bytes) -> bool:
        """Hand the messages ``data`` completes to the receiver; False once it must stop. When
        the client broke the framing, the messages it completed before the fault are handled
        first (they were well formed), then the connection fails."""
        message = self.receiver.message
        try:
            messages = self.reader.feed(data)
        except FrameError as exc:
            if all(message(opcode, payload) for opcode, payload in exc.messages):
                self.receiver.failed(exc.close_code, str(exc))
            return False
        return all(message(opcode, payload) for opcode, payload in messages)


async def read_data(server: Any) -> None:
    """``server``'s reading loop: hypercorn's ``TCPServer._read_data``, which hands the bytes
    to hypercorn until the relay took the connection over (:func:`take_over`), then parses them
    itself. A request body's bytes go to its stream past h11 (:mod:`.body_passthrough`)."""
    timeout = server.config.read_timeout or inf
    stream = server.stream
    while True:
        data: bytes | None
        try:
            with trio.fail_after(timeout):
                data = await stream.receive_some(hypercorn.trio.tcp_server.MAX_RECV)
        except (trio.ClosedResourceError, trio.BrokenResourceError, trio.TooSlowError):
            data = None
        fast = server.direct_receiver  # granted while this task waited
        if fast is not None:  # (None: the end, which the relay must hear of too)
            await _read_fast(server, fast, data or b"", timeout)
            return
        if data is None:
            break
        if data and await body_passthrough.pass_body(server, data):
            continue  # a request body's bytes, delivered past h11
        await server.protocol.handle(RawData(bytes(data)))
        if data == b"":
            break
    await server.protocol.handle(Closed())


async def _read_fast(server: Any, fast: _FastPath, data: bytes, timeout: float) -> None:
    receiver = fast.receiver
    stream = server.stream
    try:
        closing = False
        while data:
            if not fast.feed(data):
                closing = True
                break
            try:
                if timeout == inf:
                    data = await stream.receive_some(FAST_RECV)
                else:
                    with trio.fail_after(timeout):
                        data = await stream.receive_some(FAST_RECV)
            except (trio.ClosedResourceError, trio.BrokenResourceError, trio.TooSlowError):
                break
    except Exception:  # a bug of the relay's: this task is the connection's, not the hub's
        log.exception("relay: error handling a frame; closing the connection")
        receiver.failed(1011, "internal error")
        closing = True
    if closing:
        # The relay closes the connection (its writer, then hypercorn); nothing more is read.
        receiver.stopped()
        await receiver.finished()
        await server.protocol.handle(Closed())
    else:
        # The client went away: hypercorn first (the app's close is then moot: no 1011 is sent
        # into a dead socket), then the relay.
        await server.protocol.handle(Closed())
        receiver.stopped()

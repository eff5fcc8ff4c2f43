"""Writing the relay's WebSocket frames straight into a connection's socket (the fan-out's fast
path).

Sent the ordinary way, each delivered message costs every subscriber's connection a trip through
Starlette, hypercorn's ASGI stream, wsproto's framing, hypercorn's send lock and trio's socket
stream, with several scheduler round trips: about 0.1-0.3 ms of the hub's one core per
subscriber (bench/bench_relay.py, py-spy). A server's WebSocket frames are not masked, so
framing is a header before the payload (:func:`binary_frame`); when nothing else is being sent
on a connection, the relay writes the frame with one non-blocking ``os.write`` on the socket,
with no task switch (:meth:`DirectSender.try_send`).
What the socket does not take (a full send buffer) goes out through hypercorn's own send path
(:meth:`DirectSender.send`, under its send lock), in order.

Hypercorn does not expose its sockets: ``hub/serve.py``'s connection handler registers each
connection here by its peer address (:func:`register`), and the relay looks its WebSocket's
``scope["client"]`` up (:func:`sender_for`). TLS connections have no direct sender (their relay
sends the ordinary way), nor do connections of servers other than ``kachery hub serve`` (tests'
ASGI transports). Every registered connection, TLS too, can be aborted (:func:`abort`): the
relay ends a connection that did not close in time that way, because hypercorn's sends cannot
be cancelled (they wait for as long as a peer that stopped reading keeps its window shut).
An uncompressed frame (RSV1 clear) is valid whether or not permessage-deflate was negotiated
(RFC 7692 §6).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from hypercorn.events import RawData

_servers: dict[tuple[str, int], Any] = {}  # peer (host, port) -> plain-TCP hypercorn TCPServer
_sockets: dict[tuple[str, int], Any] = {}  # peer (host, port) -> any connection's trio socket


def binary_frame(payload: bytes) -> bytes:
    """A complete, unmasked binary WebSocket frame (FIN, opcode 2) carrying ``payload``."""
    n = len(payload)
    if n < 126:
        head = bytes((0x82, n))
    elif n < 1 << 16:
        head = b"\x82\x7e" + n.to_bytes(2, "big")
    else:
        head = b"\x82\x7f" + n.to_bytes(8, "big")
    return head + payload


def _peer_key(address: Any) -> tuple[str, int] | None:
    if isinstance(address, tuple | list) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None


def _socket_of(server: Any) -> Any:
    """The trio socket under a connection handler's stream (a TLS stream's transport's)."""
    stream = server.stream
    transport = getattr(stream, "transport_stream", None)
    return getattr(stream, "socket", None) or getattr(transport, "socket", None)


def register(server: Any) -> tuple[str, int] | None:
    """Record hypercorn's connection handler ``server`` (a ``TCPServer`` whose stream is a trio
    ``SocketStream``, or an ``SSLStream`` over one) by its peer address; returns the key to
    :func:`unregister`."""
    sock = _socket_of(server)
    if sock is None:
        return None
    plain = getattr(server.stream, "socket", None) is sock  # TLS streams have none of their own
    try:
        key = _peer_key(sock.getpeername())
    except OSError:
        return None
    if key is not None:
        _sockets[key] = sock
        if plain:
            _servers[key] = server
    return key


def unregister(key: tuple[str, int] | None, server: Any) -> None:
    if key is None:
        return
    if _servers.get(key) is server:
        del _servers[key]
    if _sockets.get(key) is _socket_of(server):
        del _sockets[key]


def abort(scope: dict[str, Any]) -> bool:
    """Shut down, both ways, the socket of the connection an ASGI ``scope`` came in on: every
    send waiting on it fails, every read ends. Returns whether the connection was found."""
    key = _peer_key(scope.get("client"))
    sock = _sockets.get(key) if key is not None else None
    if sock is None:
        return False
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # closed or reset meanwhile: ended anyway
        pass
    return True


def sender_for(scope: dict[str, Any]) -> DirectSender | None:
    """The direct sender of the connection an ASGI WebSocket ``scope`` came in on, if any."""
    key = _peer_key(scope.get("client"))
    server = _servers.get(key) if key is not None else None
    return DirectSender(server) if server is not None else None


class DirectSender:
    """Writes whole frames into one registered connection's socket."""

    def __init__(self, server: Any) -> None:
        self._server = server
        self._sock = server.stream.socket

    @property
    def server(self) -> Any:
        """The connection's hypercorn ``TCPServer`` (for :func:`.direct_receive.take_over`)."""
        return self._server

    def try_send(self, frame: bytes) -> int:
        """Write ``frame`` now, without waiting: the number of bytes the socket took (0 when
        hypercorn is sending on it, or its buffer is full), or -1 if the socket is closed or
        broken (then send nothing more this way)."""
        if self._server.send_lock.locked():
            return 0  # hypercorn is mid-send (a frame of its own): never interleave
        fd = self._sock.fileno()  # -1 once closed: a closed descriptor number may be reused
        if fd < 0:
            return -1
        try:
            return os.write(fd, frame)
        except BlockingIOError:
            return 0
        except OSError:
            return -1

    async def send(self, data: bytes) -> None:
        """Send the rest of a frame the ordinary way (hypercorn's send lock, waiting for room)."""
        await self._server.protocol_send(RawData(data=data))

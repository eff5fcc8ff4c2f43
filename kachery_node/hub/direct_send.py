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
plain-TCP connection here by its peer address (:func:`register`), and the relay looks its
WebSocket's ``scope["client"]`` up (:func:`sender_for`). TLS connections, and servers other than
``kachery hub serve`` (tests' ASGI transports), are not registered: their relay sends the
ordinary way. An uncompressed frame (RSV1 clear) is valid whether or not permessage-deflate was
negotiated (RFC 7692 §6).
"""

from __future__ import annotations

import os
from typing import Any

from hypercorn.events import RawData

_servers: dict[tuple[str, int], Any] = {}  # peer (host, port) -> hypercorn TCPServer


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


def register(server: Any) -> tuple[str, int] | None:
    """Record hypercorn's plain-TCP connection handler ``server`` (a ``TCPServer`` whose stream
    is a trio ``SocketStream``) by its peer address; returns the key to :func:`unregister`."""
    sock = getattr(server.stream, "socket", None)  # absent on TLS streams
    if sock is None:
        return None
    try:
        key = _peer_key(sock.getpeername())
    except OSError:
        return None
    if key is not None:
        _servers[key] = server
    return key


def unregister(key: tuple[str, int] | None, server: Any) -> None:
    if key is not None and _servers.get(key) is server:
        del _servers[key]


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

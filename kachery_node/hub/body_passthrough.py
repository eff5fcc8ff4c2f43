"""A request body's bytes handed from the socket straight to its ASGI stream, past h11 (the
bucket PUT's fast path on the receive side; :mod:`.object_sendfile` is the GET's).

Received the ordinary way, each MiB of a body is appended to h11's receive buffer (a copy), cut
out of it again as a ``bytearray`` (a copy) and turned into ``bytes`` by hypercorn (a third), with
h11's event machinery around each piece: measured with ``perf`` during the network bench's file
row, those copies were ~9% of the hub's CPU (``memmove``), with more in h11's Python. A body with
a ``Content-Length`` needs none of it: its bytes are the next ``n`` bytes of the connection.

So hypercorn's reading loop (``hub/serve.py``, through :func:`.direct_receive.read_data`) first
offers newly received bytes to :func:`pass_body`: when h11 is in the middle of such a body (the
client is sending it, h11 has nothing of it buffered, no ``100 Continue`` is owed), the body's
part of the bytes goes to hypercorn's HTTP stream as one body event, exactly what h11 would have
produced, and h11's count of the body bytes still to come is lowered by as many. When the body
is complete, h11 is asked for its next events: it ends the request (the app's ``more_body``
false) as if it had read the body itself, and any bytes after the body (a pipelined request) go
to h11 as usual. Chunked bodies, HTTP/2, WebSockets and anything this module does not recognise
stay on the ordinary path.
"""

from __future__ import annotations

from typing import Any

import h11
from h11._readers import ContentLengthReader
from hypercorn.events import RawData
from hypercorn.protocol.events import Body
from hypercorn.protocol.h11 import STREAM_ID, H11Protocol
from hypercorn.protocol.http_stream import HTTPStream


def _body_reader(server: Any) -> tuple[H11Protocol, ContentLengthReader] | None:
    proto = getattr(server.protocol, "protocol", None)
    if (type(proto) is not H11Protocol or type(proto.stream) is not HTTPStream
            or not hasattr(proto, "_handle_events")):
        return None
    conn = proto.connection
    if type(conn) is not h11.Connection or conn.their_state is not h11.SEND_BODY:
        return None
    reader = getattr(conn, "_reader", None)
    if (type(reader) is not ContentLengthReader or conn.they_are_waiting_for_100_continue
            or len(conn._receive_buffer) or conn._receive_buffer_closed):
        return None
    return proto, reader


async def pass_body(server: Any, data: bytes) -> bool:
    """Deliver ``data``, just received on ``server``'s connection (hypercorn's ``TCPServer``), if
    h11 is inside a request body this module may take: its first bytes as the body's next piece,
    the rest (bytes after the body) to hypercorn as usual. False, having done nothing, otherwise:
    the caller then hands ``data`` to hypercorn the ordinary way."""
    found = _body_reader(server)
    if found is None:
        return False
    proto, reader = found
    n = min(len(data), reader._remaining)
    piece = data if n == len(data) else data[:n]
    reader._remaining -= n  # h11 will not see these bytes: they are counted as read
    await proto.stream.handle(Body(stream_id=STREAM_ID, data=piece))
    if reader._remaining == 0:
        # h11 now ends the request (EndOfMessage: the app's last, empty body event) and then
        # parses what came after the body, if anything.
        if n < len(data):
            await server.protocol.handle(RawData(data[n:]))
        else:
            await proto._handle_events()
    return True

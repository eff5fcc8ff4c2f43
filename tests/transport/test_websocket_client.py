"""The node's own WebSocket client (kachery_node/transport/pubsub/websocket_client.py) and the relay
client over it: against a real hub (``kachery hub serve``, plain and TLS), and against small
servers on loopback sockets that misbehave in the one way each test needs (a refused or botched
handshake, silence, a ping, a close, a frame too large: things a real hub does not do on demand).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Awaitable, Callable
from functools import partial

import orjson
import pytest
import trio

from kachery_node.errors import HubRequestError
from kachery_node.protocol import relay_frames
from kachery_node.transport.pubsub import relay_client
from kachery_node.transport.pubsub.open_pubsub import open_pubsub
from kachery_node.transport.pubsub.websocket_client import (
    WebSocketClosed,
    WebSocketHandshakeError,
    connect_websocket,
)
from kachery_node.transport.tls import ssl_context
from kachery_node.transport.websocket_frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    MessageReader,
    close_payload,
    encode_frame,
    parse_close,
)
from tests.hub.conftest import Actor, HubProcess
from tests.tls_certs import TestCA

pytestmark = pytest.mark.trio

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TLS_HOST = "127.0.0.2"


# ------------------------------------------------------------------ a scriptable loopback server
class Peer:
    """The server's side of one accepted connection: the request head, then frames."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.reader = MessageReader(masked=True, max_message_bytes=1 << 20)
        self.pending: list[tuple[int, bytes]] = []
        self.key = b""

    async def read_request(self) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await self.stream.receive_some(4096)
            assert chunk, "the client hung up during the handshake"
            data += chunk
        for line in data.decode().split("\r\n"):
            if line.lower().startswith("sec-websocket-key:"):
                self.key = line.split(":", 1)[1].strip().encode()
        return data

    def accept(self) -> str:
        return base64.b64encode(hashlib.sha1(self.key + GUID).digest()).decode()

    async def upgrade(self, extra: str = "", accept: str | None = None) -> None:
        await self.read_request()
        await self.stream.send_all(
            (f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             f"Sec-WebSocket-Accept: {accept or self.accept()}\r\n{extra}\r\n").encode())

    async def send(self, opcode: int, payload: bytes) -> None:
        await self.stream.send_all(encode_frame(opcode, payload, mask=False))

    async def receive(self) -> tuple[int, bytes]:
        """The client's next frame (control frames included); (-1, b"") at the end of the stream."""
        while not self.pending:
            data = await self.stream.receive_some(65536)
            if not data:
                return -1, b""
            self.pending += self.reader.feed(data)
        return self.pending.pop(0)

    async def relay_ops(self) -> list[dict]:
        opcode, payload = await self.receive()
        assert opcode == OP_TEXT, (opcode, payload)
        return orjson.loads(payload)

    async def answer_auth(self) -> None:
        """Play the relay's part of ``auth``."""
        (op,) = await self.relay_ops()
        assert op["op"] == "auth"
        connected = {"op": "connected", "id": op["id"], "v": 2, "capability": {}}
        await self.send(OP_TEXT, orjson.dumps([connected]))


Handler = Callable[[Peer], Awaitable[None]]


async def serve(nursery: trio.Nursery, handler: Handler) -> str:
    """Serve ``handler`` on a free loopback port; the ws:// URL."""
    listeners = await nursery.start(partial(trio.serve_tcp, lambda s: handler(Peer(s)), 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    return f"ws://127.0.0.1:{port}/pubsub"


def fake_credentials(url: str) -> dict:
    return {"backend": "embedded", "url": url, "token": "t", "capability": {}, "expires_ms": 2**62}


# ------------------------------------------------------------------ the handshake
@pytest.mark.parametrize("answer, code, status", [
    ("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", "websocket_refused", 404),
    ("HTTP/1.1 503 Service Unavailable\r\n\r\n", "websocket_refused", 503),
    ("SSH-2.0-OpenSSH_9.2\r\n\r\n", "websocket_handshake_invalid", 502),
    ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     "Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n", "websocket_handshake_invalid", 502),
    ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n"
     "Sec-WebSocket-Accept: {accept}\r\n\r\n", "websocket_handshake_invalid", 502),
    ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n"
     "Sec-WebSocket-Accept: {accept}\r\n\r\n", "websocket_handshake_invalid", 502),
    ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     "Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
     "websocket_handshake_invalid", 502),
])
async def test_a_refused_or_botched_handshake_is_a_typed_error_at_once(answer, code, status):
    async def handler(peer: Peer) -> None:
        await peer.read_request()
        await peer.stream.send_all(answer.replace("{accept}", peer.accept()).encode())
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        url = await serve(nursery, handler)
        with trio.fail_after(5), pytest.raises(WebSocketHandshakeError) as info:
            async with connect_websocket(url, handshake_timeout=30):
                pass
        assert (info.value.code, info.value.status) == (code, status), info.value
        if "Extensions" in answer:
            assert "permessage-deflate" in str(info.value)
        # the relay client passes it on as it is: a HubRequestError the daemon retries
        with trio.fail_after(5), pytest.raises(HubRequestError) as info:
            async with open_pubsub(fake_credentials(url)):
                pass
        assert info.value.code == code
        nursery.cancel_scope.cancel()


async def test_a_server_that_never_answers_the_handshake_times_out(monkeypatch):
    requests = []

    async def handler(peer: Peer) -> None:
        requests.append(await peer.read_request())
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        url = await serve(nursery, handler)
        start = trio.current_time()
        with pytest.raises(WebSocketHandshakeError) as info:
            async with connect_websocket(url, handshake_timeout=0.5):
                pass
        assert info.value.code == "websocket_handshake_timeout"
        assert 0.5 <= trio.current_time() - start < 3
        request = requests[0].decode().lower()
        for line in ("get /pubsub http/1.1", "upgrade: websocket", "connection: upgrade",
                     "sec-websocket-version: 13"):
            assert line in request
        assert "sec-websocket-extensions" not in request  # none offered
        # through the relay client, with its own timeout
        monkeypatch.setattr(relay_client, "HANDSHAKE_TIMEOUT_S", 0.5)
        with trio.fail_after(5), pytest.raises(WebSocketHandshakeError):
            async with open_pubsub(fake_credentials(url)):
                pass
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ an open connection
async def test_a_ping_is_answered_with_a_pong_and_messages_keep_coming():
    got: list[tuple[int, bytes]] = []

    async def handler(peer: Peer) -> None:
        await peer.upgrade()
        await peer.send(OP_PING, b"are you there")
        got.append(await peer.receive())
        await peer.send(OP_BINARY, b"after the ping")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        url = await serve(nursery, handler)
        async with connect_websocket(url) as ws:
            with trio.fail_after(5):
                assert await ws.receive_messages() == [(OP_BINARY, b"after the ping")]
        assert got == [(OP_PONG, b"are you there")]
        nursery.cancel_scope.cancel()


async def test_the_relay_closing_the_connection_ends_waiting_requests_and_messages():
    """A close frame from the relay (here while a subscribe waits for its reply): the request and
    messages() both get ``connection_closed`` with the relay's code, and the client answers the
    close frame (the close handshake) before the stream ends."""
    seen: list[tuple[int, bytes]] = []

    async def handler(peer: Peer) -> None:
        await peer.upgrade()
        await peer.answer_auth()
        (op,) = await peer.relay_ops()
        assert op["op"] == "subscribe"  # never answered: closed instead
        await peer.send(OP_CLOSE, close_payload(4001, "token expired"))
        seen.append(await peer.receive())
        seen.append(await peer.receive())

    async with trio.open_nursery() as nursery:
        url = await serve(nursery, handler)
        async with open_pubsub(fake_credentials(url)) as conn:
            with trio.fail_after(5), pytest.raises(HubRequestError) as info:
                await conn.subscribe("lab.x-requestFiles")
            assert info.value.code == "connection_closed" and "4001" in str(info.value)
            with trio.fail_after(5), pytest.raises(HubRequestError) as info:
                async for _ in conn.messages():
                    pass
            assert info.value.code == "connection_closed" and "token expired" in str(info.value)
            with pytest.raises(HubRequestError) as info:  # and every later request
                await conn.publish("lab.x-requestFiles", b"m", ack=True)
            assert info.value.code == "connection_closed"
        assert seen[0][0] == OP_CLOSE and parse_close(seen[0][1])[0] == 4001
        assert seen[1] == (-1, b"")  # then the client closed the stream
        nursery.cancel_scope.cancel()


async def test_messages_that_came_with_the_close_frame_are_received_before_it():
    """The relay's refusal and its close often arrive in one read: the refusal is not lost."""
    async def handler(peer: Peer) -> None:
        await peer.upgrade()
        await peer.stream.send_all(encode_frame(OP_TEXT, b"[1]", mask=False)
                                   + encode_frame(OP_BINARY, b"2", mask=False)
                                   + encode_frame(OP_CLOSE, close_payload(4001, "bye"), mask=False))
        await peer.receive()

    async with trio.open_nursery() as nursery:
        url = await serve(nursery, handler)
        async with connect_websocket(url) as ws:
            with trio.fail_after(5):
                got = []
                with pytest.raises(WebSocketClosed) as info:
                    while True:
                        got += await ws.receive_messages()
            assert got == [(OP_TEXT, b"[1]"), (OP_BINARY, b"2")]
            assert (info.value.close_code, info.value.reason) == (4001, "bye")
        nursery.cancel_scope.cancel()


async def test_messages_before_a_malformed_frame_in_the_same_read_are_received_before_the_error():
    """The server's good messages and a frame that breaks the framing arrive in one read: the
    good ones reach the consumer, then the error; the connection is closed with its code."""
    seen: list[tuple[int, bytes]] = []

    async def handler(peer: Peer) -> None:
        await peer.upgrade()
        await peer.stream.send_all(encode_frame(OP_TEXT, b"[1]", mask=False)
                                   + encode_frame(OP_BINARY, b"2", mask=False)
                                   + bytes((0xC2, 0x01)) + b"x")  # RSV1 set: 1002
        seen.append(await peer.receive())

    async with trio.open_nursery() as nursery:
        url = await serve(nursery, handler)
        async with connect_websocket(url) as ws:
            with trio.fail_after(5):
                assert await ws.receive_messages() == [(OP_TEXT, b"[1]"), (OP_BINARY, b"2")]
                with pytest.raises(FrameError) as info:
                    await ws.receive_messages()
                assert info.value.close_code == 1002
                with pytest.raises(FrameError):  # and again: the connection is over
                    await ws.receive_messages()
                with pytest.raises(WebSocketClosed):
                    await ws.send_message(b"more")
        assert seen[0][0] == OP_CLOSE and parse_close(seen[0][1])[0] == 1002
        nursery.cancel_scope.cancel()


async def test_closing_is_a_close_handshake():
    seen: list[tuple[int, bytes]] = []

    async def handler(peer: Peer) -> None:
        await peer.upgrade()
        seen.append(await peer.receive())
        await peer.send(OP_CLOSE, close_payload(1000))
        seen.append(await peer.receive())

    async with trio.open_nursery() as nursery:
        url = await serve(nursery, handler)
        with trio.fail_after(5):
            async with connect_websocket(url) as ws:
                await ws.send_message(b"[]", binary=False)
                await ws.aclose()
                with pytest.raises(WebSocketClosed):
                    await ws.send_message(b"more")
        assert seen[0] == (OP_TEXT, b"[]")
        assert seen[1][0] == OP_CLOSE and parse_close(seen[1][1])[0] == 1000
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("frame, close_code", [
    # a binary frame announcing 16 MiB + 1: refused from its header, before the payload
    (bytes((0x82, 0x7F)) + ((16 << 20) + 1).to_bytes(8, "big"), 1009),
    (bytes((0xC2, 0x01)) + b"x", 1002),  # RSV1 set: no extension was negotiated
])
async def test_a_frame_the_client_refuses_ends_the_connection_as_a_malformed_frame(frame, close_code):
    seen: list[tuple[int, bytes]] = []

    async def handler(peer: Peer) -> None:
        await peer.upgrade()
        await peer.answer_auth()
        (op,) = await peer.relay_ops()
        assert op["op"] == "subscribe"  # answered with the bad frame
        await peer.stream.send_all(frame)
        seen.append(await peer.receive())

    async with trio.open_nursery() as nursery:
        url = await serve(nursery, handler)
        async with open_pubsub(fake_credentials(url)) as conn:
            with trio.fail_after(5), pytest.raises(HubRequestError) as info:
                await conn.subscribe("lab.x-requestFiles")
            assert info.value.code == "malformed_frame" and str(close_code) in str(info.value)
            with trio.fail_after(5), pytest.raises(HubRequestError) as info:
                await conn.receive(timeout=5)
            assert info.value.code == "malformed_frame" and str(close_code) in str(info.value)
        assert seen[0][0] == OP_CLOSE and parse_close(seen[0][1])[0] == close_code
        nursery.cancel_scope.cancel()


async def test_a_16_mib_message_is_accepted_whole():
    """The largest message the client takes (the relay sends at most 1 MiB frames)."""
    band = "lab.x-requestFiles"
    body = b"y" * ((16 << 20) - relay_frames.MESSAGE_OVERHEAD - len(band))
    record = relay_frames.encode_message(band, "ab" * 32, 1, body)
    assert len(record) == 16 << 20

    async def handler(peer: Peer) -> None:
        await peer.upgrade()
        await peer.answer_auth()
        await peer.send(OP_BINARY, record)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        url = await serve(nursery, handler)
        async with open_pubsub(fake_credentials(url)) as conn:
            m = await conn.receive(timeout=20)
            assert (m.band, m.sender, len(m.data)) == (band, "ab" * 32, len(body))
        nursery.cancel_scope.cancel()


async def test_a_frame_the_server_does_not_read_is_aborted_after_the_rest_timeout(monkeypatch):
    """A publish written straight into the socket that the socket takes only in part: the rest
    goes out under the send lock, shielded, at most REST_TIMEOUT_S; a server that stops reading
    makes the connection abort then (a frame cut short cannot be followed by another), and
    everyone waiting hears ``connection_closed``."""
    import socket

    from kachery_node.transport.pubsub import websocket_client

    monkeypatch.setattr(websocket_client, "REST_TIMEOUT_S", 0.5)
    stop_reading = trio.Event()

    async def handler(peer: Peer) -> None:
        peer.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await peer.upgrade()
        await peer.answer_auth()
        stop_reading.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        url = await serve(nursery, handler)
        async with open_pubsub(fake_credentials(url)) as conn:
            conn._ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            await stop_reading.wait()
            start = trio.current_time()
            with trio.fail_after(10), pytest.raises(HubRequestError) as info:
                await conn.publish("lab.x-requestFiles", b"z" * (32 << 20))
            assert info.value.code == "connection_closed" and "did not read a frame" in str(info.value)
            assert conn.direct_publishes == 1 and trio.current_time() - start >= 0.5
            with trio.fail_after(5), pytest.raises(HubRequestError) as info:
                await conn.receive(timeout=5)
            assert info.value.code == "connection_closed"
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ a real hub
async def test_the_relay_client_stops_with_connection_closed_when_the_hub_goes(tmp_path):
    hub = HubProcess(tmp_path / "hub")
    try:
        owner, node = Actor(hub.url, "owner"), Actor(hub.url, "n")
        owner.client.create_channel("ws.gone")
        node.client.register_node("n")
        node.client.request_roles("ws.gone", node.node_id, ["provide-files"])
        owner.client.grant("ws.gone", node.node_id, ["provide-files"])
        creds = await trio.to_thread.run_sync(node.client.pubsub_credentials, "ws.gone")
        async with open_pubsub(creds) as conn:
            await conn.subscribe("ws.gone-requestFiles")
            await trio.to_thread.run_sync(hub.stop)
            with trio.fail_after(10), pytest.raises(HubRequestError) as info:
                async for _ in conn.messages():
                    pass
            assert info.value.code == "connection_closed"
    finally:
        hub.stop()


async def test_wss_against_a_hub_serving_tls(tmp_path, monkeypatch):
    ca = TestCA(tmp_path / "ca")
    server = ca.issue("hub", [TLS_HOST])
    hub = HubProcess(tmp_path / "hub", "--host", TLS_HOST, "--tls-cert", str(server.cert),
                     "--tls-key", str(server.key))
    try:
        monkeypatch.setenv("KACHERY_CA_FILE", str(ca.cert))
        owner, pub, sub = Actor(hub.url, "owner"), Actor(hub.url, "pub"), Actor(hub.url, "sub")
        owner.client.create_channel("ws.tls")
        for actor, roles in ((pub, ["request-files"]), (sub, ["provide-files"])):
            actor.client.register_node(actor.label)
            actor.client.request_roles("ws.tls", actor.node_id, roles)
            owner.client.grant("ws.tls", actor.node_id, roles)
        pub_creds = await trio.to_thread.run_sync(pub.client.pubsub_credentials, "ws.tls")
        sub_creds = await trio.to_thread.run_sync(sub.client.pubsub_credentials, "ws.tls")
        assert pub_creds["url"].startswith(f"wss://{TLS_HOST}:")
        band = "ws.tls-requestFiles"
        async with open_pubsub(pub_creds) as p, open_pubsub(sub_creds) as s:
            assert p._ws.socket is None  # over TLS: no raw socket writes
            await s.subscribe(band)
            sent = [bytes([i]) * (10 + 20_000 * (i % 3)) for i in range(30)]
            for i, message in enumerate(sent):
                if i < 5:
                    await trio.sleep(relay_client.DIRECT_MIN_INTERVAL_S * 1.5)
                await p.publish(band, message, ack=(i % 10 == 9))
            assert p.direct_publishes >= 5  # the fast path works over TLS too
            got = [(await s.receive(timeout=10)).data for _ in sent]
            assert got == sent
        # without the lab's CA the certificate is not trusted: a clear, typed error
        monkeypatch.delenv("KACHERY_CA_FILE")
        with trio.fail_after(10), pytest.raises(WebSocketHandshakeError) as info:
            async with connect_websocket(pub_creds["url"], ssl_context=ssl_context()):
                pass
        assert info.value.code == "tls_failed" and "--ca-file" in str(info.value)
    finally:
        hub.stop()

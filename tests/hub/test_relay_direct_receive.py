"""The relay reading its WebSocket frames off the socket itself (hub/direct_receive.py), from the
outside: a real ``kachery hub serve`` process, and a raw-socket WebSocket client whose every byte
the test chooses (framing by kachery_node.transport.websocket_frames, masked as a client's)."""

from __future__ import annotations

import base64
import os
import signal
import zlib
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import orjson
import pytest
import trio

from kachery_node.protocol import relay_frames
from kachery_node.transport.pubsub.open_pubsub import open_pubsub
from kachery_node.transport.websocket_frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    MessageReader,
    close_payload,
    encode_frame,
    parse_close,
)

from .conftest import HubProcess
from .test_relay import creds, data, j, relay_figures, setup_channel

pytestmark = pytest.mark.trio


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv1: bool = False) -> bytes:
    """A frame as :func:`encode_frame` makes it, with FIN and RSV1 as asked."""
    raw = bytearray(encode_frame(opcode, payload, mask=mask))
    if not fin:
        raw[0] &= 0x7F
    if rsv1:
        raw[0] |= 0x40
    return bytes(raw)


class RawClient:
    """One WebSocket connection to the relay over a bare TCP stream."""

    def __init__(self, stream: trio.SocketStream, leftover: bytes, response: str) -> None:
        self.stream = stream
        self.response = response  # the handshake's response head (lower case)
        self.reader = MessageReader(masked=False, max_message_bytes=16 << 20)
        self.pending = list(self.reader.feed(leftover)) if leftover else []
        self.ops: list[dict] = []  # JSON operations received, not returned yet

    @classmethod
    async def connect(cls, hub_url: str, *extra_headers: str) -> RawClient:
        url = urlsplit(hub_url)
        stream = await trio.open_tcp_stream(url.hostname, url.port)
        key = base64.b64encode(os.urandom(16)).decode()
        head = "".join(f"{h}\r\n" for h in extra_headers)
        await stream.send_all((f"GET /pubsub HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\n"
                               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                               f"Sec-WebSocket-Version: 13\r\n{head}\r\n").encode())
        buf = b""
        with trio.fail_after(10):
            while b"\r\n\r\n" not in buf:
                chunk = await stream.receive_some(65536)
                assert chunk, "the hub closed during the handshake"
                buf += chunk
        response, _, leftover = buf.partition(b"\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 101"), response
        return cls(stream, leftover, response.decode().lower())

    async def send(self, opcode: int, payload: bytes) -> None:
        await self.stream.send_all(encode_frame(opcode, payload, mask=True))

    async def send_raw(self, raw: bytes) -> None:
        await self.stream.send_all(raw)

    async def receive(self, timeout: float = 10) -> tuple[int, bytes]:
        """The next message from the hub, JSON heartbeats skipped; (-1, b"") at end of stream."""
        with trio.fail_after(timeout):
            while True:
                while self.pending:
                    opcode, payload = self.pending.pop(0)
                    if opcode == OP_TEXT and all(op.get("op") == "heartbeat" for op in _ops(payload)):
                        continue
                    return opcode, payload
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    return -1, b""
                self.pending.extend(self.reader.feed(chunk))

    async def receive_op(self) -> dict:
        """The next JSON operation from the hub (the relay may batch several in a frame)."""
        while not self.ops:
            opcode, payload = await self.receive()
            assert opcode == OP_TEXT, (opcode, payload)
            self.ops += [op for op in _ops(payload) if op.get("op") != "heartbeat"]
        return self.ops.pop(0)

    async def closed_with(self) -> int | None:
        """Read until the hub's close frame, then the end of the stream: the close code."""
        while True:
            opcode, payload = await self.receive()
            if opcode == OP_CLOSE:
                code, _reason = parse_close(payload)
                opcode, _ = await self.receive()  # the hub closes the TCP connection after it
                assert opcode == -1
                return code
            assert opcode != -1, "end of stream without a close frame"

    async def auth(self, token: str) -> dict:
        await self.send(OP_TEXT, orjson.dumps({"op": "auth", "token": token, "v": 2, "id": 1}))
        op = await self.receive_op()
        assert op["op"] == "connected", op
        return op

    async def aclose(self) -> None:
        await self.stream.aclose()


def _ops(payload: bytes) -> list[dict]:
    ops = orjson.loads(payload)
    return ops if isinstance(ops, list) else [ops]


@pytest.fixture(scope="module")
def fast_hub(tmp_path_factory):
    h = HubProcess(tmp_path_factory.mktemp("fasthub"), "--heartbeat", "0.5")
    yield h
    h.stop()
    assert "Traceback" not in h.log() and " ERROR " not in h.log(), h.log()


async def node_connections(owner, ch: str, node: str) -> int:
    status = await trio.to_thread.run_sync(owner.client.hub_status)
    [c] = [c for c in status["channels"] if c["channel"] == ch]
    return next(n["relay_connections"] for n in c["nodes"] if n["node"] == node)


async def publish_raw(client: RawClient, band: str, message: bytes, op_id: int) -> None:
    await client.send(OP_BINARY, relay_frames.encode_publish(op_id, band, message))


@asynccontextmanager
async def raw_publisher_and_subscriber(hub: HubProcess, *, auth: bool = True):
    """A fresh channel's band, a library subscriber to it and a raw client of a node allowed to
    publish there (authenticated unless ``auth=False``): ``(owner, channel, band, sub, client,
    the client's token)``."""
    ch, owner, a = setup_channel(hub, {"pub": ["request-files"], "sub": ["provide-files"]})
    band = f"{ch}-requestFiles"
    async with open_pubsub(await creds(a["sub"], ch)) as sub:
        await sub.subscribe(band)
        client = await RawClient.connect(hub.url)
        token = (await creds(a["pub"], ch))["token"]
        if auth:
            await client.auth(token)
        yield owner, ch, band, sub, client, token


async def test_publishes_from_a_raw_client_are_read_by_the_relay_itself(fast_hub):
    async with raw_publisher_and_subscriber(fast_hub) as (owner, ch, band, sub, client, _):
        for i in range(5):
            await publish_raw(client, band, j({"i": i}), i + 1)
            assert await client.receive_op() == {"op": "ack", "id": i + 1}
        assert [data(await sub.receive(timeout=10))["i"] for _ in range(5)] == list(range(5))
        await client.aclose()
    relay = relay_figures(owner, ch)
    assert relay["messages_in"] == relay["messages_in_direct"] == 5


async def test_frames_sent_with_the_auth_in_one_write_are_handled_in_order(fast_hub):
    """The auth and 30 publishes in one write, as soon as the handshake is answered: some may
    reach the HTTP server's WebSocket layer before the relay takes the connection over
    (direct_receive.take_over hands what it read ahead to the relay first); all are handled,
    acknowledged and delivered in order, on whichever path."""
    async with raw_publisher_and_subscriber(fast_hub, auth=False) as (owner, ch, band, sub, client, token):
        await client.send_raw(frame(OP_TEXT, orjson.dumps({"op": "auth", "token": token, "v": 2})) + b"".join(
            frame(OP_BINARY, relay_frames.encode_publish(i, band, j({"i": i}))) for i in range(1, 31)))
        assert (await client.receive_op())["op"] == "connected"
        assert [(await client.receive_op())["id"] for _ in range(30)] == list(range(1, 31))
        assert [data(await sub.receive(timeout=10))["i"] for _ in range(30)] == list(range(1, 31))
        await client.aclose()
    assert relay_figures(owner, ch)["messages_in"] == 30


async def test_publishes_before_a_malformed_frame_in_one_write_are_delivered_then_it_closes_1002(fast_hub):
    """Three publishes and an unmasked frame in one write: the publishes were well formed and
    reach the subscriber (and are acknowledged); then the connection closes 1002."""
    async with raw_publisher_and_subscriber(fast_hub) as (owner, ch, band, sub, client, _):
        await client.send_raw(b"".join(frame(OP_BINARY, relay_frames.encode_publish(i, band, j({"i": i})))
                                       for i in range(1, 4)) + frame(OP_BINARY, b"x", mask=False))
        assert [(await client.receive_op())["id"] for _ in range(3)] == [1, 2, 3]
        assert await client.closed_with() == 1002
        assert [data(await sub.receive(timeout=10))["i"] for _ in range(3)] == [1, 2, 3]
    assert relay_figures(owner, ch)["messages_in_direct"] == 3
    assert "unmasked frame from a client" in fast_hub.log()


async def test_an_unmasked_frame_closes_the_connection_1002(fast_hub):
    ch, _, a = setup_channel(fast_hub, {"pub": ["request-files"]})
    client = await RawClient.connect(fast_hub.url)
    await client.auth((await creds(a["pub"], ch))["token"])
    await client.send_raw(frame(OP_TEXT, b'{"op": "ping"}', mask=False))
    assert await client.closed_with() == 1002
    assert "unmasked frame from a client" in fast_hub.log()


async def test_a_frame_over_the_limit_closes_1009_from_its_header(fast_hub):
    """Only the header of a 2 MiB frame is sent: the relay (1 MiB frames at most) closes at once,
    without waiting for (or buffering) the payload."""
    ch, _, a = setup_channel(fast_hub, {"pub": ["request-files"]})
    client = await RawClient.connect(fast_hub.url)
    await client.auth((await creds(a["pub"], ch))["token"])
    await client.send_raw(bytes((0x82, 0x80 | 127)) + (2 << 20).to_bytes(8, "big") + os.urandom(4))
    assert await client.closed_with() == 1009


async def test_a_fragmented_publish_is_reassembled_and_pings_between_its_fragments_answered(fast_hub):
    ch, owner, a = setup_channel(fast_hub, {"pub": ["request-files"], "sub": ["provide-files"]})
    band = f"{ch}-requestFiles"
    message = bytes(range(256)) * 20
    record = relay_frames.encode_publish(7, band, message)
    parts = [record[:10], record[10:3000], record[3000:]]
    async with open_pubsub(await creds(a["sub"], ch)) as sub:
        await sub.subscribe(band)
        client = await RawClient.connect(fast_hub.url)
        await client.auth((await creds(a["pub"], ch))["token"])
        await client.send_raw(frame(OP_BINARY, parts[0], fin=False) + frame(OP_PING, b"between")
                              + frame(OP_CONT, parts[1], fin=False))
        assert await client.receive() == (OP_PONG, b"between")
        await client.send_raw(frame(OP_CONT, parts[2]))
        assert await client.receive_op() == {"op": "ack", "id": 7}
        m = await sub.receive(timeout=10)
        assert (m.band, m.sender, m.data) == (band, a["pub"].node_id, message)
        await client.send(OP_PING, b"")
        assert await client.receive() == (OP_PONG, b"")
        await client.aclose()
    relay = relay_figures(owner, ch)
    assert relay["messages_in"] == relay["messages_in_direct"] == 1


async def test_text_that_is_not_utf8_closes_1007(fast_hub):
    ch, _, a = setup_channel(fast_hub, {"pub": ["request-files"]})
    client = await RawClient.connect(fast_hub.url)
    await client.auth((await creds(a["pub"], ch))["token"])
    await client.send(OP_TEXT, b'{"op": "ping", "x": "\xff"}')
    assert await client.closed_with() == 1007


async def test_a_close_from_the_client_is_answered_and_the_connection_ends(fast_hub):
    ch, owner, a = setup_channel(fast_hub, {"pub": ["request-files"]})
    node = a["pub"].node_id
    client = await RawClient.connect(fast_hub.url)
    await client.auth((await creds(a["pub"], ch))["token"])
    assert await node_connections(owner, ch, node) == 1
    await client.send(OP_CLOSE, close_payload(1000, "bye"))
    assert await client.closed_with() == 1000
    with trio.fail_after(10):
        while await node_connections(owner, ch, node):
            await trio.sleep(0.05)
    assert "closed by the client" not in fast_hub.log()  # a client's close is not worth a warning


async def test_end_of_stream_in_the_middle_of_a_frame_publishes_nothing(fast_hub):
    ch, owner, a = setup_channel(fast_hub, {"pub": ["request-files"], "sub": ["provide-files"]})
    band, node = f"{ch}-requestFiles", a["pub"].node_id
    token = (await creds(a["pub"], ch))["token"]
    async with open_pubsub(await creds(a["sub"], ch)) as sub:
        await sub.subscribe(band)
        client = await RawClient.connect(fast_hub.url)
        await client.auth(token)
        whole = frame(OP_BINARY, relay_frames.encode_publish(0, band, j({"cut": True})))
        await client.send_raw(whole[:-3])
        await client.aclose()
        with trio.fail_after(10):  # the relay drops the connection
            while await node_connections(owner, ch, node):
                await trio.sleep(0.05)
        marker = await RawClient.connect(fast_hub.url)
        await marker.auth(token)
        await publish_raw(marker, band, j({"marker": True}), 1)
        assert data(await sub.receive(timeout=10)) == {"marker": True}  # and nothing before it
        await marker.aclose()
    assert relay_figures(owner, ch)["messages_in"] == 1


async def test_a_connection_with_permessage_deflate_keeps_working_the_ordinary_way(fast_hub):
    """Chromium offers permessage-deflate and the hub's WebSocket layer accepts it: such a
    connection's frames may be compressed (RSV1), so the relay leaves it to that layer."""
    ch, owner, a = setup_channel(fast_hub, {"pub": ["request-files"], "sub": ["provide-files"]})
    band = f"{ch}-requestFiles"
    async with open_pubsub(await creds(a["sub"], ch)) as sub:
        await sub.subscribe(band)
        client = await RawClient.connect(
            fast_hub.url, "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits")
        assert "permessage-deflate" in client.response
        # (The hub's replies are compressed now: this client does not read them.)
        token = (await creds(a["pub"], ch))["token"]
        await client.send(OP_TEXT, orjson.dumps({"op": "auth", "token": token, "v": 2}))
        record = relay_frames.encode_publish(0, band, j({"compressed": True}))
        deflate = zlib.compressobj(wbits=-15)
        squeezed = (deflate.compress(record) + deflate.flush(zlib.Z_SYNC_FLUSH))[:-4]  # RFC 7692 §7.2.1
        await client.send_raw(frame(OP_BINARY, squeezed, rsv1=True))
        assert data(await sub.receive(timeout=10)) == {"compressed": True}
        await publish_raw(client, band, j({"plain": True}), 0)  # uncompressed frames are valid too
        assert data(await sub.receive(timeout=10)) == {"plain": True}
        await client.aclose()
    relay = relay_figures(owner, ch)
    assert (relay["messages_in"], relay["messages_in_direct"]) == (2, 0)


async def test_the_hub_shuts_down_cleanly_with_connections_on_the_fast_path(tmp_path):
    hub = HubProcess(tmp_path / "hub", "--heartbeat", "0.5")
    try:
        ch, owner, a = setup_channel(hub, {"pub": ["request-files"], "sub": ["provide-files"]})
        band = f"{ch}-requestFiles"
        pub = await RawClient.connect(hub.url)
        await pub.auth((await creds(a["pub"], ch))["token"])
        await publish_raw(pub, band, j({"i": 1}), 1)
        assert await pub.receive_op() == {"op": "ack", "id": 1}
        half = await RawClient.connect(hub.url)  # one stopped in the middle of a frame
        await half.auth((await creds(a["sub"], ch))["token"])
        await half.send_raw(frame(OP_BINARY, b"x" * 1000)[:500])
        assert relay_figures(owner, ch)["messages_in_direct"] == 1
        hub.proc.send_signal(signal.SIGTERM)
        for client in (pub, half):  # each connection ends, and the hub exits
            with trio.fail_after(15):
                while (await client.receive(timeout=15))[0] != -1:
                    pass
        assert await trio.to_thread.run_sync(lambda: hub.proc.wait(timeout=15)) == 0
        log = hub.log()
        assert "Traceback" not in log and " ERROR " not in log, log
    finally:
        hub.stop()


async def test_a_tls_connection_keeps_working_the_ordinary_way(tmp_path, monkeypatch):
    """Over TLS the socket carries TLS records, not frames: the relay leaves the connection to
    the HTTP server's WebSocket layer (direct_send does not register it either)."""
    from kachery_node.transport.tls import CA_FILE_ENV
    from tests.tls_certs import TestCA

    ca = TestCA(tmp_path / "ca")
    server = ca.issue("hub", ["127.0.0.2"])
    monkeypatch.setenv(CA_FILE_ENV, str(ca.cert))
    hub = HubProcess(tmp_path / "hub", "--host", "127.0.0.2", "--tls-cert", str(server.cert),
                     "--tls-key", str(server.key))
    try:
        assert hub.url.startswith("https://")
        ch, owner, a = setup_channel(hub, {"pub": ["request-files"], "sub": ["provide-files"]})
        band = f"{ch}-requestFiles"
        async with open_pubsub(await creds(a["sub"], ch)) as sub, \
                open_pubsub(await creds(a["pub"], ch)) as pub:
            await sub.subscribe(band)
            for i in range(3):
                await pub.publish(band, j({"i": i}), ack=True)
            assert [data(await sub.receive(timeout=10))["i"] for _ in range(3)] == [0, 1, 2]
        relay = relay_figures(owner, ch)
        assert (relay["messages_in"], relay["messages_in_direct"]) == (3, 0)
    finally:
        hub.stop()


async def test_a_connection_reset_before_its_first_frame_is_dropped_at_once(tmp_path):
    """A hub in this process, to count the relay's connections: one reset (RST) right after
    the handshake, with the fast path granted and nothing read yet, is gone at once, not when
    the auth timeout (10 s) closes it."""
    import socket
    import struct

    from kachery_node.hub.serve import serve_hub

    async with trio.open_nursery() as nursery:
        hub = await nursery.start(serve_hub, tmp_path / "hub", "127.0.0.1", 0)
        client = await RawClient.connect(hub.public_url)
        with trio.fail_after(5):
            while not hub.relay.connections:
                await trio.sleep(0.01)
        client.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await client.aclose()
        with trio.fail_after(5):
            while hub.relay.connections:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()

"""The embedded backend: credentials for, and a trio client of, the hub's WebSocket relay.

Wire protocol (spec/pubsub.md §3, v2): control operations are JSON arrays in text frames (the
client sends ``auth``, ``subscribe``, ``unsubscribe``, ``pong``; the relay sends ``connected``,
``subscribed``, ``unsubscribed``, ``ack``, ``error``, ``heartbeat``); messages travel as binary
records (:mod:`kachery_node.protocol.relay_frames`): ``publish`` records from the client,
``message`` records from the relay, carrying each message's bytes as they are. Outgoing
operations and records are batched per frame (at most :data:`MAX_FRAME_BYTES`) by the writer task;
a publish made while nothing is being sent, and none was written directly in the last
:data:`DIRECT_MIN_INTERVAL_S`, is written straight into the socket by the publishing task
(:meth:`.WebSocketConnection.send_message` while the connection is idle: no task switch before
the bytes leave), so a live push goes out at once and a burst is still batched.

Receiving: one reader task reads the socket (:mod:`.websocket_client`, our own WebSocket client),
decodes each binary frame's records and hands each message to the consumer's
:attr:`~.ReceivedQueue.handle_at_once` (the daemon imports a live push there: no task switch
from the socket to the import), or puts it on the queue that :meth:`~.ReceivedQueue.messages`
reads (one task switch).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import trio

from ...errors import HubRequestError, MalformedRequestError
from ...identity import Keypair
from ...protocol import relay_frames
from ...protocol.pubsub_tokens import issue_token
from ..tls import require_secure_url, ssl_context
from ..websocket_frames import OP_BINARY, FrameError
from .pubsub_interface import PubSub, PubSubBackend, PubSubMessage, Renewer, renew_before_expiry
from .received_queue import ReceivedQueue
from .websocket_client import WebSocketClosed, WebSocketConnection, connect_websocket

CONNECT_TIMEOUT_S = 10.0
HANDSHAKE_TIMEOUT_S = 10.0
MAX_RECEIVED_FRAME_BYTES = 16 << 20  # the relay sends at most 1 MiB (spec/pubsub.md §3)
REPLY_TIMEOUT_S = 10.0
PROTOCOL_VERSION = 2  # the relay's wire protocol (spec/pubsub.md §3)
MAX_FRAME_BYTES = 1 << 20  # what the relay accepts from a client
# Publishes are written straight into the socket at most once in this long; more frequent ones
# go through the writer task, batched (one frame per message costs the relay more than a frame
# of many), as the relay does for its subscribers (hub/relay.py).
DIRECT_MIN_INTERVAL_S = 0.002


class EmbeddedPubSubBackend(PubSubBackend):
    """Issues hub-signed tokens for the relay at ``relay_url`` (``wss://host:port/pubsub``;
    ``ws://`` without TLS)."""

    name = "embedded"

    def __init__(self, hub_key: Keypair, relay_url: str) -> None:
        self.hub_key = hub_key
        self.relay_url = relay_url

    def credentials(self, *, node_id: str, channel: str, capability: dict[str, list[str]],
                    now_ms: int, ttl_ms: int) -> dict[str, Any]:
        token = issue_token(self.hub_key, node_id=node_id, channel=channel, capability=capability,
                            now_ms=now_ms, ttl_ms=ttl_ms)
        return {"backend": self.name, "url": self.relay_url, "token": token,
                "capability": capability, "expires_ms": now_ms + ttl_ms}


class EmbeddedPubSub(ReceivedQueue, PubSub):
    """A connection to the embedded relay. Use :func:`open_embedded_pubsub`."""

    def __init__(self, ws: WebSocketConnection, credentials: dict[str, Any],
                 renew: Renewer | None) -> None:
        self._ws = ws
        self.credentials = credentials
        self._renew = renew
        self._ids = _request_ids()
        self._pending: dict[int, tuple[trio.Event, list]] = {}
        self._send_q: list[tuple[bool, bytes]] = []  # (binary, event): a publish record, or JSON
        self._send_wake = trio.Event()
        self._last_direct = -math.inf  # trio time of the last publish written directly
        self.direct_publishes = 0  # publishes written straight into the socket (the rest: the writer)
        self._recv_send, self._recv = trio.open_memory_channel[PubSubMessage | HubRequestError](math.inf)
        self.connected: dict[str, Any] = {}
        self._closed: HubRequestError | None = None

    # ------------------------------------------------------------------ plumbing
    def _queue(self, op: dict) -> None:
        self._send_q.append((False, orjson.dumps(op)))
        self._send_wake.set()

    def _queue_record(self, record: bytes) -> None:
        self._send_q.append((True, record))
        self._send_wake.set()

    async def _send_record(self, record: bytes) -> None:
        """Write a publish record into the socket now if the connection is idle (see the module
        docstring), else queue it for the writer; either way behind everything sent before."""
        now = trio.current_time()
        if self._send_q or now - self._last_direct < DIRECT_MIN_INTERVAL_S or not self._ws.idle():
            self._queue_record(record)
            await trio.lowlevel.checkpoint()
            return
        self._last_direct = now
        self.direct_publishes += 1
        try:
            await self._ws.send_message(record)
        except WebSocketClosed as exc:  # the reader reports the closure to everyone else
            raise HubRequestError(400, "connection_closed",
                                  f"publishing to the relay failed: {exc.message}") from None
        await trio.lowlevel.checkpoint()

    def _next_id(self) -> int:
        return next(self._ids)

    async def _request(self, op: dict | None = None, record: tuple[str, bytes] | None = None) -> dict:
        """Send a JSON operation, or a publish record (band, message), and wait for its reply."""
        if self._closed is not None:
            raise self._closed
        op_id = self._next_id()
        event, box = trio.Event(), []
        self._pending[op_id] = (event, box)
        if record is not None:
            try:
                await self._send_record(relay_frames.encode_publish(op_id, *record))
            except BaseException:
                self._pending.pop(op_id, None)
                raise
        else:
            self._queue({**(op or {}), "id": op_id})
        with trio.fail_after(REPLY_TIMEOUT_S):
            await event.wait()
        reply = box[0]
        if reply.get("op") == "error":
            raise HubRequestError(reply.get("status", 400), reply.get("code", "error"),
                                  reply.get("message", ""))
        return reply

    async def _writer(self) -> None:
        while True:
            await self._send_wake.wait()
            self._send_wake = trio.Event()
            queued, self._send_q = self._send_q, []
            try:
                for binary, frame in _frames(queued):
                    await self._ws.send_message(frame, binary=binary)
            except WebSocketClosed:
                return  # the reader reports why

    async def _reader(self) -> None:
        put = self._received
        try:
            while True:
                for opcode, frame in await self._ws.receive_messages():
                    if opcode == OP_BINARY:
                        for m in relay_frames.decode_messages(frame):
                            put(PubSubMessage(m.band, m.sender, m.message, m.ts_ms))
                        continue
                    ops = orjson.loads(frame)  # a text frame: UTF-8 checked here
                    for op in ops if isinstance(ops, list) else [ops]:
                        if not isinstance(op, dict):
                            raise MalformedRequestError(f"an operation that is not an object: {op!r:.80}")
                        self._dispatch(op)
        except WebSocketClosed as exc:
            self._end(HubRequestError(400, "connection_closed",
                                      f"relay closed the connection ({exc.close_code}: {exc.reason})"))
        except FrameError as exc:  # the connection is closed already, with exc.close_code
            self._end(HubRequestError(502, "malformed_frame", f"the relay sent a malformed frame: {exc} "
                                      f"(closed with {exc.close_code})"))
        except (MalformedRequestError, orjson.JSONDecodeError) as exc:
            self._end(HubRequestError(502, "malformed_frame", f"the relay sent a malformed frame: {exc}"))
            await self._ws.aclose(1002 if isinstance(exc, MalformedRequestError) else 1007)
        finally:
            self._recv_send.close()

    def _end(self, err: HubRequestError) -> None:
        """The connection is over: ``err`` for every waiting request and for the reader."""
        self._closed = err
        self._recv_send.send_nowait(err)
        for event, box in self._pending.values():
            box.append({"op": "error", "status": err.status, "code": err.code, "message": err.message})
            event.set()

    def _dispatch(self, op: dict) -> None:
        kind = op.get("op")
        if kind == "heartbeat":
            self._queue({"op": "pong"})
        elif "id" in op and op["id"] in self._pending:
            event, box = self._pending.pop(op["id"])
            box.append(op)
            event.set()
        elif kind == "error":
            self._recv_send.send_nowait(HubRequestError(op.get("status", 400), op.get("code", "error"),
                                                        op.get("message", "")))
        elif kind == "unsubscribed":
            reason = f"unsubscribed from {op.get('band')}: {op.get('reason')}"
            self._recv_send.send_nowait(HubRequestError(403, "unsubscribed", reason))

    # ------------------------------------------------------------------ API
    async def authenticate(self) -> dict:
        self.connected = await self._auth(self.credentials["token"])
        return self.connected

    async def _auth(self, token: str) -> dict:
        reply = await self._request({"op": "auth", "token": token, "v": PROTOCOL_VERSION})
        if reply.get("v") != PROTOCOL_VERSION:
            raise HubRequestError(426, "unsupported_version",
                                  f"the relay at {self.credentials.get('url')} speaks pub-sub "
                                  f"v{reply.get('v', 1)}, this node v{PROTOCOL_VERSION}: upgrade the hub")
        return reply

    async def _renew_now(self) -> None:
        """Fresh credentials from the hub (the renewer given at opening), switched to."""
        assert self._renew is not None
        await self.renew_token(await self._renew())

    async def renew_token(self, credentials: dict[str, Any]) -> None:
        """Replace the token on the open connection (in-band, like Ably's AUTH)."""
        if credentials.get("backend") != "embedded":  # the owner moved the channel: reconnect there
            raise HubRequestError(409, "backend_changed",
                                  f"the channel now uses the {credentials.get('backend')!r} pub-sub backend")
        self.credentials = credentials
        self.connected = await self._auth(credentials["token"])

    async def publish(self, band: str, data: bytes, *, ack: bool = False) -> None:
        if ack:
            await self._request(record=(band, data))
        else:
            if self._closed is not None:
                raise self._closed
            await self._send_record(relay_frames.encode_publish(0, band, data))

    async def subscribe(self, band: str, *, echo: bool = True) -> None:
        # Relays before this option ignore the field and echo, which receivers tolerate.
        await self._request({"op": "subscribe", "band": band} if echo else
                            {"op": "subscribe", "band": band, "echo": False})

    async def unsubscribe(self, band: str) -> None:
        await self._request({"op": "unsubscribe", "band": band})

    async def aclose(self) -> None:
        await self._ws.aclose()


def _request_ids(start: int = 1) -> Iterator[int]:
    """Ids for requests: ``start``, ... up to the largest u32, then from 1 again (a publish
    record's id is a u32, and 0 asks for no reply)."""
    yield from range(start, relay_frames.MAX_ID + 1)
    while True:
        yield from range(1, relay_frames.MAX_ID + 1)


def _frames(queued: list[tuple[bool, bytes]]) -> list[tuple[bool, bytes]]:
    """Queued events as frames: consecutive events of one kind together (JSON operations as an
    array, records back to back), each frame at most :data:`MAX_FRAME_BYTES` unless a single
    event is larger (the relay then refuses it as too large)."""
    frames: list[tuple[bool, bytes]] = []
    batch: list[bytes] = []
    size = 0
    binary = False

    def flush() -> None:
        if batch:
            frames.append((binary, b"".join(batch) if binary else b"[" + b",".join(batch) + b"]"))
            batch.clear()

    for is_binary, event in queued:
        if batch and (is_binary != binary or size + len(event) + 1 > MAX_FRAME_BYTES):
            flush()
        if not batch:
            binary, size = is_binary, 2
        batch.append(event)
        size += len(event) + 1
    flush()
    return frames


@asynccontextmanager
async def open_embedded_pubsub(credentials: dict[str, Any], renew: Renewer | None = None
                               ) -> AsyncIterator[EmbeddedPubSub]:
    """Connect to the relay named in ``credentials``, authenticate, and yield the connection.

    With ``renew`` (a coroutine returning fresh credentials), the token is renewed in-band
    before it expires. The token is a bearer token: it goes only over ``wss://`` or to this
    machine (transport/tls.py), checked before connecting.
    """
    url = credentials["url"]
    require_secure_url(url, "a pub-sub token")
    tls = ssl_context() if url.lower().startswith("wss:") else None
    async with connect_websocket(
            url, ssl_context=tls, max_message_bytes=MAX_RECEIVED_FRAME_BYTES,
            connect_timeout=CONNECT_TIMEOUT_S, handshake_timeout=HANDSHAKE_TIMEOUT_S) as ws, \
            trio.open_nursery() as nursery:
        client = EmbeddedPubSub(ws, credentials, renew)
        nursery.start_soon(client._writer)
        nursery.start_soon(client._reader)
        await client.authenticate()
        if renew is not None:
            nursery.start_soon(renew_before_expiry, lambda: client.credentials, client._renew_now)
        try:
            yield client
        finally:
            nursery.cancel_scope.cancel()

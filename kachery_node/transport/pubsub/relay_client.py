"""The embedded backend: credentials for, and a trio client of, the hub's WebSocket relay.

Wire protocol (spec/pubsub.md): every frame is a JSON array of operations (a single object is
accepted too). The client sends ``auth``, ``subscribe``, ``unsubscribe``, ``publish``, ``pong``;
the relay sends ``connected``, ``subscribed``, ``unsubscribed``, ``message``, ``ack``,
``error``, ``heartbeat``. Outgoing publishes are batched per frame by the writer task.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import trio
import trio_websocket

from ...identity import Keypair
from ...protocol.channel_errors import HubRequestError
from ...protocol.pubsub_tokens import issue_token
from ..tls import require_secure_url, ssl_context
from .pubsub_interface import PubSub, PubSubBackend, PubSubMessage, Renewer
from .received_queue import ReceivedQueue

CONNECT_TIMEOUT_S = 10.0
REPLY_TIMEOUT_S = 10.0
RENEW_AT_FRACTION = 0.8  # renew when 80 % of the token's life has passed


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

    def __init__(self, ws: trio_websocket.WebSocketConnection, credentials: dict[str, Any],
                 renew: Renewer | None) -> None:
        self._ws = ws
        self.credentials = credentials
        self._renew = renew
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[trio.Event, list]] = {}
        self._send_q: list[bytes] = []
        self._send_wake = trio.Event()
        self._recv_send, self._recv = trio.open_memory_channel[PubSubMessage | HubRequestError](math.inf)
        self.connected: dict[str, Any] = {}
        self._closed: HubRequestError | None = None

    # ------------------------------------------------------------------ plumbing
    def _queue(self, op: dict) -> None:
        self._send_q.append(orjson.dumps(op))
        self._send_wake.set()

    async def _request(self, op: dict) -> dict:
        if self._closed is not None:
            raise self._closed
        op_id = next(self._ids)
        event, box = trio.Event(), []
        self._pending[op_id] = (event, box)
        self._queue({**op, "id": op_id})
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
            batch, self._send_q = self._send_q, []
            if batch:
                try:
                    await self._ws.send_message((b"[" + b",".join(batch) + b"]").decode())
                except trio_websocket.ConnectionClosed:
                    return  # the reader reports why

    async def _reader(self) -> None:
        try:
            while True:
                frame = await self._ws.get_message()
                ops = orjson.loads(frame)
                for op in ops if isinstance(ops, list) else [ops]:
                    self._dispatch(op)
        except trio_websocket.ConnectionClosed as exc:
            reason = exc.reason
            err = HubRequestError(400, "connection_closed",
                                  f"relay closed the connection ({reason.code}: {reason.reason})")
            self._closed = err
            self._recv_send.send_nowait(err)
            for event, box in self._pending.values():
                box.append({"op": "error", "code": "connection_closed", "message": str(err)})
                event.set()
        finally:
            self._recv_send.close()

    def _dispatch(self, op: dict) -> None:
        kind = op.get("op")
        if kind == "message":
            self._recv_send.send_nowait(PubSubMessage(op["band"], op["from"], op.get("data"), op["ts_ms"]))
        elif kind == "heartbeat":
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

    async def _renewer(self) -> None:
        assert self._renew is not None
        while True:
            left_s = (self.credentials["expires_ms"] - time.time() * 1000) / 1000
            await trio.sleep(max(left_s * RENEW_AT_FRACTION, 0.05))
            await self.renew_token(await self._renew())

    # ------------------------------------------------------------------ API
    async def authenticate(self) -> dict:
        self.connected = await self._request({"op": "auth", "token": self.credentials["token"]})
        return self.connected

    async def renew_token(self, credentials: dict[str, Any]) -> None:
        """Replace the token on the open connection (in-band, like Ably's AUTH)."""
        if credentials.get("backend") != "embedded":  # the owner moved the channel: reconnect there
            raise HubRequestError(409, "backend_changed",
                                  f"the channel now uses the {credentials.get('backend')!r} pub-sub backend")
        self.credentials = credentials
        self.connected = await self._request({"op": "auth", "token": credentials["token"]})

    async def publish(self, band: str, data: Any, *, ack: bool = False) -> None:
        if ack:
            await self._request({"op": "publish", "band": band, "data": data})
        else:
            if self._closed is not None:
                raise self._closed
            self._queue({"op": "publish", "band": band, "data": data})
            await trio.lowlevel.checkpoint()

    async def subscribe(self, band: str) -> None:
        await self._request({"op": "subscribe", "band": band})

    async def unsubscribe(self, band: str) -> None:
        await self._request({"op": "unsubscribe", "band": band})



    async def aclose(self) -> None:
        await self._ws.aclose()


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
    async with trio_websocket.open_websocket_url(
            url, ssl_context=tls, max_message_size=16 << 20, connect_timeout=CONNECT_TIMEOUT_S,
            disconnect_timeout=2) as ws, trio.open_nursery() as nursery:
        client = EmbeddedPubSub(ws, credentials, renew)
        nursery.start_soon(client._writer)
        nursery.start_soon(client._reader)
        await client.authenticate()
        if renew is not None:
            nursery.start_soon(client._renewer)
        try:
            yield client
        finally:
            nursery.cancel_scope.cancel()

"""The embedded pub-sub relay: a WebSocket endpoint served by ``kachery hub serve``.

Theory of operation
-------------------
A node connects to ``/pubsub`` and must first send ``{"op": "auth", "token": ..., "v": 2}``
with a hub-signed token (kachery_node.protocol.pubsub_tokens); ``v`` is the pub-sub protocol
version (2: messages in binary frames; a client without it is refused ``unsupported_version`` and
closed with 4026). From then on every ``subscribe`` and ``publish`` is checked against the token's
capability, band by band; a later ``auth`` on the same connection replaces the token (renewal)
and drops subscriptions the new token no longer allows. Control operations are JSON in text
frames; messages travel in binary frames (:mod:`kachery_node.protocol.relay_frames`) as the
bytes they are. The relay fans each published message out to the band's subscribers (including
the publisher if it subscribed, like Ably's default echo, unless it subscribed with
``"echo": false``), encoding the record once.

Rules
-----
* It is pub-sub, not storage: nothing is kept once delivered; a subscriber whose undelivered
  events (queued, and the frame being written) reach ``max_queue_bytes`` is dropped (close code
  4008), like NATS's slow consumers: its backlog is discarded and its subscriptions end at once,
  so a subscriber that stops reading costs the hub at most that much, whatever is published.
* Bounded: messages over ``max_message_bytes`` are refused (``too_large``), publishes beyond
  ``publish_rate``/s (token bucket with ``publish_burst``) are refused (``rate_limited``); frames
  over ``max_frame_bytes`` close the connection (1009), and the relay sends none larger.
* Per node, not per connection: the publish allowance belongs to the (channel, node) and all its
  connections draw on it, and a node may hold at most ``max_connections_per_node`` authenticated
  connections on a channel (another ``auth`` is refused ``rate_limited``, logged, closed 4029),
  so opening more connections with one token (or several) buys neither rate nor fan-out.
* Alive: a ``heartbeat`` goes out every ``heartbeat_s``; a connection silent for
  ``idle_timeout_s`` is closed (4002). A token that expires without renewal closes it (4001).
* Revocation holds for old tokens: a token issued at or before the hub's last revocation
  concerning its node on its channel (``revoked_before``, kept in hub.db) is refused on a new
  connection and on a renewal; the hub narrows live connections itself (:meth:`Relay.restrict`).
* Every refusal is answered with ``{"op": "error", "code", "message", "id"}`` and logged; it
  changes nothing.
* Outgoing events queued while the socket is busy go out together (control operations as a JSON
  array per text frame, messages as records back to back in a binary frame): batching is what
  lets one Python process deliver thousands of messages per second. A frame holds at most
  ``max_frame_bytes`` (1 MiB, far under the 16 MiB kachery's client accepts), so a paused
  subscriber's backlog goes out in several frames, never one it would refuse.
* The fast path: messages for a subscriber with nothing queued or being written, and no
  direct write in the last ``DIRECT_MIN_INTERVAL_S``, are written into its socket by the
  publisher's task as soon as the publisher's frame is handled (:mod:`.direct_send`: no task
  switch, no ASGI layers); bursts go through the writer, batched. What the socket does not take
  goes out through the writer first, so order and the queue bound hold as above.
* The receive side's fast path: on a plain-TCP connection without WebSocket extensions, the
  relay reads the client's frames itself, in the connection's reading task (:mod:`.direct_receive`:
  no wsproto, no ASGI event, no task switch). Both paths hand each message to one handler
  (:meth:`_Connection.receive_message`), so every rule above holds the same on both; a frame
  that breaks RFC 6455 closes the connection with 1002 (1007: text that is not UTF-8; 1009: over
  ``max_frame_bytes``), a ping is answered with a pong, a close with a close.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import orjson
import trio
from starlette.websockets import WebSocket

from ..errors import (
    ChannelProtocolError,
    ExpiredError,
    InvalidTokenError,
    MalformedRequestError,
    RateLimitedError,
    TooLargeError,
    UnsupportedVersionError,
)
from ..protocol import relay_frames
from ..protocol.pubsub_tokens import TokenClaims, verify_token
from ..protocol.roles import PUBLISH, SUBSCRIBE, check_capability
from ..transport.websocket_frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    encode_frame,
    parse_close,
)
from . import direct_receive, direct_send
from .relay_traffic import RelayTraffic

#: The pub-sub protocol version this relay speaks (spec/pubsub.md §3).
PROTOCOL_VERSION = 2

log = logging.getLogger("kachery.hub.relay")


@dataclass
class RelayLimits:
    """The relay's bounds (``kachery hub serve`` options set them)."""

    max_message_bytes: int = 64 * 1024  # Ably's default message size limit
    max_frame_bytes: int = 1024 * 1024  # both ways: the client's own cap is 16 MiB
    publish_rate: float = 2000.0
    publish_burst: float = 4000.0
    heartbeat_s: float = 15.0
    idle_timeout_s: float = 45.0
    auth_timeout_s: float = 10.0
    max_queue_bytes: int = 16 * 1024 * 1024  # undelivered bytes per connection (each event + 64)
    max_connections_per_node: int = 8  # per (channel, node), whatever the tokens


# What a queued event costs besides its bytes (the bytes object and its place in the deque):
# counted so that many tiny events cannot outgrow max_queue_bytes.
_EVENT_OVERHEAD = 64
# A subscriber's messages are written straight into its socket (flush_direct) at most once in
# this long; more frequent ones go through its writer, batched: one frame per message costs its
# client more than a frame of many (bench/bench_relay.py: 22k instead of 47k deliveries/s to 50
# subscribers in one process, when every message went out in its own frame).
DIRECT_MIN_INTERVAL_S = 0.002
#: A connection the relay asked to close is given this long to flush what was queued before
#: and its close frame; past it, its socket is aborted (:func:`.direct_send.abort`). The ASGI
#: server's sends cannot be cancelled: without this, a peer that stopped reading would hold the
#: connection (and one of its node's connection slots) for as long as it keeps its TCP window shut.
CLOSE_GRACE_S = 8.0


@dataclass
class _NodeLimits:
    """What all of a node's connections on one channel share: the publish token bucket and the
    connection count (so that more connections with one token give no more of either)."""

    allowance: float
    last_refill: float
    connections: int = 0

    def refill(self, limits: RelayLimits) -> float:
        now = time.monotonic()
        self.allowance = min(limits.publish_burst,
                             self.allowance + (now - self.last_refill) * limits.publish_rate)
        self.last_refill = now
        return self.allowance


class _TooManyConnections(RateLimitedError):
    """A node opened more relay connections on a channel than ``max_connections_per_node``."""


class _Close(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


class _Connection:
    def __init__(self, relay: Relay, ws: WebSocket) -> None:
        self.relay = relay
        self.ws = ws
        self.claims: TokenClaims | None = None
        self.subs: set[str] = set()
        self.no_echo: set[str] = set()  # subscribed bands where its own messages are not sent back
        # (binary, event): a message record, or JSON; (None, bytes): bytes that are frames
        # already: the rest of a frame that flush_direct began writing (always first in the
        # queue), or a pong
        self.out: deque[tuple[bool | None, bytes]] = deque()
        self.queued_bytes = 0  # what self.out costs (see _EVENT_OVERHEAD)
        self.inflight_bytes = 0  # the frame the writer is sending
        self.wake = trio.Event()
        self.last_recv = time.monotonic()
        self.node: _NodeLimits | None = None  # shared by the node's connections on the channel
        self.close_request: _Close | None = None
        self.closing = trio.Event()  # set with close_request
        self.refused_here = 0
        self.connected_at = time.monotonic()
        self.peer = f"{ws.client.host}:{ws.client.port}" if ws.client else "?"
        self.direct: direct_send.DirectSender | None = None  # set once accepted (if plain TCP)
        self.last_direct = 0.0  # monotonic time of the last frame written by flush_direct
        self.fast = False  # its messages are read by the relay itself now (direct_receive)
        self.fast_done = trio.Event()  # ... and that reading stopped
        self.ended = trio.Event()  # the relay's handling of the connection is over

    @property
    def who(self) -> str:
        return f"node {self.claims.node[:12]}…" if self.claims else f"unauthenticated {self.peer}"

    # ---------------------------------------------------------------- outgoing
    def push(self, event: bytes, *, binary: bool | None = False, wake: bool = True) -> None:
        """Queue ``event``: a JSON operation, (``binary``) a message record, or (``binary=None``)
        a whole frame for the socket; ``wake=False``: the caller flushes it (:meth:`flush_direct`)
        instead of the writer."""
        if self.close_request is not None:
            return  # closing: nothing more goes out (what was queued before still does)
        cost = len(event) + _EVENT_OVERHEAD
        limit = self.relay.limits.max_queue_bytes
        if self.queued_bytes + self.inflight_bytes + cost > limit:
            # Drop the backlog now (not when the socket drains: a stalled peer may never read),
            # except the rest of a frame begun in the socket (the close must follow a whole frame).
            head = self.out[0] if self.out and self.out[0][0] is None else None
            self.out.clear()
            self.queued_bytes = 0
            if head is not None:
                self.out.append(head)
                self.queued_bytes = len(head[1]) + _EVENT_OVERHEAD
            for band in list(self.subs):
                self.relay.unsubscribe(self, band)
            self.close(4008, f"slow consumer: over {limit} bytes undelivered")
            return
        self.out.append((binary, event))
        self.queued_bytes += cost
        if wake:
            self.wake.set()

    def idle_for_direct(self) -> bool:
        """Whether a message may be written into the socket now: nothing queued or being
        written by :meth:`writer` (so it cannot overtake anything), and not closing."""
        return (self.direct is not None and not self.out and not self.inflight_bytes
                and self.close_request is None)

    def flush_direct(self) -> None:
        """Write what :meth:`Relay.fan_out` queued here without waking the writer into the
        socket now, batched as the writer would (see :meth:`_take_frame`); what the socket does
        not take, and anything else queued, is left to the writer, in order."""
        while (self.direct is not None and not self.inflight_bytes and self.close_request is None
               and self.out and self.out[0][0] is True):
            _binary, records, _cost = self._take_frame()
            frame = direct_send.binary_frame(records)
            sent = self.direct.try_send(frame)
            if sent == len(frame):
                self.relay.frames_out += 1
                self.relay.direct_frames += 1
                self.last_direct = time.monotonic()
                continue
            if sent > 0:  # a frame begun in the socket: its rest goes out before anything else
                rest = frame[sent:]
                self.out.appendleft((None, rest))
                self.queued_bytes += len(rest) + _EVENT_OVERHEAD
            else:  # not now (0), or never (-1: closed or broken; the writer will find out)
                if sent < 0:
                    self.direct = None
                self.out.appendleft((True, records))  # records back to back are one event
                self.queued_bytes += len(records) + _EVENT_OVERHEAD
            break
        if self.out:
            self.wake.set()

    def send_op(self, **op: Any) -> None:
        self.push(orjson.dumps(op))

    def close(self, code: int, reason: str, *, quiet: bool = False) -> None:
        """Close with ``code`` once what is queued has gone out (``quiet``: the client asked,
        nothing to log)."""
        if self.close_request is None:
            (log.debug if quiet else log.warning)("relay closing %s: %s (%d)", self.who, reason, code)
            self.close_request = _Close(code, reason)
            self.closing.set()
            self.wake.set()

    async def writer(self) -> None:
        while True:
            await self.wake.wait()
            self.wake = trio.Event()
            while self.out:
                if self.out[0][0] is None:  # frames already: the rest of one written directly, a pong
                    rest = self.out.popleft()[1]
                    self.inflight_bytes = cost = len(rest) + _EVENT_OVERHEAD
                    self.queued_bytes -= cost
                    assert self.direct is not None
                    await self.direct.send(rest)
                    self.inflight_bytes = 0
                    self.relay.frames_out += 1
                    continue
                binary, frame, self.inflight_bytes = self._take_frame()
                if binary:
                    await self.ws.send_bytes(frame)
                else:
                    await self.ws.send_text(frame.decode())
                self.inflight_bytes = 0
                self.relay.frames_out += 1
            if self.close_request is not None:
                raise self.close_request

    def _take_frame(self) -> tuple[bool, bytes, int]:
        """The oldest queued events of one kind (binary records or JSON operations), as many as
        fit in one frame of at most ``max_frame_bytes`` (a backlog goes out in several frames,
        each one the client accepts; an event is never split, so one larger than the limit,
        possible only with a message limit near it, goes alone): (binary, frame, what they cost
        in :attr:`queued_bytes`)."""
        limit = self.relay.limits.max_frame_bytes
        binary, first = self.out.popleft()
        batch = [first]
        separator = 0 if binary else 1  # records follow one another; JSON needs "[", ",", "]"
        size = len(first) + 2 * separator
        while self.out and self.out[0][0] is binary and size + len(self.out[0][1]) + separator <= limit:
            event = self.out.popleft()[1]
            batch.append(event)
            size += len(event) + separator
        cost = sum(len(event) for event in batch) + _EVENT_OVERHEAD * len(batch)
        self.queued_bytes -= cost
        frame = b"".join(batch) if binary else b"[" + b",".join(batch) + b"]"
        return binary, frame, cost

    async def ticker(self) -> None:
        limits = self.relay.limits
        next_beat = time.monotonic() + limits.heartbeat_s
        while True:
            await trio.sleep(min(limits.heartbeat_s, 1.0, limits.idle_timeout_s / 3))
            now = time.monotonic()
            if self.claims is None and now - self.connected_at > limits.auth_timeout_s:
                self.close(4001, "no auth within the time allowed")
            elif now - self.last_recv > limits.idle_timeout_s:
                self.close(4002, "no reply to heartbeats: connection presumed dead")
            elif self.claims is not None and time.time() * 1000 >= self.claims.expires_ms:
                self.send_op(op="error", status=401, code="token_expired",
                             message="token expired; reconnect with a new one")
                self.close(4001, "token expired")
            if now >= next_beat:
                next_beat = now + limits.heartbeat_s
                self.send_op(op="heartbeat", ts_ms=int(time.time() * 1000))

    # ---------------------------------------------------------------- incoming
    async def reader(self) -> None:
        """Receive the client's messages until it goes away or the connection must close: read
        by the connection's own reading task once :func:`.direct_receive.take_over` grants it
        (at once, usually), through hypercorn's ASGI events until then."""
        why_not = self.take_over()
        while why_not is not None:
            msg = await self.ws.receive()
            if not self.receive_asgi(msg):
                return
            if why_not == "pending":  # it may be granted now that this message was handled
                why_not = self.take_over()
        await self.fast_done.wait()

    def take_over(self) -> str | None:
        """Ask for the fast path (:func:`.direct_receive.take_over`): None once granted (what
        hypercorn had read already is handled by then)."""
        if self.direct is None:
            return "not plain TCP"
        asgi_receive = getattr(self.ws, "_receive", None)  # Starlette's: hypercorn's queue
        return direct_receive.take_over(self.direct.server, self, self.relay.limits.max_frame_bytes,
                                        asgi_receive, self.receive_asgi)

    def receive_asgi(self, msg: dict[str, Any]) -> bool:
        """Handle an ASGI event of the ordinary path; False if the connection is over."""
        if msg["type"] == "websocket.disconnect":
            return False
        text, data = msg.get("text"), msg.get("bytes")
        return self.receive_message(data or b"" if text is None else text, binary=text is None)

    def receive_message(self, payload: bytes | str, *, binary: bool) -> bool:
        """Handle one message from the client, whichever path read it: a binary frame of
        publish records, or a text frame of JSON operations (``str`` from the ASGI path, UTF-8
        ``bytes`` not yet checked from the fast path). False if the connection must close."""
        self.last_recv = time.monotonic()
        limit = self.relay.limits.max_frame_bytes
        if len(payload) > limit:
            self.close(1009, f"frame over {limit} bytes")
            return False
        if binary:
            try:
                return self.handle_binary(payload)  # type: ignore[arg-type]
            finally:
                self.relay.flush_direct(self)
        try:
            ops = orjson.loads(payload)
        except orjson.JSONDecodeError:
            if isinstance(payload, bytes) and not _is_utf8(payload):
                self.close(1007, "text frame is not UTF-8")
                return False
            self.refuse(MalformedRequestError("frame is not valid JSON"), None)
            return True
        for op in ops if isinstance(ops, list) else [ops]:
            op_id = op.get("id") if isinstance(op, dict) else None
            try:
                self.handle(op)
            except ChannelProtocolError as exc:
                if not self.refuse_or_close(exc, op_id):
                    return False
        return True

    # ------------------------------------------ the fast path's (direct_receive.Receiver)
    def message(self, opcode: int, payload: bytes) -> bool:
        """One message read off the socket by the relay itself (:mod:`.direct_receive`)."""
        if self.close_request is not None:
            return False  # closing (maybe for a message handled before the take-over): no more
        if opcode in (OP_BINARY, OP_TEXT):
            self.fast = True
            self.relay.direct_receives += 1
            return self.receive_message(payload, binary=opcode == OP_BINARY)
        if opcode == OP_PING:  # answered in order with what the relay sends, never inside a frame
            self.push(encode_frame(OP_PONG, payload, mask=False), binary=None)
            return True
        if opcode == OP_CLOSE:
            try:
                code, _reason = parse_close(payload)
            except FrameError as exc:
                self.failed(exc.close_code, str(exc))
                return False
            self.close(code if code is not None else 1000, "closed by the client", quiet=True)
            return False
        return True  # a pong: the relay sends no pings of its own (heartbeats are JSON)

    def failed(self, close_code: int, reason: str) -> None:
        """The client broke RFC 6455 framing (or, 1011, the relay failed handling a frame)."""
        self.close(close_code, reason)

    def stopped(self) -> None:
        self.fast_done.set()

    async def finished(self) -> None:
        await self.ended.wait()

    def refuse_or_close(self, exc: ChannelProtocolError, op_id: Any) -> bool:
        """Answer a refusal; False if the connection must close for it (before a good auth)."""
        self.refuse(exc, op_id)
        if self.claims is None:
            for kind, code in ((_TooManyConnections, 4029), (UnsupportedVersionError, 4026),
                               (InvalidTokenError, 4001), (ExpiredError, 4001)):
                if isinstance(exc, kind):
                    self.close(code, str(exc))
                    return False
        return True

    def handle_binary(self, frame: bytes) -> bool:
        """Publish each record of a binary frame; a malformed record refuses the rest of the
        frame (the records before it were published). False if the connection must close."""
        records = relay_frames.decode_publishes(frame)
        while True:
            record_id = None
            try:
                record = next(records, None)
                if record is None:
                    return True
                record_id = record.id or None
                self.publish_record(record)
            except ChannelProtocolError as exc:
                if not self.refuse_or_close(exc, record_id):
                    return False
                if record_id is None:
                    return True  # the frame itself is malformed: nothing after it can be read

    def refuse(self, exc: ChannelProtocolError, op_id: Any) -> None:
        self.relay.refusals += 1
        self.refused_here += 1
        # A flooding client must not flood the log too: the first refusals, then every 1000th.
        if self.refused_here <= 20 or self.refused_here % 1000 == 0:
            log.warning("relay refused %s from %s: %s (refusal %d on this connection)",
                        exc.code, self.who, exc.message, self.refused_here)
        op: dict[str, Any] = {"op": "error", "status": exc.status, "code": exc.code, "message": exc.message}
        if op_id is not None:
            op["id"] = op_id
        self.send_op(**op)

    def handle(self, op: Any) -> None:
        if not isinstance(op, dict) or not isinstance(op.get("op"), str):
            raise MalformedRequestError("each operation must be an object with an 'op'")
        kind, op_id = op["op"], op.get("id")
        if kind == "auth":
            if op.get("v") != PROTOCOL_VERSION:
                raise UnsupportedVersionError(
                    f"this relay speaks pub-sub v{PROTOCOL_VERSION} (messages in binary frames, "
                    f"spec/pubsub.md); the client sent v{op.get('v', 1)}: upgrade kachery")
            self.authenticate(op.get("token"), op_id)
            return
        if kind in ("pong", "ping"):
            if kind == "ping":
                self.send_op(op="pong", id=op_id)
            return
        if self.claims is None:
            raise InvalidTokenError("send {'op': 'auth', 'token': ...} first")
        now_ms = time.time() * 1000
        if now_ms >= self.claims.expires_ms:
            raise ExpiredError("token expired; renew it with a new 'auth'")
        band = op.get("band")
        if not isinstance(band, str):
            raise MalformedRequestError(f"{kind!r} needs a 'band'")
        if kind == "publish":
            raise MalformedRequestError(f"pub-sub v{PROTOCOL_VERSION}: a publish travels as a record in a "
                                        "binary frame, not as a JSON operation (spec/pubsub.md §3)")
        if kind == "subscribe":
            echo = op.get("echo", True)
            if not isinstance(echo, bool):
                raise MalformedRequestError("'echo' must be true or false")
            check_capability(self.claims.capability, band, SUBSCRIBE)
            self.subs.add(band)
            if echo:
                self.no_echo.discard(band)
            else:
                self.no_echo.add(band)
            self.relay.bands.setdefault(band, set()).add(self)
            self.send_op(op="subscribed", band=band, id=op_id)
        elif kind == "unsubscribe":
            self.relay.unsubscribe(self, band)
            self.send_op(op="unsubscribed", band=band, id=op_id, reason="requested")
        else:
            raise MalformedRequestError(f"unknown op {kind!r}")

    def authenticate(self, token: Any, op_id: Any) -> None:
        claims = verify_token(token, hub_id=self.relay.hub_id, now_ms=int(time.time() * 1000))
        old = self.claims
        if old is not None and (claims.node, claims.channel) != (old.node, old.channel):
            raise InvalidTokenError("a renewed token must be for the same node and channel")
        if claims.issued_ms <= self.relay.revoked_before(claims.channel, claims.node):
            raise InvalidTokenError("token was issued before a revocation concerning this node on "
                                    f"{claims.channel!r}; ask the hub for a new one")
        if old is None:
            self.node = self.relay.admit(claims.channel, claims.node)
        self.claims = claims
        for band in sorted(self.subs):
            if SUBSCRIBE not in claims.capability.get(band, ()):
                self.relay.unsubscribe(self, band)
                self.send_op(op="unsubscribed", band=band, reason="capability withdrawn")
        self.send_op(op="connected", id=op_id, v=PROTOCOL_VERSION, node=claims.node,
                     channel=claims.channel, capability=claims.capability, expires_ms=claims.expires_ms)

    def publish_record(self, record: relay_frames.PublishRecord) -> None:
        if self.claims is None:
            raise InvalidTokenError("send {'op': 'auth', 'token': ..., 'v': 2} first")
        now_ms = time.time() * 1000
        if now_ms >= self.claims.expires_ms:
            raise ExpiredError("token expired; renew it with a new 'auth'")
        band = record.band
        check_capability(self.claims.capability, band, PUBLISH)
        assert self.node is not None
        limits = self.relay.limits
        node = self.node
        node.refill(limits)
        if node.allowance < 1:
            raise RateLimitedError(f"over {limits.publish_rate:g} messages/s for this node on "
                                   f"{self.claims.channel!r} (all its connections together)")
        if len(record.message) > limits.max_message_bytes:
            raise TooLargeError(f"message of {len(record.message)} bytes is over the "
                                f"{limits.max_message_bytes}-byte limit")
        node.allowance -= 1
        event = relay_frames.encode_message(band, self.claims.node, int(now_ms), record.message)
        delivered = self.relay.fan_out(band, event, self)
        self.relay.traffic.count(self.claims.channel, len(record.message), delivered, direct=self.fast)
        if record.id:
            self.send_op(op="ack", id=record.id)


# (channel, node) -> the time of the last revocation concerning them (0: none).
RevokedBefore = Callable[[str, str], int]


class Relay:
    """The relay's shared state: band -> subscribed connections. An ASGI WebSocket endpoint.

    ``revoked_before(channel, node)`` says when rights were last taken from ``node`` on
    ``channel`` (the hub's :meth:`~kachery_node.hub.state.HubState.tokens_revoked_before`): tokens
    issued at or before it are refused, on new connections and renewals alike.
    """

    def __init__(self, hub_id: str, limits: RelayLimits | None = None,
                 revoked_before: RevokedBefore = lambda channel, node: 0) -> None:
        self.hub_id = hub_id
        self.limits = limits or RelayLimits()
        self.revoked_before = revoked_before
        self.bands: dict[str, set[_Connection]] = {}
        self.connections: set[_Connection] = set()
        self.nodes: dict[tuple[str, str], _NodeLimits] = {}  # (channel, node) -> shared limits
        self.delivered = 0
        self.frames_out = 0
        self.direct_frames = 0  # of frames_out: written straight into the socket by fan_out
        self.direct_receives = 0  # messages read off the socket by the relay itself (direct_receive)
        self._to_flush: set[_Connection] = set()  # idle connections with messages to write
        self.refusals = 0
        self.traffic = RelayTraffic()  # per channel, for `kachery hub status`

    def admit(self, channel: str, node: str) -> _NodeLimits:
        """Count a newly authenticated connection of ``node`` on ``channel``; refuse it when the
        node has ``max_connections_per_node`` already. Returns the state its connections share."""
        limits = self.limits
        state = self.nodes.get((channel, node))
        if state is None:
            if len(self.nodes) > 2 * len(self.connections) + 64:
                self._forget_idle_nodes()
            state = self.nodes[(channel, node)] = _NodeLimits(limits.publish_burst, time.monotonic())
        if state.connections >= limits.max_connections_per_node:
            raise _TooManyConnections(
                f"node {node[:12]}… already has {state.connections} relay connections on {channel!r} "
                f"(at most {limits.max_connections_per_node}); close one first")
        state.connections += 1
        return state

    def _forget_idle_nodes(self) -> None:
        """Drop the state of nodes without connections whose allowance is full again (keeping
        the others: reconnecting must not reset a node's publish allowance)."""
        for key, state in list(self.nodes.items()):
            if state.connections == 0 and state.refill(self.limits) >= self.limits.publish_burst:
                del self.nodes[key]

    def fan_out(self, band: str, event: bytes, publisher: _Connection | None = None) -> int:
        """Queue ``event`` to ``band``'s subscribers, except ``publisher`` if it subscribed
        without echo; returns how many it went to."""
        subs = self.bands.get(band)
        if not subs:
            return 0
        targets = list(subs)
        if publisher is not None and band in publisher.no_echo and publisher in subs:
            targets.remove(publisher)
        now = time.monotonic()
        for conn in targets:
            # An idle connection's messages wait for flush_direct at the end of the frame being
            # handled, then are written into its socket; within DIRECT_MIN_INTERVAL_S of its last
            # direct write (a burst) the writer batches them, as it batches a backlog.
            if conn in self._to_flush or (conn.idle_for_direct()
                                          and now - conn.last_direct >= DIRECT_MIN_INTERVAL_S):
                self._to_flush.add(conn)
                conn.push(event, binary=True, wake=False)
            else:
                conn.push(event, binary=True)
        self.delivered += len(targets)
        return len(targets)

    def flush_direct(self, publisher: _Connection | None = None) -> None:
        """Write the messages :meth:`fan_out` left for idle connections into their sockets; the
        ``publisher``'s own copies (echo) last, after every other subscriber's."""
        conns, self._to_flush = self._to_flush, set()
        for conn in conns:
            if conn is not publisher:
                conn.flush_direct()
        if publisher in conns:
            publisher.flush_direct()

    def restrict(self, channel: str, node: str | None, capability: dict[str, list[str]] | None) -> None:
        """Narrow live connections of ``node`` (all nodes if None) on ``channel`` to ``capability``.

        The hub calls this when roles are revoked or a channel is deleted, so that a revocation
        takes effect at once instead of when the node's token expires. (An external relay would
        learn it at the next renewal only; tokens are short for that reason.)
        """
        for conn in list(self.connections):
            claims = conn.claims
            if claims is None or claims.channel != channel or (node is not None and claims.node != node):
                continue
            allowed = capability if capability is not None else {}
            narrowed = {band: [op for op in ops if op in allowed.get(band, ())]
                        for band, ops in claims.capability.items()}
            conn.claims = replace(claims, capability={b: ops for b, ops in narrowed.items() if ops})
            for band in sorted(conn.subs):
                if SUBSCRIBE not in conn.claims.capability.get(band, ()):
                    self.unsubscribe(conn, band)
                    conn.send_op(op="unsubscribed", band=band, reason="capability withdrawn")

    def unsubscribe(self, conn: _Connection, band: str) -> None:
        conn.subs.discard(band)
        conn.no_echo.discard(band)
        subs = self.bands.get(band)
        if subs is not None:
            subs.discard(conn)
            if not subs:
                del self.bands[band]

    async def endpoint(self, websocket: WebSocket) -> None:
        """Serve one WebSocket connection until it closes or is closed."""
        await websocket.accept()
        conn = _Connection(self, websocket)
        try:
            async with trio.open_nursery() as guard:
                guard.start_soon(self._abort_if_not_closed_in_time, conn, websocket)
                await self._serve(conn, websocket)
                guard.cancel_scope.cancel()
        finally:
            conn.ended.set()  # the fast path's reading task waits for this (direct_receive)

    @staticmethod
    async def _abort_if_not_closed_in_time(conn: _Connection, websocket: WebSocket) -> None:
        await conn.closing.wait()
        await trio.sleep(CLOSE_GRACE_S)
        if direct_send.abort(websocket.scope):
            log.warning("relay aborting %s: not closed %.0f s after its close (%d) was asked for "
                        "(the peer does not read)", conn.who, CLOSE_GRACE_S, conn.close_request.code)

    async def _serve(self, conn: _Connection, websocket: WebSocket) -> None:
        conn.direct = direct_send.sender_for(websocket.scope)
        self.connections.add(conn)
        close: _Close | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.writer)
                nursery.start_soon(conn.ticker)
                await conn.reader()
                if conn.close_request is None:
                    nursery.cancel_scope.cancel()  # the peer went away
                else:
                    # Let the writer flush the refusal and raise _Close; do not wait forever.
                    nursery.cancel_scope.deadline = trio.current_time() + 5
        except BaseException as exc:
            leaves = _leaves(exc)
            close = next((e for e in leaves if isinstance(e, _Close)), None)
            if close is None and not all(_is_disconnect(e) for e in leaves):
                raise
        finally:
            for band in list(conn.subs):
                self.unsubscribe(conn, band)
            self.connections.discard(conn)
            if conn.node is not None:
                conn.node.connections -= 1
        if close is not None:
            with trio.move_on_after(2):
                try:
                    await websocket.close(close.code, close.reason)
                except Exception:
                    pass  # the peer is already gone


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


def _is_disconnect(exc: BaseException) -> bool:
    from starlette.websockets import WebSocketDisconnect

    gone = (WebSocketDisconnect, OSError, trio.BrokenResourceError, trio.ClosedResourceError)
    return isinstance(exc, gone) or type(exc).__name__ in ("ClientDisconnected", "WebSocketDisconnect")

"""The Ably backend: token requests signed on the hub with the channel's API key.

Theory of operation. The channel owner gives the hub an Ably API key (``<app>.<key id>:<secret>``).
For a node's ``pubsub_token`` request the hub makes an Ably *token request* (Ably REST spec
RSA9): ``keyName``, ``ttl``, ``capability`` (a JSON string: exactly the node's band capability,
the same object as the embedded relay's), ``clientId`` (the node ID), ``timestamp``, ``nonce`` and
``mac`` = base64(HMAC-SHA256(secret, keyName "\\n" ttl "\\n" capability "\\n" clientId "\\n"
timestamp "\\n" nonce "\\n")). The node exchanges it with Ably for a token; the secret never
leaves the hub, and Ably, not the node, enforces the capability. Bands are Ably channels of the
same name (``<C>-requestFiles``...), as in the original kachery.

Node side: the node POSTs the token request to Ably's REST ``/keys/<keyName>/requestToken``
itself (httpx, under trio), then hands the token to the ably SDK's realtime client, which runs
on a private asyncio loop (:mod:`.asyncio_thread`). Renewal is in-band (Ably's AUTH message,
``auth.authorize()``): the SDK's ``auth_callback`` asks the hub for a fresh token request. The
config may name ``endpoint`` (realtime host[:port]) and ``rest_url``; tests point both at
tests/ably_fake_server.py.

Messages are Ably *binary* data: the SDK runs Ably's binary protocol (MessagePack,
``use_binary_protocol=True``), so a node message's bytes travel as they are (with the JSON
protocol the SDK would base64 them).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import trio

from ...errors import HubRequestError, MalformedRequestError
from .asyncio_thread import AsyncioThread
from .pubsub_interface import PubSub, PubSubBackend, PubSubMessage, Renewer, renew_before_expiry
from .received_queue import ReceivedQueue

DEFAULT_REST_URL = "https://rest.ably.io"
DEFAULT_REALTIME_HOST = "realtime.ably.io"
REPLY_TIMEOUT_S = 10.0


def parse_api_key(key: Any) -> tuple[str, str]:
    """``<app>.<key id>:<secret>`` -> (key name, secret)."""
    if not isinstance(key, str) or key.count(":") != 1 or "." not in key.split(":")[0]:
        raise MalformedRequestError("an Ably API key looks like <app id>.<key id>:<secret>")
    name, secret = key.split(":")
    if not name or not secret:
        raise MalformedRequestError("an Ably API key looks like <app id>.<key id>:<secret>")
    return name, secret


def token_request_mac(secret: str, req: dict[str, Any]) -> str:
    """The ``mac`` of a token request, as Ably documents it (RSA9g)."""
    text = "".join(f"{req.get(f, '')}\n" for f in ("keyName", "ttl", "capability", "clientId",
                                                   "timestamp", "nonce"))
    return base64.b64encode(hmac.new(secret.encode(), text.encode(), hashlib.sha256).digest()).decode()


def make_token_request(api_key: str, *, client_id: str, capability: dict[str, list[str]], ttl_ms: int,
                       now_ms: int) -> dict[str, Any]:
    """A signed Ably token request for ``capability``, valid for ``ttl_ms``."""
    key_name, secret = parse_api_key(api_key)
    req: dict[str, Any] = {"keyName": key_name, "ttl": ttl_ms,
                           "capability": orjson.dumps(capability, option=orjson.OPT_SORT_KEYS).decode(),
                           "clientId": client_id, "timestamp": now_ms, "nonce": secrets.token_hex(16)}
    req["mac"] = token_request_mac(secret, req)
    return req


class AblyPubSubBackend(PubSubBackend):
    """Hub side: token requests made with the channel's API key (which stays on the hub)."""

    name = "ably"

    def __init__(self, api_key: str, endpoint: str | None = None, rest_url: str | None = None) -> None:
        parse_api_key(api_key)
        self._api_key = api_key
        self.endpoint = endpoint
        self.rest_url = rest_url

    def credentials(self, *, node_id: str, channel: str, capability: dict[str, list[str]],
                    now_ms: int, ttl_ms: int) -> dict[str, Any]:
        req = make_token_request(self._api_key, client_id=node_id, capability=capability,
                                 ttl_ms=ttl_ms, now_ms=now_ms)
        return {"backend": self.name, "token_request": req, "node": node_id, "channel": channel,
                **({"endpoint": self.endpoint} if self.endpoint else {}),
                **({"rest_url": self.rest_url} if self.rest_url else {}),
                "capability": capability, "expires_ms": now_ms + ttl_ms}

    def revoke_node(self, node_id: str, issued_before_ms: int) -> bool:
        """Ably token revocation (``POST /keys/<keyName>/revokeTokens``, HTTP Basic auth with the
        API key): every token issued to ``node_id`` before ``issued_before_ms`` stops working at
        once and its connections are dropped; the node asks the hub again and gets only what it
        still holds. (``issuedBefore`` is the hub's decision time, not Ably's "now": a request
        that reaches Ably late must not revoke the tokens issued after the decision.)
        The key needs Ably's "revocable tokens" option. All of the node's tokens from this key
        are revoked, so nodes re-authenticate on other kachery channels sharing the key."""
        import httpx

        key_name, secret = parse_api_key(self._api_key)
        url = f"{(self.rest_url or DEFAULT_REST_URL).rstrip('/')}/keys/{key_name}/revokeTokens"
        resp = httpx.post(url, json={"targets": [f"clientId:{node_id}"], "issuedBefore": issued_before_ms},
                          auth=(key_name, secret), timeout=REPLY_TIMEOUT_S)
        if resp.status_code >= 400 or resp.json().get("failureCount"):
            raise HubRequestError(502, "revocation_failed",
                                  f"Ably refused to revoke the tokens of {node_id[:12]}…: {resp.text[:300]}")
        return True


# ---------------------------------------------------------------------------- node side
async def exchange_token_request(rest_url: str, token_request: dict[str, Any]) -> dict[str, Any]:
    """POST the hub's token request to Ably (``/keys/<keyName>/requestToken``): token details."""
    import httpx

    url = f"{rest_url.rstrip('/')}/keys/{token_request['keyName']}/requestToken"
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(REPLY_TIMEOUT_S)) as client:
            resp = await client.post(url, json=token_request)
    except httpx.HTTPError as exc:
        raise HubRequestError(0, "unreachable", f"cannot reach Ably at {rest_url}: {exc}") from exc
    if resp.status_code >= 400:
        try:
            err = resp.json()["error"]
            detail = f"{err.get('code')}: {err.get('message')}"
        except (ValueError, KeyError, TypeError):
            detail = f"HTTP {resp.status_code}"
        raise HubRequestError(401, "invalid_token", f"Ably refused the token request ({detail})")
    return resp.json()


class AblyPubSub(ReceivedQueue, PubSub):
    """A node's connection to Ably through the ably SDK (asyncio, on its own loop thread).

    Bands are Ably channels; the sender is the message's ``clientId``, which Ably sets from the
    token (the node ID) and refuses to let a client fake. Use :func:`open_ably_pubsub`.
    """

    def __init__(self, thread: AsyncioThread, credentials: dict[str, Any], token: dict[str, Any],
                 renew: Renewer | None) -> None:
        self._thread = thread
        self.credentials = credentials
        self._token = token
        self._renew = renew
        self._realtime: Any = None
        self._listeners: dict[str, Any] = {}
        self._recv_send, self._recv = trio.open_memory_channel[PubSubMessage | HubRequestError](math.inf)
        self._closed: HubRequestError | None = None

    def _put(self, item: PubSubMessage | HubRequestError) -> None:  # on the trio thread
        try:
            self._received(item)
        except trio.ClosedResourceError:
            pass

    # ------------------------------------------------------------------ on the asyncio thread
    async def _auth_callback(self, _params: Any) -> dict[str, Any]:
        token, self._token = self._token, None
        if token is None:  # the SDK needs a new token (expired, or authorize()): ask the hub
            token = await asyncio.get_running_loop().run_in_executor(None, self._fresh_token_blocking)
        return token

    def _fresh_token_blocking(self) -> dict[str, Any]:
        return trio.from_thread.run(self._fresh_token, trio_token=self._thread._trio_token)

    async def _connect(self) -> None:
        from ably import AblyRealtime  # the "ably" extra

        # The SDK logs every frame at INFO; a daemon's log (INFO) would fill with them.
        logging.getLogger("ably").setLevel(max(logging.WARNING, logging.getLogger("ably").level))

        creds = self.credentials
        endpoint = creds.get("endpoint") or DEFAULT_REALTIME_HOST
        self._realtime = AblyRealtime(
            auth_callback=self._auth_callback, client_id=creds["node"], endpoint=endpoint,
            tls=not creds.get("rest_url", DEFAULT_REST_URL).startswith("http://"),
            use_binary_protocol=True, auto_connect=False)
        state_changes: list[Any] = []

        def on_state(change: Any) -> None:
            state_changes.append(change)
            current = str(getattr(change.current, "value", change.current)).lower()
            if current in ("failed", "closed", "suspended", "disconnected") and self._realtime is not None:
                reason = change.reason
                # 4014x: token expired/invalid; 80019 with 401: no fresh token could be had.
                expired = getattr(reason, "code", None) in (40140, 40142) or (
                    getattr(reason, "status_code", None) == 401)
                err = HubRequestError(401 if expired else 400, "expired" if expired else "connection_closed",
                                      f"Ably connection {current}: {reason}")
                if current != "disconnected" or expired:
                    self._thread.to_trio(self._failed, err)

        self._realtime.connection.on(on_state)
        self._realtime.connect()
        await self._realtime.connection.once_async("connected")

    async def _subscribe(self, band: str) -> None:
        channel = self._realtime.channels.get(band)
        deliver = self._deliver

        def listener(message: Any) -> None:
            deliver(band, message)

        self._listeners[band] = listener
        await channel.subscribe(listener)

    async def _unsubscribe(self, band: str) -> None:
        listener = self._listeners.pop(band, None)
        channel = self._realtime.channels.get(band)
        if listener is not None:
            channel.unsubscribe(listener)
        await channel.detach()

    async def _publish(self, band: str, payload: bytes) -> None:
        await self._realtime.channels.get(band).publish("m", payload)

    async def _authorize(self) -> None:
        await self._realtime.auth.authorize()

    async def _close(self) -> None:
        realtime, self._realtime = self._realtime, None
        if realtime is not None:
            await realtime.close()

    def _deliver(self, band: str, message: Any) -> None:
        data = message.data
        if not isinstance(data, bytes | bytearray):
            return  # not a node message (those are binary): another client's text or JSON
        data = bytes(data)
        ts = int(message.timestamp or time.time() * 1000)
        self._thread.to_trio(self._put, PubSubMessage(band, message.client_id or "", data, ts))

    # ------------------------------------------------------------------ trio side
    async def _fresh_token(self) -> dict[str, Any]:
        if self._renew is None:
            raise HubRequestError(401, "expired", "the Ably token expired and cannot be renewed")
        creds = await self._renew()
        if creds.get("backend") != "ably":  # the owner moved the channel: reconnect there
            err = HubRequestError(409, "backend_changed",
                                  f"the channel now uses the {creds.get('backend')!r} pub-sub backend")
            self._failed(err)
            raise err
        token = await exchange_token_request(creds.get("rest_url", DEFAULT_REST_URL), creds["token_request"])
        self.credentials = creds
        return token

    def _failed(self, err: HubRequestError) -> None:
        if self._closed is None:
            self._closed = err
            self._put(err)

    def _check_open(self) -> None:
        if self._closed is not None:
            raise self._closed

    async def _call(self, fn: Any, *args: Any) -> Any:
        from ably import AblyException

        self._check_open()
        try:
            with trio.fail_after(REPLY_TIMEOUT_S + 1):
                return await self._thread.run(fn, *args)
        except AblyException as exc:
            code = getattr(exc, "code", None)
            denied = code in (40160, 40012)
            raise HubRequestError(403 if denied else 400, "capability_denied" if denied else "pubsub_error",
                                  f"Ably refused: {exc}") from exc

    async def connect(self) -> None:
        try:
            await self._call(self._connect)
        except HubRequestError:
            raise
        except Exception as exc:
            raise HubRequestError(502, "pubsub_unreachable", f"cannot connect to Ably: {exc!r}") from exc

    async def publish(self, band: str, data: bytes, *, ack: bool = False) -> None:
        payload = bytes(data)  # binary data: carried as it is by the MessagePack protocol
        if ack:
            await self._call(self._publish, band, payload)
        else:
            self._check_open()
            self._thread.submit(self._publish, band, payload)
            await trio.lowlevel.checkpoint()

    async def subscribe(self, band: str, *, echo: bool = True) -> None:
        # Ably echoes per connection (echoMessages), not per channel: ``echo`` is not honoured.
        await self._call(self._subscribe, band)

    async def unsubscribe(self, band: str) -> None:
        await self._call(self._unsubscribe, band)

    async def renew_token(self) -> None:
        """In-band re-authentication (Ably's AUTH): the SDK asks the hub through the callback."""
        await self._call(self._authorize)

    async def aclose(self) -> None:
        with trio.move_on_after(5):
            await self._thread.run(self._close)
        self._recv_send.close()


@asynccontextmanager
async def open_ably_pubsub(credentials: dict[str, Any], renew: Renewer | None = None
                           ) -> AsyncIterator[AblyPubSub]:
    """Exchange the hub's token request with Ably, connect, yield; renew in-band if ``renew``."""
    token = await exchange_token_request(credentials.get("rest_url", DEFAULT_REST_URL),
                                         credentials["token_request"])
    thread = AsyncioThread("kachery-ably")
    try:
        client = AblyPubSub(thread, credentials, token, renew)
        try:
            await client.connect()
            async with trio.open_nursery() as nursery:
                if renew is not None:
                    nursery.start_soon(renew_before_expiry, lambda: client.credentials, client.renew_token)
                try:
                    yield client
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await client.aclose()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(thread.stop)

"""The NATS backend: bands as subjects, permissions enforced by nats-server (decentralized JWT auth).

Theory of operation.

* Subjects. Band ``<C>-<band>`` is the subject family ``kachery.<C>.<band>.<node ID>``: a node
  publishes on the subject ending in *its own* node ID and subscribes to ``kachery.<C>.<band>.*``.
  Channel names are ``.``-separated segments of ``[A-Za-z0-9_-]``, so they are valid subject
  tokens and no two channels share a subject.
* Credentials. The channel's configuration names the servers (``nats://a:4222,nats://b:4222``);
  the channel owner gives the hub the seed of a NATS *account* that the servers trust (operator
  mode). For each ``pubsub_token`` request the hub mints a user (fresh nkey) whose JWT allows
  publishing exactly on ``kachery.<C>.<band>.<node>`` for the node's publish bands and
  subscribing to ``kachery.<C>.<band>.*`` for its subscribe bands, expiring with the token. The
  node gets the user JWT and the user seed (a per-connection credential, like a ``.creds``
  file); the account seed stays on the hub. The **server** refuses every other publish or
  subscribe (``Permissions Violation``), checks the expiry (and disconnects at it), and so also
  vouches for the sender: the last subject token is the publisher's node ID.
* Renewal. NATS has no in-band re-authentication, so before the JWT expires the client opens a
  second connection with fresh credentials, subscribes there, then drains the old one (make
  before break; a message delivered on both is dropped by the daemon's replay guard).
* Runtime. nats-py is asyncio-only: it runs on a private asyncio loop in a thread
  (:mod:`.asyncio_thread`); this module's :class:`NatsPubSub` is the trio face.

A message's bytes are the NATS payload, as they are; ``ts_ms`` is the receiver's clock (NATS
stamps nothing). Revocation takes effect when the node's credentials are renewed (tokens are
short-lived, ``--token-ttl``) or at once for a daemon, which reconnects when its verified
membership changes.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from ...errors import HubRequestError, MalformedRequestError
from . import nats_jwt
from .asyncio_thread import AsyncioThread
from .pubsub_interface import PubSub, PubSubBackend, PubSubMessage, Renewer, renew_before_expiry
from .received_queue import ReceivedQueue

SUBJECT_ROOT = "kachery"
CONNECT_TIMEOUT_S = 10.0
REPLY_TIMEOUT_S = 10.0


def parse_servers(url: str) -> list[str]:
    """``nats://a:4222,nats://b:4222`` -> the server list; raise for anything else."""
    servers = [s.strip() for s in url.split(",") if s.strip()]
    if not servers or not all(s.startswith(("nats://", "tls://")) for s in servers):
        raise MalformedRequestError(f"NATS servers must be nats://host:port[,nats://...], not {url!r}")
    return servers


def _split_band(band: str) -> tuple[str, str]:
    channel, _, short = band.rpartition("-")
    if not channel or not short:
        raise MalformedRequestError(f"{band!r} is not a band name (<channel>-<band>)")
    return channel, short


def subject(band: str, node: str) -> str:
    """The subject a node publishes ``band`` on (``node="*"``: the subscription wildcard)."""
    channel, short = _split_band(band)
    return f"{SUBJECT_ROOT}.{channel}.{short}.{node}"


def band_of_subject(subj: str) -> tuple[str, str]:
    """``kachery.<C>.<band>.<node>`` -> (``<C>-<band>``, node)."""
    parts = subj.split(".")
    if len(parts) < 4 or parts[0] != SUBJECT_ROOT:
        raise MalformedRequestError(f"{subj!r} is not a kachery subject")
    return f"{'.'.join(parts[1:-2])}-{parts[-2]}", parts[-1]


# ---------------------------------------------------------------------------- hub side
class NatsPubSubBackend(PubSubBackend):
    """Mints per-node NATS users with the account seed of the channel (kept on the hub)."""

    name = "nats"

    def __init__(self, servers: list[str], account_seed: str) -> None:
        self.servers = servers
        self.account_seed = account_seed
        nats_jwt.public_key(account_seed)  # a bad seed fails here, not at the first node

    def credentials(self, *, node_id: str, channel: str, capability: dict[str, list[str]],
                    now_ms: int, ttl_ms: int) -> dict[str, Any]:
        publish = [subject(b, node_id) for b, ops in capability.items() if "publish" in ops]
        subscribe = [subject(b, "*") for b, ops in capability.items() if "subscribe" in ops]
        expires_ms = now_ms + ttl_ms
        user_seed = nats_jwt.new_seed("user")
        jwt = nats_jwt.user_jwt(self.account_seed, nats_jwt.public_key(user_seed),
                                f"{channel}/{node_id[:16]}", publish=publish, subscribe=subscribe,
                                expires_s=math.ceil(expires_ms / 1000), now_s=now_ms // 1000)
        return {"backend": self.name, "servers": self.servers, "node": node_id, "channel": channel,
                "user_jwt": jwt, "user_seed": user_seed, "capability": capability,
                "expires_ms": expires_ms}


# ---------------------------------------------------------------------------- node side
class _Connection:
    """One nats-py connection, living on the asyncio thread."""

    def __init__(self, owner: NatsPubSub, credentials: dict[str, Any]) -> None:
        self.owner = owner
        self.credentials = credentials
        self.nc: Any = None
        self.errors: list[str] = []
        self.subs: dict[str, Any] = {}
        self.retired = False

    async def connect(self) -> None:
        import nats  # nats-py: the optional "nats" extra

        creds = self.credentials

        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        async def on_closed() -> None:
            if not self.retired:
                err = getattr(self.nc, "last_error", None)
                last = str(err) if err is not None else (self.errors or ["connection closed"])[-1]
                self.owner._thread.to_trio(self.owner._closed_by_server, last)

        self.nc = await nats.connect(
            servers=creds["servers"], user_jwt_cb=lambda: creds["user_jwt"].encode(),
            signature_cb=lambda nonce: nats_jwt.sign_nonce(creds["user_seed"], nonce),
            error_cb=on_error, closed_cb=on_closed, allow_reconnect=False,
            connect_timeout=CONNECT_TIMEOUT_S, max_reconnect_attempts=0, name=f"kachery {creds['node'][:16]}")

    async def subscribe(self, band: str) -> str | None:
        subj = subject(band, "*")
        deliver = self.owner._deliver

        async def on_message(msg: Any) -> None:
            deliver(msg.subject, msg.data)

        before = len(self.errors)
        self.subs[band] = await self.nc.subscribe(subj, cb=on_message)
        return await self._confirmed(before, subj)

    async def _confirmed(self, before: int, subj: str) -> str | None:
        """Round-trip to the server (PING/PONG) and return its refusal of ``subj``, if any.

        Measured: now and then the PONG of the first flush is seen before the server's
        ``-ERR`` for the operation, so a second round trip is made before concluding."""
        for _ in range(2):
            await self.nc.flush(timeout=REPLY_TIMEOUT_S)
            violation = _violation(self.errors[before:], subj)
            if violation is not None:
                return violation
        return None

    async def unsubscribe(self, band: str) -> None:
        sub = self.subs.pop(band, None)
        if sub is not None:
            await sub.unsubscribe()

    async def publish(self, subj: str, payload: bytes, ack: bool) -> str | None:
        before = len(self.errors)
        await self.nc.publish(subj, payload)
        if not ack:
            return None
        return await self._confirmed(before, subj)  # PING/PONG: the server has processed it

    async def close(self) -> None:
        self.retired = True
        if self.nc is not None and not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:
                await self.nc.close()


def _violation(errors: list[str], subj: str) -> str | None:
    for e in errors:  # nats-py lower-cases the server's -ERR text
        if "permissions violation" in e.lower() and f'"{subj.lower()}"' in e.lower():
            return e
    return None


class NatsPubSub(ReceivedQueue, PubSub):
    """A node's connection to a channel's NATS servers. Use :func:`open_nats_pubsub`."""

    def __init__(self, thread: AsyncioThread, credentials: dict[str, Any], renew: Renewer | None) -> None:
        self._thread = thread
        self.credentials = credentials
        self._renew = renew
        self._conn = _Connection(self, credentials)
        self._bands: set[str] = set()
        self._recv_send, self._recv = trio.open_memory_channel[PubSubMessage | HubRequestError](math.inf)
        self._closed: HubRequestError | None = None

    # Called on the asyncio thread for every message: decode there, hand over in order.
    def _deliver(self, subj: str, payload: bytes) -> None:
        try:
            band, sender = band_of_subject(subj)
        except MalformedRequestError:
            return
        msg = PubSubMessage(band, sender, bytes(payload), int(time.time() * 1000))
        self._thread.to_trio(self._put, msg)

    def _put(self, item: PubSubMessage | HubRequestError) -> None:  # on the trio thread
        try:
            self._received(item)
        except trio.ClosedResourceError:
            pass

    def _closed_by_server(self, reason: str) -> None:
        expired = "expired" in reason.lower()
        err = HubRequestError(401 if expired else 400, "expired" if expired else "connection_closed",
                              f"NATS closed the connection: {reason}")
        self._closed = err
        self._put(err)

    def _check_open(self) -> None:
        if self._closed is not None:
            raise self._closed

    @staticmethod
    def _denied(violation: str | None) -> None:
        if violation is not None:
            raise HubRequestError(403, "capability_denied", f"NATS refused: {violation}")

    async def connect(self) -> None:
        with trio.fail_after(CONNECT_TIMEOUT_S + 1):
            await self._thread.run(self._conn.connect)

    async def publish(self, band: str, data: bytes, *, ack: bool = False) -> None:
        self._check_open()
        subj = subject(band, self.credentials["node"])
        payload = bytes(data)  # NATS payloads are bytes: the message as it is
        if ack:
            with trio.fail_after(REPLY_TIMEOUT_S + 1):
                self._denied(await self._thread.run(self._conn.publish, subj, payload, True))
        else:
            self._thread.submit(self._conn.publish, subj, payload, False)
            await trio.lowlevel.checkpoint()

    async def subscribe(self, band: str, *, echo: bool = True) -> None:
        # NATS's no_echo is per connection, not per subject: ``echo`` is not honoured.
        self._check_open()
        with trio.fail_after(REPLY_TIMEOUT_S + 1):
            violation = await self._thread.run(self._conn.subscribe, band)
        if violation is not None:
            await self._thread.run(self._conn.unsubscribe, band)
        self._denied(violation)
        self._bands.add(band)

    async def unsubscribe(self, band: str) -> None:
        self._bands.discard(band)
        await self._thread.run(self._conn.unsubscribe, band)

    async def _renew_now(self) -> None:
        """Fresh credentials from the hub (the renewer given at opening), switched to."""
        assert self._renew is not None
        await self.renew_token(await self._renew())

    async def renew_token(self, credentials: dict[str, Any]) -> None:
        """Switch to fresh credentials: connect anew, resubscribe, then drain the old connection."""
        if credentials.get("backend") != "nats":  # the owner moved the channel: reconnect there
            raise HubRequestError(409, "backend_changed",
                                  f"the channel now uses the {credentials.get('backend')!r} pub-sub backend")
        new = _Connection(self, credentials)
        with trio.fail_after(CONNECT_TIMEOUT_S + 1):
            await self._thread.run(new.connect)
        allowed = {b for b, ops in credentials["capability"].items() if "subscribe" in ops}
        for band in sorted(self._bands):
            if band in allowed:
                await self._thread.run(new.subscribe, band)
            else:
                self._bands.discard(band)
                self._put(HubRequestError(403, "unsubscribed",
                                          f"unsubscribed from {band}: capability withdrawn"))
        old, self._conn, self.credentials = self._conn, new, credentials
        old.retired = True
        self._thread.submit(old.close)

    async def aclose(self) -> None:
        with trio.move_on_after(5):  # drain: in-flight publishes reach the server
            await self._thread.run(self._conn.close)
        self._recv_send.close()


@asynccontextmanager
async def open_nats_pubsub(credentials: dict[str, Any], renew: Renewer | None = None
                           ) -> AsyncIterator[NatsPubSub]:
    """Connect to the channel's NATS servers with hub-minted credentials; renew them if ``renew``."""
    thread = AsyncioThread("kachery-nats")
    try:
        client = NatsPubSub(thread, credentials, renew)
        try:
            await client.connect()
        except HubRequestError:
            raise
        except Exception as exc:  # nats-py raises its own types: say what failed, in our terms
            raise HubRequestError(502, "pubsub_unreachable",
                                  f"cannot connect to NATS {credentials.get('servers')}: {exc!r}") from exc
        try:
            async with trio.open_nursery() as nursery:
                if renew is not None:
                    nursery.start_soon(renew_before_expiry, lambda: client.credentials, client._renew_now)
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

"""One joined channel inside the daemon: credentials, pub-sub connection, bucket, membership.

:class:`ChannelRuntime` implements :class:`~kachery_node.daemon.channel_link.ChannelLink` for the
exchanges. Its :meth:`run` task (one per channel, in the daemon's nursery) loops forever:

1. fetch and verify the channel's signed membership feed from the hub (kachery_feeds), and
   work out this node's effective roles from it (not from what the hub says);
2. get a pub-sub token for exactly those roles' bands and connect; subscribe to the bands the
   roles listen on; the token is renewed in-band before it expires;
3. receive: every message is opened as a signed envelope (signature, channel, band, time,
   replay) and dropped unless its sender holds the role that publishes on that band in the
   verified membership; then it is handed to the exchanges;
4. meanwhile refresh the membership every :data:`MEMBERSHIP_REFRESH_SECONDS`, so a node removed
   from the channel stops being served quickly; when this node's own roles change (a grant, a
   revocation), reconnect at once with a token for them.

A publish waits for the connection (at most :data:`CONNECT_WAIT_SECONDS`): a request made while
the channel (re)connects, e.g. just after a grant, goes out once it is connected instead of
failing. A publish on a band this node has no role for first re-reads the membership (at most
every :data:`MEMBERSHIP_MIN_REFRESH_SECONDS`): a role granted a moment ago counts at once.

Any failure (hub, relay or network down) is logged and retried with exponential backoff
(:data:`BACKOFF_MAX_SECONDS`); after reconnecting, the exchanges' ``on_reconnect`` hooks catch
up on what was missed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import trio

import kachery_feeds as kf

from ..errors import HubRequestError, KacheryError, NotFoundError
from ..identity import Keypair
from ..protocol.membership import Membership, MembershipError
from ..protocol.node_messages import (
    Envelope,
    EnvelopeError,
    ReplayGuard,
    open_envelope,
    seal,
    seal_unsigned_push,
)
from ..protocol.roles import (
    band_name,
    flow_of,
    heard_pubsub_band,
    hears_own_messages,
    pubsub_band,
    role_of_pubsub_band,
    split_band_name,
)
from ..transport.bucket.bucket_interface import Bucket, Destination, UploadData
from ..transport.bucket.http_transfer import upload_size
from ..transport.bucket.open_bucket import bucket_spec, open_bucket
from ..transport.hub_client import HubClient
from ..transport.pubsub.open_pubsub import open_pubsub
from ..transport.pubsub.pubsub_interface import PubSubMessage
from ..transport.pubsub.websocket_client import WebSocketClosed, WebSocketHandshakeError
from .channel_link import BucketObjectMissing, InlineHandler, MessageHandler, ProgressCallback

log = logging.getLogger("kachery.channel")

MEMBERSHIP_REFRESH_SECONDS = 10.0
MEMBERSHIP_MIN_REFRESH_SECONDS = 1.0
REFUSED_SENDERS_KEPT = 1024  # senders remembered as refused after a refresh (see _may_after_refresh)
UPLOAD_URLS_PER_REQUEST = 500  # the hub accepts up to 1000 objects per upload_urls request
BACKOFF_MIN_SECONDS = 0.5
#: How long a publish waits for the channel to (re)connect before it fails.
CONNECT_WAIT_SECONDS = 10.0
BACKOFF_MAX_SECONDS = 30.0


class ChannelRuntime:
    """A joined channel, kept connected by :meth:`run`."""

    def __init__(
        self,
        *,
        channel: str,
        entry: dict[str, Any],
        node_key: Keypair,
        store: kf.Store,
        handlers: Mapping[str, MessageHandler],
        on_connected: Callable[[ChannelRuntime], Awaitable[None]] | None = None,
        inline_handlers: Mapping[str, InlineHandler] | None = None,
    ) -> None:
        self.channel = channel
        self.node_id = node_key.public_hex
        self.keypair = node_key
        self.hub_url: str = entry["hub_url"]
        self.hub_id: str = str(entry.get("hub_id", ""))
        self.membership_feed_id: str = entry["feed_id"]
        self.roles: frozenset[str] = frozenset()
        self.membership: Membership | None = None
        self.state = "starting"
        self.connected_since: float | None = None
        self._store = store
        self._handlers = handlers
        self._inline_handlers = inline_handlers or {}
        self._on_connected = on_connected
        self._hub = HubClient(self.hub_url, node_key=node_key)
        self._pubsub = None
        self._bucket: Bucket | None = None
        self._bucket_spec: dict[str, Any] | None = None
        self._replays = ReplayGuard()
        self._nursery: trio.Nursery | None = None  # the connected loop's, for _dispatch_at_once
        # A message went the queued way and the loop has not caught up with the queue since
        # (or it awaits a membership refresh): later ones queue behind it, in order.
        self._behind = False
        self._last_refresh = 0.0
        # sender -> when a refresh last left it without the role it published on (monotonic)
        self._refused_senders: dict[str, float] = {}
        self.connected = anyio.Event()  # set while connected; a fresh one after each disconnection
        self._connection_scope: trio.CancelScope | None = None  # of the current connection attempt
        self._connected_roles: frozenset[str] = frozenset()  # the roles that connection is for
        self._reconnect_now = False

    def describe(self) -> dict[str, Any]:
        """What ``kachery node status`` shows about this channel."""
        return {
            "name": self.channel,
            "hub": self.hub_url,
            "state": self.state,
            "roles": sorted(self.roles),
            "members": len(self.membership.nodes()) if self.membership else 0,
        }

    # ------------------------------------------------------------------ ChannelLink
    def may(self, node_id: str, role: str) -> bool:
        return self.membership is not None and self.membership.may(node_id, role)

    async def publish(self, band: str, body: dict[str, Any], *, attachment: bytes | None = None,
                      signed: bool = True) -> None:
        if band not in self.roles:
            await self.refresh_roles()  # granted a moment ago?
        if band not in self.roles:
            raise PermissionError(
                f"this node may not publish on {self.channel}/{band} "
                f"(its roles there: {' '.join(sorted(self.roles)) or 'none'})"
            )
        pubsub = await self._connected_pubsub()
        if signed:
            data = seal(self.keypair, channel=self.channel, band=band, body=body, now_ms=_wall_ms(),
                        attachment=attachment)
        else:
            data = seal_unsigned_push(band=band, body=body, attachment=attachment or b"")
        await pubsub.publish(band_name(self.channel, pubsub_band(band)), data)

    async def _connected_pubsub(self) -> Any:
        """The pub-sub connection, waiting for it (at most :data:`CONNECT_WAIT_SECONDS`) while
        the channel connects or reconnects."""
        if self._pubsub is None:
            with trio.move_on_after(CONNECT_WAIT_SECONDS):
                while self._pubsub is None:
                    await self.connected.wait()  # unset whenever _pubsub is None
        if self._pubsub is None:
            raise ConnectionError(f"channel {self.channel} did not connect within "
                                  f"{CONNECT_WAIT_SECONDS:g} s (now: {self.state})")
        return self._pubsub

    async def refresh_roles(self) -> frozenset[str]:
        """Re-read the membership now (unless it was read less than
        :data:`MEMBERSHIP_MIN_REFRESH_SECONDS` ago) and return this node's effective roles; if
        they changed, the channel reconnects at once with a token for them. For a request made
        just after a grant, before the periodic refresh saw it. A membership read less than
        that long ago may predate the grant: wait out the rest of the interval (under a second)
        rather than refuse a request the owner has just allowed."""
        since = time.monotonic() - self._last_refresh
        if since < MEMBERSHIP_MIN_REFRESH_SECONDS:
            await anyio.sleep(MEMBERSHIP_MIN_REFRESH_SECONDS - since)
        if time.monotonic() - self._last_refresh >= MEMBERSHIP_MIN_REFRESH_SECONDS:
            try:
                await self.refresh_membership()
            except (HubRequestError, KacheryError, OSError) as exc:
                log.info("%s: membership refresh failed: %s", self.channel, exc)
            self._reconnect_if_roles_changed()
        return self.roles

    def _reconnect_if_roles_changed(self) -> None:
        if self.membership is None or self.roles == self._connected_roles:
            return
        self.state = (f"reconnecting (this node's roles are now "
                      f"{' '.join(sorted(self.roles)) or 'none'})")
        self._reconnect_now = True
        if self._connection_scope is not None:
            self._connection_scope.cancel()

    def _require_bucket(self) -> Bucket:
        if self._bucket is None:
            raise ConnectionError(f"channel {self.channel} is not connected ({self.state})")
        return self._bucket

    async def bucket_head(self, path: str) -> int | None:
        info = await self._require_bucket().head(path)
        return None if info is None else info.size

    async def bucket_get(self, path: str, start: int | None = None, end: int | None = None) -> bytes:
        try:
            return await self._require_bucket().get(path, start, end)
        except NotFoundError:
            raise BucketObjectMissing(path) from None

    async def bucket_download(self, path: str, dest: Destination, progress: ProgressCallback | None = None,
                              *, start: int | None = None, end: int | None = None) -> int:
        try:
            return await self._require_bucket().download(path, dest, start=start, end=end,
                                                          progress=progress)
        except NotFoundError:
            raise BucketObjectMissing(path) from None

    def _relative(self, path: str) -> str:
        prefix = self.channel + "/"
        return path[len(prefix) :] if path.startswith(prefix) else path

    async def upload(
        self, path: str, data: UploadData, *, progress: ProgressCallback | None = None
    ) -> None:
        size = upload_size(data)
        (url,) = await trio.to_thread.run_sync(
            lambda: self._hub.upload_urls(self.channel, [{"path": self._relative(path), "size": size}])
        )
        await self._require_bucket().put(url, data, progress=progress)

    async def upload_many(self, items: list[tuple[str, bytes]], *, then: tuple[str, bytes] | None = None,
                          parallel: int = 8) -> None:
        """Upload several objects: one hub request for all their signed URLs, PUTs in parallel
        (a subfeed's segments: one round trip to the hub instead of one per segment); ``then``
        goes up once all of them are in (a head that must not point past its segments), its URL
        asked for in the same request."""
        bucket = self._require_bucket()
        limiter = trio.CapacityLimiter(parallel)
        everything = items + ([then] if then is not None else [])
        for start in range(0, len(everything), UPLOAD_URLS_PER_REQUEST):
            batch = everything[start : start + UPLOAD_URLS_PER_REQUEST]
            wanted = [{"path": self._relative(path), "size": len(data)} for path, data in batch]
            urls = await trio.to_thread.run_sync(self._hub.upload_urls, self.channel, wanted)
            last_url = None
            if then is not None and start + len(batch) == len(everything):
                last_url, batch = urls.pop(), batch[:-1]

            async def put(url: str, data: bytes) -> None:
                async with limiter:
                    await bucket.put(url, data)

            async with trio.open_nursery() as nursery:
                for (_path, data), url in zip(batch, urls, strict=True):
                    nursery.start_soon(put, url, data)
            if last_url is not None:
                assert then is not None
                await bucket.put(last_url, then[1])

    async def witness_request(self, type_: str, **fields: Any) -> dict[str, Any]:
        return await trio.to_thread.run_sync(
            lambda: self._hub.witness_request(type_, channel=self.channel, **fields))

    # ------------------------------------------------------------------ running
    async def refresh_membership(self) -> None:
        """Fetch new membership messages (verified into the local store) and recompute roles."""
        membership = await trio.to_thread.run_sync(
            self._hub.fetch_membership, self.channel, self._store, self.membership_feed_id
        )
        roles = frozenset(membership.roles_of(self.node_id))
        if roles != self.roles:
            log.info("%s: this node's roles are now %s", self.channel, " ".join(sorted(roles)) or "none")
        self.membership, self.roles = membership, roles
        self._last_refresh = time.monotonic()

    async def run(self) -> None:
        """Stay connected until cancelled, reconnecting with backoff."""
        backoff = BACKOFF_MIN_SECONDS
        while True:
            started = time.monotonic()
            self._reconnect_now = False
            try:
                with trio.CancelScope() as scope:
                    self._connection_scope = scope
                    await self._connect_and_serve()
            except* _RETRYABLE as group:
                # A failure inside the connection's nurseries (the relay going away, a failed
                # membership refresh) arrives wrapped in an ExceptionGroup: except* unwraps it.
                exc = _first_leaf(group)
                self.state = f"reconnecting ({type(exc).__name__}: {exc})"
                log.warning("%s: %s; retrying in %.1f s", self.channel, exc, backoff)
            finally:
                self._connection_scope = None
                self._disconnected()
            if self._reconnect_now:  # this node's roles changed: a token for them, at once
                backoff = BACKOFF_MIN_SECONDS
                continue
            if time.monotonic() - started > 60:
                backoff = BACKOFF_MIN_SECONDS  # it had been working: start over quickly
            await trio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)

    def _disconnected(self) -> None:
        """No pub-sub connection any more: say so everywhere at once (no checkpoint here), so
        that ``state`` never says "connected" while a publish would find no connection."""
        self._pubsub = None
        self.connected_since = None
        if self.connected.is_set():
            self.connected = anyio.Event()  # the next connection sets a fresh one
        if self.state == "connected":
            self.state = "reconnecting (the connection ended)"

    async def _connect_and_serve(self) -> None:
        self.state = "fetching membership"
        self._connected_roles = frozenset()
        await self.refresh_membership()
        self._connected_roles = self.roles
        info = await trio.to_thread.run_sync(self._hub.channel_info, self.channel)
        if self._bucket is None or bucket_spec(info) != self._bucket_spec:
            if self._bucket is not None:
                await self._bucket.aclose()  # the owner moved the channel's bucket
            self._bucket, self._bucket_spec = open_bucket(info), bucket_spec(info)
        if not self.roles:
            self.state = "no effective roles (ask the channel owner to grant some)"
            await trio.sleep(MEMBERSHIP_REFRESH_SECONDS)
            return
        self.state = "connecting to pub-sub"
        credentials = await trio.to_thread.run_sync(self._hub.pubsub_credentials, self.channel)

        async def renew() -> dict[str, Any]:
            return await trio.to_thread.run_sync(self._hub.pubsub_credentials, self.channel)

        async with open_pubsub(credentials, renew=renew) as pubsub:
            for role in sorted(self._connected_roles):
                await pubsub.subscribe(band_name(self.channel, heard_pubsub_band(role)),
                                       echo=hears_own_messages(role))
            if self.roles != self._connected_roles:  # changed meanwhile (refresh_roles)
                self._reconnect_if_roles_changed()
                return
            self._pubsub = pubsub
            self.state = "connected"
            self.connected_since = time.monotonic()
            log.info("%s: connected as %s", self.channel, " ".join(sorted(self.roles)))
            self.connected.set()
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._refresh_loop)
                    if self._on_connected is not None:
                        nursery.start_soon(self._on_connected, self)
                    self._nursery, self._behind = nursery, pubsub.queued() > 0
                    pubsub.handle_at_once = self._dispatch_at_once
                    async for message in pubsub.messages():
                        await self._dispatch(message, nursery)
                        if pubsub.queued() == 0:
                            self._behind = False  # all received so far is handled
                    raise ConnectionError("the relay closed the connection")
            finally:
                pubsub.handle_at_once = None
                self._nursery = None
                self._disconnected()

    async def _refresh_loop(self) -> None:
        while True:
            await trio.sleep(MEMBERSHIP_REFRESH_SECONDS)
            await self.refresh_membership()
            self._reconnect_if_roles_changed()  # for a token matching the new roles

    def _dispatch_at_once(self, message: PubSubMessage) -> bool:
        """The pub-sub client's :attr:`~.ReceivedQueue.handle_at_once`: what :meth:`_dispatch`
        does, in the client's reader task, for a message from a sender known to have its band's
        role (a live push is imported with no task switch to this runtime's loop). False, and
        the message goes the queued way, when the sender's roles must be read again first, or
        while a message that went that way is not handled yet (so order holds)."""
        nursery = self._nursery
        band = None
        if nursery is not None and not self._behind:
            try:
                band = role_of_pubsub_band(split_band_name(message.band, self.channel))
            except KacheryError:
                pass  # the queued way says why it is dropped
        if band is None or not self.may(message.sender, band):
            # Handed to the loop's waiting receive (or queued): whatever comes next must wait
            # for it, or it would be handled first.
            self._behind = True
            return False
        try:
            opened = self._open(message, band)
            if opened is not None:
                self._hand_over(band, opened, nursery)
        except Exception:  # never the reader's end: the message is lost, the connection is not
            log.exception("%s: handling a message from %s failed", self.channel, message.sender[:12])
        return True

    def _open(self, message: PubSubMessage, band: str) -> Envelope | None:
        """The message's envelope, opened and checked (its signer is the publisher the relay
        names; not a replay), or None (logged: dropped)."""
        try:
            now_ms = _wall_ms()
            env = open_envelope(message.data, channel=self.channel, band=band, now_ms=now_ms,
                                publisher=message.sender)
            if env.sender != message.sender:
                raise EnvelopeError(
                    f"relay says {message.sender[:12]}… sent a message signed by {env.sender[:12]}…"
                )
            self._replays.check(env, now_ms=now_ms)
        except KacheryError as exc:
            log.info("%s: dropped a message: %s", self.channel, exc)
            return None
        return env

    async def _dispatch(self, message: Any, nursery: trio.Nursery) -> None:
        """Open a received message, check it and its sender, and hand it to the one exchange of
        its band's flow (files, feeds or tasks), as a task of ``nursery``."""
        try:
            band = role_of_pubsub_band(split_band_name(message.band, self.channel))
        except KacheryError as exc:
            log.info("%s: dropped a message: %s", self.channel, exc)
            return
        env = self._open(message, band)
        if env is None:
            return
        if not self.may(env.sender, band):
            self._behind = True  # later messages queue behind this one meanwhile
            if not await self._may_after_refresh(env.sender, band):
                log.info("%s: dropped %s from %s: it may not publish on %s", self.channel,
                         env.type, env.sender[:12], band)
                return
        self._hand_over(band, env, nursery)

    def _hand_over(self, band: str, env: Envelope, nursery: trio.Nursery) -> None:
        """Give an opened message of a sender allowed on ``band`` to its flow's exchange: its
        inline handler if it takes it, else a task of ``nursery``."""
        handler = self._handlers.get(flow_of(band))
        if handler is None:
            log.info("%s: dropped %s on %s: no exchange here handles %s", self.channel, env.type,
                     band, flow_of(band))
            return
        inline = self._inline_handlers.get(flow_of(band))
        if inline is not None:
            try:
                if inline(self, band, env):
                    return
            except Exception:
                log.exception("%s: handler failed on %s from %s", self.channel, env.type, env.sender[:12])
                return
        # Each message is its own task: a slow upload must not hold up the next message.
        nursery.start_soon(_guarded, handler, self, band, env)

    async def _may_after_refresh(self, node_id: str, role: str) -> bool:
        """Re-read the membership and ask again: a node granted a role a moment ago must not
        wait for the periodic refresh. A read less than :data:`MEMBERSHIP_MIN_REFRESH_SECONDS`
        ago may predate the grant, so the rest of that interval is waited out first (under a
        second; the messages behind this one wait too, in order), as :meth:`refresh_roles` does.
        A sender still refused after that is refused at once until the next periodic refresh:
        a member the pub-sub service still lets publish after a revocation costs the channel
        at most one such wait per :data:`MEMBERSHIP_REFRESH_SECONDS`."""
        refused_at = self._refused_senders.get(node_id)
        if refused_at is not None and time.monotonic() - refused_at < MEMBERSHIP_REFRESH_SECONDS:
            return False
        since = time.monotonic() - self._last_refresh
        if since < MEMBERSHIP_MIN_REFRESH_SECONDS:
            await anyio.sleep(MEMBERSHIP_MIN_REFRESH_SECONDS - since)
        try:
            if time.monotonic() - self._last_refresh >= MEMBERSHIP_MIN_REFRESH_SECONDS:
                await self.refresh_membership()
        except (HubRequestError, KacheryError, OSError) as exc:
            log.info("%s: membership refresh failed: %s", self.channel, exc)
            return False
        if self.may(node_id, role):
            self._refused_senders.pop(node_id, None)
            return True
        if len(self._refused_senders) >= REFUSED_SENDERS_KEPT:
            self._refused_senders.clear()  # (bounded: a few refusals more are waited for again)
        self._refused_senders[node_id] = time.monotonic()
        return False

    async def aclose(self) -> None:
        if self._bucket is not None:
            await self._bucket.aclose()
        self._hub.close()


#: Failures of the hub, relay or network: logged, then retried with backoff.
_RETRYABLE = (
    HubRequestError,
    KacheryError,
    OSError,
    WebSocketHandshakeError,  # (HubRequestErrors: listed to say that the relay's are retried)
    WebSocketClosed,
    trio.TooSlowError,
    kf.FeedError,
    MembershipError,
)


def _wall_ms() -> int:
    """The wall clock in ms, for signed messages' ``time_ms`` (they are compared across nodes)."""
    return int(time.time() * 1000)


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


async def _guarded(handler: MessageHandler, link: ChannelRuntime, band: str, env: Any) -> None:
    try:
        await handler(link, band, env)
    except Exception:
        log.exception("%s: handler failed on %s from %s", link.channel, env.type, env.sender[:12])

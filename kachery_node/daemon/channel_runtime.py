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
   from the channel stops being served quickly.

Any failure (hub, relay or network down) is logged and retried with exponential backoff
(:data:`BACKOFF_MAX_SECONDS`); after reconnecting, the exchanges' ``on_reconnect`` hooks catch
up on what was missed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import trio
import trio_websocket

import kachery_feeds as kf

from ..errors import KacheryError, NotFoundError
from ..identity import Keypair
from ..protocol.channel_errors import HubRequestError
from ..protocol.membership import Membership, MembershipError
from ..protocol.node_messages import EnvelopeError, ReplayGuard, open_envelope, seal
from ..protocol.roles import ROLE_BANDS, band_name, split_band_name
from ..transport.bucket.direct_get import DirectGet, DirectGetUnsupported
from ..transport.bucket.http_bucket import HttpBucket
from ..transport.bucket.open_bucket import open_bucket
from ..transport.hub_client import HubClient
from ..transport.pubsub.open_pubsub import open_pubsub
from ..transport.tls import require_secure_url, ssl_context
from .channel_link import BucketObjectMissing, MessageHandler, ProgressCallback

log = logging.getLogger("kachery.channel")

MEMBERSHIP_REFRESH_SECONDS = 10.0
MEMBERSHIP_MIN_REFRESH_SECONDS = 1.0
UPLOAD_URLS_PER_REQUEST = 500  # the hub accepts up to 1000 objects per upload_urls request
BACKOFF_MIN_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 30.0
HTTP_TIMEOUT = httpx.Timeout(60.0, connect=10.0)

# "requestFiles" -> "request-files": the exchanges name bands after the role publishing on them.
_ROLE_OF_BAND = {bands[0]: role for role, bands in ROLE_BANDS.items()}


class ChannelRuntime:
    """A joined channel, kept connected by :meth:`run`."""

    def __init__(
        self,
        *,
        channel: str,
        entry: dict[str, Any],
        node_key: Keypair,
        store: kf.Store,
        handlers: list[MessageHandler],
        on_connected: Callable[[ChannelRuntime], Awaitable[None]] | None = None,
    ) -> None:
        self.channel = channel
        self.node_id = node_key.public_hex
        self.keypair = node_key
        self.hub_url: str = entry["hub_url"]
        self.membership_feed_id: str = entry["feed_id"]
        self.roles: frozenset[str] = frozenset()
        self.membership: Membership | None = None
        self.state = "starting"
        self.connected_since: float | None = None
        self._store = store
        self._handlers = handlers
        self._on_connected = on_connected
        self._hub = HubClient(self.hub_url, node_key=node_key)
        self._pubsub = None
        self._bucket: HttpBucket | None = None
        self._http = httpx.AsyncClient(timeout=HTTP_TIMEOUT, verify=ssl_context())
        self._replays = ReplayGuard()
        self._last_refresh = 0.0
        self.connected = anyio.Event()

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

    async def publish(self, band: str, body: dict[str, Any]) -> None:
        if band not in self.roles:
            raise PermissionError(
                f"this node may not publish on {self.channel}/{band} "
                f"(its roles there: {' '.join(sorted(self.roles)) or 'none'})"
            )
        if self._pubsub is None:
            raise ConnectionError(f"channel {self.channel} is not connected ({self.state})")
        data = seal(self.keypair, channel=self.channel, band=band, body=body)
        await self._pubsub.publish(band_name(self.channel, ROLE_BANDS[band][0]), data.decode())

    def _require_bucket(self) -> HttpBucket:
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

    async def bucket_download(self, path: str, dest: Path, progress: ProgressCallback | None = None) -> int:
        url = self._require_bucket().url(path)
        try:
            return await self._direct_download(url, path, dest, progress)
        except DirectGetUnsupported as why:
            log.debug("downloading %s with httpx: %s", path, why)
        return await self._httpx_download(url, path, dest, progress)

    async def _direct_download(self, url: str, path: str, dest: Path,
                               progress: ProgressCallback | None) -> int:
        """The download off the socket in a worker thread (transport/bucket/direct_get.py: a third of
        httpx's CPU for large objects). Raises DirectGetUnsupported before writing anything."""
        get = DirectGet(url, connect_timeout=HTTP_TIMEOUT.connect or 10.0,
                        read_timeout=HTTP_TIMEOUT.read or 60.0)
        write_blocking = getattr(dest, "write_blocking", None)
        out = None if write_blocking is not None else open(dest, "xb")  # noqa: SIM115 (closed below)
        report = None
        if progress is not None:
            def report(done: int, total: int) -> None:  # in the worker thread
                trio.from_thread.run_sync(progress, done, total)
        try:
            try:
                return await trio.to_thread.run_sync(get.run, write_blocking or out.write, report,
                                                     abandon_on_cancel=True)
            except BaseException:
                get.abort()  # the abandoned thread neither writes nor reports any more
                raise
        except NotFoundError:
            raise BucketObjectMissing(path) from None
        except DirectGetUnsupported:
            if out is not None:
                out.close()
                os.unlink(dest)  # empty: the fallback creates it again
                out = None
            raise
        finally:
            if out is not None:
                out.close()

    async def _httpx_download(self, url: str, path: str, dest: Path,
                              progress: ProgressCallback | None) -> int:
        done = 0
        async with self._http.stream("GET", url) as resp:
            if resp.status_code == 404:
                raise BucketObjectMissing(path)
            if resp.status_code >= 400:
                raise HubRequestError(resp.status_code, "http_error", f"GET {path}: HTTP {resp.status_code}")
            total = int(resp.headers.get("content-length", 0))
            # A sink that takes the bytes itself (files_partial.ChunkSink: a chunk written to
            # its place in the file being fetched, hashed as it streams, in a worker thread).
            write_piece = getattr(dest, "write_piece", None)
            if write_piece is not None:
                async for chunk in resp.aiter_bytes(1 << 20):
                    await write_piece(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
                return done
            with open(dest, "xb") as f:
                async for chunk in resp.aiter_bytes(1 << 20):
                    f.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
        return done

    def _relative(self, path: str) -> str:
        prefix = self.channel + "/"
        return path[len(prefix) :] if path.startswith(prefix) else path

    async def upload(
        self, path: str, data: bytes | Path, *, progress: ProgressCallback | None = None
    ) -> None:
        size = len(data) if isinstance(data, bytes) else Path(data).stat().st_size
        (url,) = await trio.to_thread.run_sync(
            lambda: self._hub.upload_urls(self.channel, [{"path": self._relative(path), "size": size}])
        )
        await self._put(url, path, data, size, progress)

    async def upload_many(self, items: list[tuple[str, bytes]], *, parallel: int = 8) -> None:
        """Upload several objects: one hub request for all their signed URLs, PUTs in parallel
        (a subfeed's segments: one round trip to the hub instead of one per segment)."""
        limiter = trio.CapacityLimiter(parallel)
        for start in range(0, len(items), UPLOAD_URLS_PER_REQUEST):
            batch = items[start : start + UPLOAD_URLS_PER_REQUEST]
            wanted = [{"path": self._relative(path), "size": len(data)} for path, data in batch]
            urls = await trio.to_thread.run_sync(self._hub.upload_urls, self.channel, wanted)

            async def put(url: str, path: str, data: bytes) -> None:
                async with limiter:
                    await self._put(url, path, data, len(data), None)

            async with trio.open_nursery() as nursery:
                for (path, data), url in zip(batch, urls, strict=True):
                    nursery.start_soon(put, url, path, data)

    async def _put(
        self, url: str, path: str, data: bytes | Path, size: int, progress: ProgressCallback | None
    ) -> None:
        require_secure_url(url, "a signed upload")  # before connecting (embedded bucket: the hub's URL)
        # Streamed in 1 MiB pieces either way, so progress (and stall detection) is live.
        content = (
            _file_chunks(Path(data), size, progress)
            if isinstance(data, Path)
            else _byte_chunks(data, progress)
        )
        resp = await self._http.put(
            url,
            content=content,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
        )
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
                raise HubRequestError(resp.status_code, err["code"], err["message"])
            except (ValueError, KeyError, TypeError):
                raise HubRequestError(
                    resp.status_code, "http_error", f"PUT {path}: HTTP {resp.status_code}"
                ) from None

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
            try:
                await self._connect_and_serve()
            except* _RETRYABLE as group:
                # A failure inside the connection's nurseries (the relay going away, a failed
                # membership refresh) arrives wrapped in an ExceptionGroup: except* unwraps it.
                exc = _first_leaf(group)
                self.state = f"reconnecting ({type(exc).__name__}: {exc})"
                log.warning("%s: %s; retrying in %.1f s", self.channel, exc, backoff)
            finally:
                self._pubsub = None
                self.connected_since = None
                if self.connected.is_set():
                    self.connected = anyio.Event()  # the next connection sets a fresh one
            if time.monotonic() - started > 60:
                backoff = BACKOFF_MIN_SECONDS  # it had been working: start over quickly
            await trio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)

    async def _connect_and_serve(self) -> None:
        self.state = "fetching membership"
        await self.refresh_membership()
        info = await trio.to_thread.run_sync(self._hub.channel_info, self.channel)
        if self._bucket is None or self._bucket.base_url != info["bucket_url"].rstrip("/"):
            self._bucket = open_bucket(info, self._http)
        if not self.roles:
            self.state = "no effective roles (ask the channel owner to grant some)"
            await trio.sleep(MEMBERSHIP_REFRESH_SECONDS)
            return
        self.state = "connecting to pub-sub"
        credentials = await trio.to_thread.run_sync(self._hub.pubsub_credentials, self.channel)

        async def renew() -> dict[str, Any]:
            return await trio.to_thread.run_sync(self._hub.pubsub_credentials, self.channel)

        async with open_pubsub(credentials, renew=renew) as pubsub:
            for role in sorted(self.roles):
                await pubsub.subscribe(band_name(self.channel, ROLE_BANDS[role][1]))
            self._pubsub = pubsub
            self.state = "connected"
            self.connected_since = time.monotonic()
            log.info("%s: connected as %s", self.channel, " ".join(sorted(self.roles)))
            self.connected.set()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._refresh_loop, nursery.cancel_scope)
                if self._on_connected is not None:
                    nursery.start_soon(self._on_connected, self)
                async for message in pubsub.messages():
                    await self._dispatch(message, nursery)
                raise ConnectionError("the relay closed the connection")

    async def _refresh_loop(self, scope: trio.CancelScope) -> None:
        while True:
            await trio.sleep(MEMBERSHIP_REFRESH_SECONDS)
            before = self.roles
            await self.refresh_membership()
            if self.roles != before:
                scope.cancel()  # reconnect, for a token matching the new roles
                return

    async def _dispatch(self, message: Any, nursery: trio.Nursery) -> None:
        try:
            short = split_band_name(message.band, self.channel)
            band = _ROLE_OF_BAND[short]
            if not isinstance(message.data, str):
                raise EnvelopeError("message data is not a string")
            env = open_envelope(message.data.encode(), channel=self.channel, band=band)
            if env.sender != message.sender:
                raise EnvelopeError(
                    f"relay says {message.sender[:12]}… sent a message signed by {env.sender[:12]}…"
                )
            self._replays.check(env)
        except (EnvelopeError, KacheryError, KeyError) as exc:
            log.info("%s: dropped a message: %s", self.channel, exc)
            return
        if not self.may(env.sender, band) and not await self._may_after_refresh(env.sender, band):
            log.info(
                "%s: dropped %s from %s: it may not publish on %s",
                self.channel,
                env.type,
                env.sender[:12],
                band,
            )
            return
        for handler in self._handlers:
            # Each handler runs as its own task: a slow upload must not hold up the next message.
            nursery.start_soon(_guarded, handler, self, band, env)

    async def _may_after_refresh(self, node_id: str, role: str) -> bool:
        """Re-read the membership (at most every MEMBERSHIP_MIN_REFRESH_SECONDS) and ask again:
        a node granted a role a moment ago must not wait for the periodic refresh."""
        now = time.monotonic()
        if now - self._last_refresh < MEMBERSHIP_MIN_REFRESH_SECONDS:
            return False
        try:
            await self.refresh_membership()
        except (HubRequestError, KacheryError, OSError) as exc:
            log.info("%s: membership refresh failed: %s", self.channel, exc)
            return False
        return self.may(node_id, role)

    async def aclose(self) -> None:
        await self._http.aclose()
        self._hub.close()


#: Failures of the hub, relay or network: logged, then retried with backoff.
_RETRYABLE = (
    HubRequestError,
    KacheryError,
    OSError,
    trio_websocket.HandshakeError,
    trio_websocket.ConnectionClosed,
    trio.TooSlowError,
    kf.FeedError,
    MembershipError,
    httpx.HTTPError,
)


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


async def _guarded(handler: MessageHandler, link: ChannelRuntime, band: str, env: Any) -> None:
    try:
        await handler(link, band, env)
    except Exception:
        log.exception("%s: handler failed on %s from %s", link.channel, env.type, env.sender[:12])


async def _byte_chunks(data: bytes, progress: ProgressCallback | None):
    view = memoryview(data)
    for pos in range(0, len(data), 1 << 20):
        piece = view[pos : pos + (1 << 20)]
        yield bytes(piece)
        if progress:
            progress(pos + len(piece), len(data))
    if not data and progress:
        progress(0, 0)


async def _file_chunks(path: Path, size: int, progress: ProgressCallback | None):
    done = 0
    with open(path, "rb") as f:
        while chunk := await trio.to_thread.run_sync(f.read, 1 << 20):
            done += len(chunk)
            if progress:
                progress(done, size)
            yield chunk

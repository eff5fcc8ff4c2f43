"""Feeds across nodes: following remote subfeeds and providing local ones (spec/node-protocol.md §Feeds).

Theory of operation
-------------------
*Reader* (a node following a subfeed it does not own):

1. **Catch up from the bucket**: read the subfeed's head, download the full segments it lacks,
   then the tail, importing everything through ``add_signed_messages`` (verified).
2. **Subscribe** on ``request-feeds``: ``subscribeToSubfeed {feed_id, subfeed_hash, position}``.
   The subscription is renewed every :data:`RENEW_SECONDS` for as long as the subfeed is
   followed (the original let a subscription die if its first one was missed; §10.17).
3. **Receive** on ``provide-feeds``: ``newSubfeedMessages`` carries signed messages inline (one
   hop from the owner's append); ``subfeedUploaded`` says the bucket has caught up to a count.
   Anything that does not chain onto the local end (a gap) sends the reader back to step 1.

*Provider* (the owner, or any node with verified copies and the provide-feeds role):

* on ``subscribeToSubfeed`` from a node allowed to request feeds: remember the subscription
  for :data:`SUBSCRIPTION_TTL_SECONDS`; if the reader is behind, send what it lacks: inline if
  small, otherwise upload segments and head to the bucket and announce ``subfeedUploaded``;
* whenever the local subfeed grows, push the new messages inline to every live subscription and,
  debounced, bring the bucket's segments and head up to date for later readers;
* when a channel (re)connects, bring the bucket up to date for every live subscription there
  and announce ``subfeedUploaded``: a reader that missed pushes while the provider, the relay or
  itself was away catches up now, not at its next renewal. Subscriptions are saved to a file so
  that a restarted provider still knows them.

Every message is verified by kachery_feeds before it is stored; a fork raises ForkError, whose
proof is recorded in the store and logged.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import orjson

import kachery_feeds as kf

from ..protocol import feed_bucket
from ..protocol.bucket_layout import SEGMENT_SIZE, subfeed_head_path, subfeed_segment_path
from ..protocol.node_messages import Envelope
from .channel_link import BucketObjectMissing, ChannelLink
from .store_changes import ChangeBroadcaster

log = logging.getLogger("kachery.feeds")

RENEW_SECONDS = 20.0
SUBSCRIPTION_TTL_SECONDS = 60.0
INLINE_MAX_MESSAGES = 200
INLINE_MAX_BYTES = 40_000  # the embedded relay refuses messages over 64 KiB by default
BUCKET_DEBOUNCE_SECONDS = 0.5
CATCH_UP_TIMEOUT_SECONDS = 60.0
REJECTED_RETRY_SECONDS = 1.0  # after rejecting bucket data, before the next attempt
REPAIR_MIN_INTERVAL_SECONDS = 10.0  # a provider re-uploads a subfeed's bucket copy at most this often
SEGMENT_DOWNLOADS_AHEAD = 4


def _key(feed_id: str, subfeed_hash: str) -> tuple[str, str]:
    return feed_id, subfeed_hash


@dataclass
class _Incoming:
    """A reader's subscription to a subfeed we provide, on one channel."""

    link: ChannelLink
    feed_id: str
    subfeed_hash: str
    pushed: int  # messages [0, pushed) are known to the channel (sent or in the bucket)
    expires: float


@dataclass
class _Followed:
    """A remote subfeed this node follows, on the channels it was asked on."""

    feed_id: str
    subfeed_hash: str
    links: list[ChannelLink] = field(default_factory=list)
    #: channel -> event set when that channel's follower should catch up now (not at renewal)
    nudges: dict[str, anyio.Event] = field(default_factory=dict)

    def nudge(self, channel: str | None = None) -> None:
        for name, event in self.nudges.items():
            if channel in (None, name):
                event.set()


class FeedExchange:
    """Follows remote subfeeds and provides local ones over the daemon's channels."""

    def __init__(
        self, store: kf.Store, changes: ChangeBroadcaster, subscriptions_path: Path | None = None
    ) -> None:
        self.store = store
        self.changes = changes
        self._incoming: dict[tuple[str, str, str], _Incoming] = {}  # (channel, feed, subfeed)
        # Where live subscriptions are saved (None: not saved), and the saved ones not yet
        # attached to a connected channel: key -> wall-clock expiry.
        self._subscriptions_path = subscriptions_path
        self._saved: dict[tuple[str, str, str], float] = self._load_subscriptions()
        self._followed: dict[tuple[str, str], _Followed] = {}
        self._bucket_dirty: dict[tuple[str, str, str], ChannelLink] = {}
        self._bucket_locks: dict[tuple[str, str, str], anyio.Lock] = {}
        self._repaired: dict[tuple[str, str, str], float] = {}  # -> when last re-uploaded
        self._task_group: anyio.abc.TaskGroup | None = None

    # ------------------------------------------------------------------ lifecycle
    async def run(self, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        """Push new local messages to subscribers until cancelled."""
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            task_status.started()
            tg.start_soon(self._push_loop)
            tg.start_soon(self._bucket_loop)

    # ------------------------------------------------------------------ reader side
    def follow(self, links: Iterable[ChannelLink], feed_id: str, subfeed_hash: str) -> None:
        """Start following a remote subfeed on ``links`` (idempotent; keeps running)."""
        key = _key(feed_id, subfeed_hash)
        followed = self._followed.get(key)
        new = followed is None
        if new:
            followed = self._followed[key] = _Followed(feed_id, subfeed_hash)
        for link in links:
            if all(link.channel != existing.channel for existing in followed.links):
                followed.links.append(link)
                assert self._task_group is not None, "FeedExchange.run() must be running"
                self._task_group.start_soon(self._follow_on, followed, link)

    def followed(self) -> list[tuple[str, str]]:
        return list(self._followed)

    def on_reconnect(self, link: ChannelLink) -> None:
        """A channel came (back) up: every follower on it catches up and re-subscribes now, and
        every live subscription there hears how far its subfeed goes."""
        for followed in self._followed.values():
            followed.nudge(link.channel)
        if self._task_group is not None:
            self._task_group.start_soon(self._announce, link)

    async def _follow_on(self, followed: _Followed, link: ChannelLink) -> None:
        """Catch up from the bucket, then keep a subscription alive on one channel."""
        if "request-feeds" not in link.roles:
            log.warning(
                "cannot follow %s on %s: this node lacks the request-feeds role",
                followed.feed_id[:12],
                link.channel,
            )
            return
        subfeed = self.store.load_feed(followed.feed_id).load_subfeed("~" + followed.subfeed_hash)
        while True:
            # Made before catching up, so a nudge that arrives meanwhile is not lost.
            nudge = followed.nudges[link.channel] = anyio.Event()
            rejected = await self._catch_up_from_bucket(link, subfeed) is None
            try:
                await link.publish(
                    "request-feeds",
                    {
                        "type": "subscribeToSubfeed",
                        "feed_id": followed.feed_id,
                        "subfeed_hash": followed.subfeed_hash,
                        "position": subfeed.get_num_local_messages(),
                        # Ask providers to upload the bucket's copy again from our position.
                        **({"bucket_rejected": True} if rejected else {}),
                    },
                )
            except Exception as exc:  # the runtime reconnects; we try again at the next renewal
                log.info("subscribe on %s failed (%s); retrying", link.channel, exc)
            with anyio.move_on_after(RENEW_SECONDS):
                await nudge.wait()

    async def _catch_up_from_bucket(self, link: ChannelLink, subfeed: kf.Subfeed) -> int | None:
        """Import what the channel's bucket has beyond the local end; returns how many were new,
        or None if the bucket's data was rejected (bad signature or chain, malformed head)."""
        try:
            with anyio.fail_after(CATCH_UP_TIMEOUT_SECONDS):
                raw = await link.bucket_get(
                    subfeed_head_path(link.channel, subfeed.feed_id, subfeed.subfeed_hash)
                )
                head = feed_bucket.parse_head(raw)
                local = subfeed.get_num_local_messages()
                if head.count <= local:
                    return 0
                importer = feed_bucket.SegmentImporter(subfeed)
                await _download_and_import(
                    link, subfeed, feed_bucket.segments_to_download(local, head), importer
                )
                importer.add_lines(head.tail)
                added = importer.finish()
                if added:
                    log.info(
                        "imported %d messages of %s from the %s bucket", added, subfeed.uri, link.channel
                    )
                return added
        except BucketObjectMissing:
            return 0
        except kf.ForkError as exc:
            log.error("FORK in %s: %s", subfeed.uri, exc)
        except (kf.VerificationError, feed_bucket.HeadError, kf.MissingMessagesError) as exc:
            log.warning("rejected bucket data for %s on %s: %s", subfeed.uri, link.channel, exc)
            # Providers replace it when our next subscription says so; until then, do not spin.
            await anyio.sleep(REJECTED_RETRY_SECONDS)
            return None
        except TimeoutError:
            log.warning("catching up %s from the %s bucket timed out", subfeed.uri, link.channel)
        except Exception as exc:  # transport errors: the next renewal retries
            log.info("bucket read for %s on %s failed: %s", subfeed.uri, link.channel, exc)
        return 0

    # ------------------------------------------------------------------ message handling
    async def on_message(self, link: ChannelLink, band: str, env: Envelope) -> None:
        """Handle a verified envelope from ``band`` of ``link``'s channel."""
        if band not in ("request-feeds", "provide-feeds"):
            return  # file and task messages reach every exchange; they are not ours to judge
        body = env.body
        kind = body.get("type")
        feed_id, subfeed_hash = body.get("feed_id"), body.get("subfeed_hash")
        try:
            feed_id = kf.normalize_feed_id(feed_id)
            if not isinstance(subfeed_hash, str):
                raise kf.InvalidUriError("missing subfeed_hash")
            subfeed_hash = kf.subfeed_hash("~" + subfeed_hash)
        except kf.InvalidUriError as exc:
            log.info("ignoring %s from %s: %s", kind, env.sender[:12], exc)
            return
        if band == "request-feeds" and kind == "subscribeToSubfeed":
            await self._on_subscribe(link, env, feed_id, subfeed_hash)
        elif band == "provide-feeds" and kind == "newSubfeedMessages":
            await self._on_new_messages(link, env, feed_id, subfeed_hash)
        elif band == "provide-feeds" and kind == "subfeedUploaded":
            followed = self._followed.get(_key(feed_id, subfeed_hash))
            count = body.get("count")
            if followed and type(count) is int:
                sf = self.store.load_feed(feed_id).load_subfeed("~" + subfeed_hash)
                if count > sf.get_num_local_messages():
                    followed.nudge(link.channel)

    async def _on_new_messages(
        self, link: ChannelLink, env: Envelope, feed_id: str, subfeed_hash: str
    ) -> None:
        followed = self._followed.get(_key(feed_id, subfeed_hash))
        if followed is None:
            return  # not following it (any more)
        lines = env.body.get("messages")
        if not isinstance(lines, list) or not lines or not all(isinstance(x, str) for x in lines):
            log.info("malformed newSubfeedMessages from %s", env.sender[:12])
            return
        sf = self.store.load_feed(feed_id).load_subfeed("~" + subfeed_hash)
        try:
            sf.add_signed_messages([x.encode() for x in lines])
        except kf.MissingMessagesError:
            followed.nudge(link.channel)  # a gap: fill it from the bucket, then re-subscribe
        except kf.ForkError as exc:
            log.error("FORK in %s reported by %s: %s", sf.uri, env.sender[:12], exc)
        except kf.VerificationError as exc:
            log.warning("rejected messages for %s from %s: %s", sf.uri, env.sender[:12], exc)

    async def _on_subscribe(self, link: ChannelLink, env: Envelope, feed_id: str, subfeed_hash: str) -> None:
        if "provide-feeds" not in link.roles:
            return
        if not link.may(env.sender, "request-feeds"):
            log.info(
                "ignoring subscription from %s: not allowed to request feeds on %s",
                env.sender[:12],
                link.channel,
            )
            return
        position = env.body.get("position")
        if type(position) is not int or position < 0:
            return
        sf = self.store.load_feed(feed_id).load_subfeed("~" + subfeed_hash)
        count = sf.get_num_local_messages()
        if env.body.get("bucket_rejected") is True and position < count:
            await self._repair_bucket(link, sf, position, env.sender)
        if count == 0 and not self.store.has_private_key(feed_id):
            return  # a replica with nothing to provide; the owner keeps even an empty subscription
        key = (link.channel, feed_id, subfeed_hash)
        incoming = self._incoming.get(key)
        expires = time.monotonic() + SUBSCRIPTION_TTL_SECONDS
        if incoming is None:
            incoming = self._incoming[key] = _Incoming(link, feed_id, subfeed_hash, count, expires)
        incoming.expires = expires
        self._save_subscriptions()
        if position < count:
            if count - position <= INLINE_MAX_MESSAGES:
                await self._push(incoming, sf, position, count)
            else:
                await self._update_bucket(link, sf)
                await link.publish(
                    "provide-feeds",
                    {
                        "type": "subfeedUploaded",
                        "feed_id": feed_id,
                        "subfeed_hash": subfeed_hash,
                        "count": count,
                    },
                )
        incoming.pushed = max(incoming.pushed, count)
        self._bucket_dirty[key] = link

    # ------------------------------------------------------------------ provider side
    async def _announce(self, link: ChannelLink) -> None:
        """Update the bucket and publish ``subfeedUploaded`` for each live subscription on
        ``link``'s channel (including those saved by a previous run of the daemon)."""
        now_wall, now = time.time(), time.monotonic()
        for key, expires_wall in list(self._saved.items()):
            if key[0] == link.channel:
                del self._saved[key]
                if expires_wall > now_wall and key not in self._incoming:
                    _channel, feed_id, subfeed_hash = key
                    sf = self.store.load_feed(feed_id).load_subfeed("~" + subfeed_hash)
                    count = sf.get_num_local_messages()
                    self._incoming[key] = _Incoming(
                        link, feed_id, subfeed_hash, count, now + expires_wall - now_wall
                    )
        for key, incoming in list(self._incoming.items()):
            if key[0] != link.channel or incoming.expires < now:
                continue
            incoming.link = link
            sf = self.store.load_feed(incoming.feed_id).load_subfeed("~" + incoming.subfeed_hash)
            count = sf.get_num_local_messages()
            if count == 0:
                continue
            try:
                await self._update_bucket(link, sf)
                await link.publish(
                    "provide-feeds",
                    {
                        "type": "subfeedUploaded",
                        "feed_id": incoming.feed_id,
                        "subfeed_hash": incoming.subfeed_hash,
                        "count": count,
                    },
                )
                incoming.pushed = max(incoming.pushed, count)
            except Exception as exc:  # the readers' renewals re-sync them
                log.info("announcing %s on %s failed: %s", sf.uri, link.channel, exc)

    def _load_subscriptions(self) -> dict[tuple[str, str, str], float]:
        if self._subscriptions_path is None:
            return {}
        try:
            rows = json.loads(self._subscriptions_path.read_text())
            return {(r["channel"], r["feed_id"], r["subfeed_hash"]): float(r["expires"]) for r in rows}
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError) as exc:
            log.error("ignoring unreadable %s: %s", self._subscriptions_path, exc)
            return {}

    def _save_subscriptions(self) -> None:
        if self._subscriptions_path is None:
            return
        offset = time.time() - time.monotonic()
        expiries = dict(self._saved)
        expiries.update({key: inc.expires + offset for key, inc in self._incoming.items()})
        rows = [
            {"channel": c, "feed_id": f, "subfeed_hash": s, "expires": round(e, 3)}
            for (c, f, s), e in expiries.items()
            if e > time.time()
        ]
        tmp = Path(str(self._subscriptions_path) + ".tmp")
        try:
            tmp.write_text(json.dumps(rows))
            os.replace(tmp, self._subscriptions_path)
        except OSError as exc:
            log.warning("could not save subscriptions to %s: %s", self._subscriptions_path, exc)

    async def _push(self, incoming: _Incoming, sf: kf.Subfeed, start: int, end: int) -> None:
        """Publish messages [start, end) inline, split to respect the size limit."""
        batch: list[str] = []
        size = 0
        for line in sf.get_signed_messages(start, end):
            text = line.decode()
            batch.append(text)
            size += len(text)
            # Cut only after a signed message: a piece must verify on its own.
            full = size >= INLINE_MAX_BYTES or len(batch) >= INLINE_MAX_MESSAGES
            if full and batch_ends_signed(batch):
                await self._publish_messages(incoming, batch)
                batch, size = [], 0
        if batch:  # ranges from get_signed_messages always end signed
            await self._publish_messages(incoming, batch)

    async def _publish_messages(self, incoming: _Incoming, batch: list[str]) -> None:
        body = {
            "type": "newSubfeedMessages",
            "feed_id": incoming.feed_id,
            "subfeed_hash": incoming.subfeed_hash,
            "messages": batch,
        }
        if len(orjson.dumps(body)) > INLINE_MAX_BYTES + 8_000:
            # Too big for one pub-sub message (e.g. one huge batch): announce the bucket instead.
            sf = self.store.load_feed(incoming.feed_id).load_subfeed("~" + incoming.subfeed_hash)
            await self._update_bucket(incoming.link, sf)
            await incoming.link.publish(
                "provide-feeds",
                {
                    "type": "subfeedUploaded",
                    "feed_id": incoming.feed_id,
                    "subfeed_hash": incoming.subfeed_hash,
                    "count": sf.get_num_local_messages(),
                },
            )
            return
        await incoming.link.publish("provide-feeds", body)

    async def _push_loop(self) -> None:
        """Push new local messages to every live subscription as soon as they are committed."""
        while True:
            changed = self.changes.current()
            now = time.monotonic()
            for key, incoming in list(self._incoming.items()):
                if incoming.expires < now:
                    del self._incoming[key]
                    continue
                sf = self.store.load_feed(incoming.feed_id).load_subfeed("~" + incoming.subfeed_hash)
                count = sf.get_num_local_messages()
                if count > incoming.pushed:
                    start, incoming.pushed = incoming.pushed, count
                    try:
                        await self._push(incoming, sf, start, count)
                    except Exception as exc:  # the reader's next renewal re-syncs it
                        log.info("push to %s failed: %s", incoming.link.channel, exc)
                    self._bucket_dirty[key] = incoming.link
            with anyio.move_on_after(1.0):
                await changed.wait()

    async def _bucket_loop(self) -> None:
        """Bring bucket segments and heads up to date, debounced, for subscribed subfeeds."""
        while True:
            await anyio.sleep(BUCKET_DEBOUNCE_SECONDS)
            dirty, self._bucket_dirty = self._bucket_dirty, {}
            for (_channel, feed_id, subfeed_hash), link in dirty.items():
                sf = self.store.load_feed(feed_id).load_subfeed("~" + subfeed_hash)
                try:
                    await self._update_bucket(link, sf)
                except Exception as exc:
                    log.info("bucket update of %s on %s failed: %s", sf.uri, link.channel, exc)

    async def _repair_bucket(self, link: ChannelLink, sf: kf.Subfeed, position: int, reporter: str) -> None:
        """Upload the full segments from ``position`` on, and the head, again: a reader rejected
        the bucket's copy (tampered or damaged). At most once per REPAIR_MIN_INTERVAL_SECONDS."""
        key = (link.channel, sf.feed_id, sf.subfeed_hash)
        now = time.monotonic()
        if now - self._repaired.get(key, -REPAIR_MIN_INTERVAL_SECONDS) < REPAIR_MIN_INTERVAL_SECONDS:
            return
        self._repaired[key] = now
        log.warning("%s rejected the %s bucket's copy of %s: uploading it again from message %d",
                    reporter[:12], link.channel, sf.uri, position)
        async with self._bucket_locks.setdefault(key, anyio.Lock()):
            count, head = feed_bucket.head_for(sf)
            segments = [
                (
                    subfeed_segment_path(link.channel, sf.feed_id, sf.subfeed_hash, i),
                    feed_bucket.segment_for(sf, i),
                )
                for i in range(position // SEGMENT_SIZE, count // SEGMENT_SIZE)
            ]
            try:
                if segments:
                    await link.upload_many(segments)
                await link.upload(subfeed_head_path(link.channel, sf.feed_id, sf.subfeed_hash), head)
            except Exception as exc:
                log.info("repairing %s on %s failed: %s", sf.uri, link.channel, exc)

    async def _update_bucket(self, link: ChannelLink, sf: kf.Subfeed) -> None:
        """Upload missing full segments, then the head (so the head never points past segments).
        A head that claims our count but differs from ours (tampered, or truncated) is replaced."""
        key = (link.channel, sf.feed_id, sf.subfeed_hash)
        lock = self._bucket_locks.setdefault(key, anyio.Lock())
        async with lock:
            head_path = subfeed_head_path(link.channel, sf.feed_id, sf.subfeed_hash)
            bucket_head = b""
            try:
                bucket_head = await link.bucket_get(head_path)
                bucket_count = feed_bucket.parse_head(bucket_head).count
            except (BucketObjectMissing, feed_bucket.HeadError):
                bucket_count = 0
            count, head = feed_bucket.head_for(sf)
            if count == 0 or count < bucket_count or (count == bucket_count and bucket_head == head):
                return
            if count == bucket_count:
                log.warning("replacing a bad head of %s in the %s bucket", sf.uri, link.channel)
            segments = [
                (
                    subfeed_segment_path(link.channel, sf.feed_id, sf.subfeed_hash, i),
                    feed_bucket.segment_for(sf, i),
                )
                for i in feed_bucket.segments_to_upload(count, bucket_count)
            ]
            if segments:
                await link.upload_many(segments)
            await link.upload(head_path, head)


async def _download_and_import(
    link: ChannelLink, subfeed: kf.Subfeed, indices: range, importer: feed_bucket.SegmentImporter
) -> None:
    """Download segments a few at a time ahead of the import, and import them in order in a
    worker thread, so that network waits overlap verification and the event loop stays free."""
    results: dict[int, anyio.Event | bytes] = {i: anyio.Event() for i in indices}
    slots = anyio.Semaphore(SEGMENT_DOWNLOADS_AHEAD)

    async def download(index: int) -> None:
        path = subfeed_segment_path(link.channel, subfeed.feed_id, subfeed.subfeed_hash, index)
        data = await link.bucket_get(path)
        done = results[index]
        results[index] = data
        assert isinstance(done, anyio.Event)
        done.set()

    async def feed_downloads(tg: anyio.abc.TaskGroup) -> None:
        for index in indices:
            await slots.acquire()  # released once that segment is imported
            tg.start_soon(download, index)

    async with anyio.create_task_group() as tg:
        tg.start_soon(feed_downloads, tg)
        for index in indices:
            pending = results[index]
            if isinstance(pending, anyio.Event):
                await pending.wait()
            data = results.pop(index)
            assert isinstance(data, bytes)
            await anyio.to_thread.run_sync(importer.add_segment, data)
            slots.release()


def batch_ends_signed(batch: list[str]) -> bool:
    """Whether the last wire line of ``batch`` carries a signature (so the piece verifies alone)."""
    return bool(batch) and not batch[-1].endswith("\t")

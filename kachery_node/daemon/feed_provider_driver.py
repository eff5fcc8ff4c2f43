"""Drives :class:`~kachery_node.protocol.feed_provider.FeedProvider`: serves other nodes'
subscriptions to subfeeds held here, with the channels' links and the feed store.

What happens when is the core's business (kachery_node/protocol/feed_provider.py); this module
reads the store (counts, message ranges, segments, heads) and tells the core, waits for store
changes and the core's deadlines (anyio, ``anyio.current_time()`` as the core's clock), and
carries out its actions: inline pushes in order by the task that caused them, bucket jobs as
tasks of their own (a slow upload holds up no push), saving subscriptions to their file. It also
expands the node's publications (whole feeds into their subfeeds, on the channels that are up)
and hands them to the core, which keeps their bucket copies current.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc

import kachery_feeds as kf
from kachery_feeds.watch import ChangeWatcher

from ..feed_publications import Publication
from ..protocol import feed_bucket
from ..protocol.bucket_layout import SEGMENT_SIZE
from ..protocol.feed_messages import (
    NewSubfeedMessages,
    ProviderAction,
    Publish,
    PushRange,
    ReadBucketState,
    Report,
    SaveSubscriptions,
    SubfeedOnChannel,
    SubscribeToSubfeed,
    SubscribeToSubfeeds,
    UploadSegments,
)
from ..protocol.feed_provider import INLINE_MAX_MESSAGES, FeedProvider, InlineSplitter, Subfeed, TooBigToPush
from .channel_link import BucketObjectMissing, ChannelLink
from .provided_subscriptions import ProvidedSubscriptions
from .store_changes import ChangeBroadcaster

log = logging.getLogger("kachery.feeds")

#: Called (as a task of its own) after a bucket job wrote a head: (link, subfeed, its count).
HeadUploaded = Callable[[ChannelLink, SubfeedOnChannel, int], Awaitable[None]]
#: Called at once after a range was pushed inline: (link, subfeed, its end). It must not block
#: (it starts a task itself if it has work: most pushes need none, and a task each cost time).
Pushed = Callable[[ChannelLink, SubfeedOnChannel, int], None]

STORE_RECHECK_SECONDS = 1.0  # look for store changes at least this often, even without an event
#: Counts are re-read only when the store's data_version moved (:class:`StoreVersion`), and at
#: least this often anyway: reading N counts every second cost O(N) CPU at rest.
FULL_RECOUNT_SECONDS = 30.0
SUBFEED_OBJECTS_KEPT = 4096  # kf.Subfeed handles kept for reuse (dropped all at once beyond)
# A feed with at most this many provided subfeeds has their counts read by primary key (a few
# µs each, those of all such feeds in one statement: Store.counts); more, in one query over the
# feed (list_subfeeds: ~30 µs however few).
COUNTS_ONE_BY_ONE = 8
SEGMENTS_PER_UPLOAD = 8  # segments built and uploaded together (one request for their URLs)
#: Bucket jobs doing I/O at once: 10,000 new subscriptions must not become 10,000 concurrent
#: requests to the hub (the rest wait their turn; pushes never wait for this).
BUCKET_JOBS_AT_ONCE = 16


class StoreVersion:
    """Whether anything was committed to the feed store since the last look, in O(1): SQLite's
    ``PRAGMA data_version`` on a connection of our own, which changes with every commit made by
    any other connection (other processes', and this daemon's own store connection)."""

    def __init__(self, path) -> None:
        try:
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                path, timeout=30, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:  # then every look says "changed"
            log.info("cannot watch %s's data_version (%s): re-reading counts every time", path, exc)
            self._conn = None

    def current(self) -> object:
        """A value that differs from the last one returned if the store changed since."""
        if self._conn is None:
            return object()
        try:
            return self._conn.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:
            return object()


class ProviderDriver:
    """Provides local subfeeds to the subscribers on the daemon's channels."""

    def __init__(self, store: kf.Store, changes: ChangeBroadcaster, subscriptions_path: Path | None,
                 on_head_uploaded: HeadUploaded | None = None, on_pushed: Pushed | None = None) -> None:
        self.store = store
        self._on_head_uploaded = on_head_uploaded  # e.g. get the checkpoint witnessed
        self._on_pushed = on_pushed  # a range was pushed inline: (link, subfeed, its end)
        self.changes = changes
        self._saved = ProvidedSubscriptions(subscriptions_path)
        self.core = FeedProvider(self._saved.load())
        self._links: dict[str, ChannelLink] = {}  # channel -> its current link
        self._task_group: anyio.abc.TaskGroup | None = None
        self._wait: anyio.CancelScope | None = None  # the store watch's wait, while it waits
        self._idle = False  # that wait does not watch the store: nothing is provided
        self._publications: list[Publication] = []
        self._bucket_slots = anyio.CapacityLimiter(BUCKET_JOBS_AT_ONCE)
        self._version = StoreVersion(store.path)
        self._counted: tuple[object, float] | None = None  # (data_version, when) of the last counts
        self._held: dict[str, tuple[object, dict[str, int]]] = {}  # feed -> (data_version, counts)
        self._witness_slots = anyio.CapacityLimiter(BUCKET_JOBS_AT_ONCE)
        self._subfeed_objects: dict[Subfeed, kf.Subfeed] = {}

    async def run(self, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        """Push new local messages and keep bucket copies up to date until cancelled."""
        # A kernel watch of its own: a commit then wakes this task itself, ~30 µs sooner than
        # through the daemon's broadcaster (whose task would wake first, then wake this one),
        # and every live push starts here. Without one (no inotify, or the per-user limit of
        # instances reached) it waits on the broadcaster like every other reader.
        with self.store.watcher() as watcher:
            await self._watch(watcher, task_status)

    async def _watch(self, watcher: ChangeWatcher, task_status: anyio.abc.TaskStatus) -> None:
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            task_status.started()
            own = watcher.uses_inotify
            commit_seen = False  # the last wait ended with the store's watch reporting a commit
            while True:
                # Taken before reading, so no change is missed: the broadcaster's event, or the
                # watch's queue (a commit from now on leaves an event there; one from before
                # costs at most one turn that finds nothing new).
                changed = None if own else self.changes.current()
                now = anyio.current_time()
                # New messages go out first: the bucket work that publications and on_timer
                # start (HTTP to the hub, segments built in a thread) must not delay a push.
                # The version is read before the counts, so no commit is missed; after a commit
                # the watch reported the counts are read anyway, without it (one statement
                # less before a live push), and the next turn woken otherwise counts again.
                version = object() if commit_seen else self._version.current()
                if self._counted is None or version != self._counted[0] or \
                        now >= self._counted[1] + FULL_RECOUNT_SECONDS:
                    self._counted = (version, now)
                    await self._carry_out(self.core.on_local_counts(now, self._counts(self.core.subfeeds())))
                await self._carry_out(self._update_published(now))
                await self._carry_out(self.core.on_timer(now))
                due = self.core.next_deadline()
                deadline = min(math.inf if due is None else due, now + STORE_RECHECK_SECONDS)
                # Nothing provided (a node that only reads): its own imports need not wake this
                # loop; a subscription (on_subscribe), publication or reconnect ends the wait.
                self._idle = not (self.core.has_work() or self._publications)
                commit_seen = False
                with anyio.CancelScope(deadline=deadline) as self._wait:
                    if self._idle:
                        await anyio.sleep_forever()
                    elif changed is None:
                        commit_seen = await watcher.wait_async(None)
                    else:
                        await changed.wait()
                self._wait = None

    def set_publications(self, publications: Iterable[Publication]) -> None:
        """The node's publications changed (``<storage>/published-feeds.json``): taken up at the
        store watch's next turn, which this wakes."""
        self._publications = list(publications)
        if self._wait is not None:
            self._wait.cancel()

    def _update_published(self, now: float) -> list[ProviderAction]:
        """Expand the publications into subfeeds on channels that are up (a whole feed: each
        subfeed it has now, so one created later is taken up at the next turn) and hand them to
        the core."""
        if not self._publications and not self.core.published():
            return []
        wheres: list[SubfeedOnChannel] = []
        for pub in self._publications:
            if pub.channel not in self._links or not self.store.has_private_key(pub.feed_id):
                continue  # not connected (yet); or a feed that is not ours (deleted since)
            hashes = ([pub.subfeed_hash] if pub.subfeed_hash is not None
                      else self.store.load_feed(pub.feed_id).get_subfeed_hashes())
            wheres += [SubfeedOnChannel(pub.channel, pub.feed_id, h) for h in hashes]
        counts = self._counts({w.subfeed for w in wheres})
        return self.core.set_published(now, wheres, counts)

    # ------------------------------------------------------------------ events from the exchange
    async def on_subscribe(self, link: ChannelLink, sender: str,
                           message: SubscribeToSubfeed | SubscribeToSubfeeds) -> None:
        """A reader's subscription to one subfeed, or to several of one feed (their local
        counts read in one query)."""
        self._links[link.channel] = link
        singles = message.each() if isinstance(message, SubscribeToSubfeeds) else [message]
        actions = self.core.on_subscribe_many(
            anyio.current_time(), time.time(), link.channel, sender, singles,
            may_provide="provide-feeds" in link.roles,
            sender_allowed=link.may(sender, "request-feeds"),
            local_counts=self._counts({(m.feed_id, m.subfeed_hash) for m in singles}),
            owns_feed=self.store.has_private_key(message.feed_id),
        )
        self._deadline_may_have_moved()
        if self._idle and self._wait is not None:
            self._wait.cancel()  # the store watch has a subscription to watch for now
        await self._carry_out(actions)

    def on_connected(self, link: ChannelLink) -> None:
        """``link``'s channel came (back) up: announce how far each live subscription there goes,
        and bring the bucket copies of the subfeeds published there up to date."""
        self._links[link.channel] = link
        if self._wait is not None:
            self._wait.cancel()  # a publication on this channel may wait for it: take it up now
        counts = self._counts(self.core.subfeeds(link.channel))
        actions = self.core.on_connected(anyio.current_time(), time.time(), link.channel, counts,
                                         may_provide="provide-feeds" in link.roles)
        self._deadline_may_have_moved()
        if actions:
            assert self._task_group is not None, "FeedExchange.run() must be running"
            self._task_group.start_soon(self._carry_out, actions)

    # ------------------------------------------------------------------ carrying out actions
    async def _carry_out(self, actions: Iterable[ProviderAction]) -> None:
        for action in actions:
            if isinstance(action, Report):
                log.log(action.severity, "%s", action.text)
            elif isinstance(action, Publish):
                await self._publish(action)
            elif isinstance(action, PushRange):
                await self._push(action)
            elif isinstance(action, ReadBucketState | UploadSegments):
                assert self._task_group is not None, "FeedExchange.run() must be running"
                self._task_group.start_soon(self._bucket_job, action)
            elif isinstance(action, SaveSubscriptions):
                self._saved.save(action)
            else:
                raise AssertionError(f"unexpected provider action {action!r}")

    async def _publish(self, action: Publish, *, signed: bool = True) -> bool:
        link = self._links[action.channel]
        try:
            await link.publish(action.band, action.message.to_body(),
                               attachment=action.message.attachment(), signed=signed)
            return True
        except Exception as exc:  # the readers' renewals re-sync them
            log.info("publishing %s on %s failed: %s", type(action.message).__name__, link.channel, exc)
            return False

    async def _push(self, action: PushRange) -> None:
        """Publish messages [start, end) inline, read a window at a time and cut by the core; a
        piece too big for pub-sub hands the rest of the range to the bucket."""
        where = action.where
        subfeed = self._subfeed(where.subfeed)
        splitter = InlineSplitter(where.feed_id, where.subfeed_hash)
        position = action.start
        while position < action.end:
            # A range read is extended to end at a signed message, so it may run past the window.
            lines = subfeed.get_signed_messages(position, min(position + INLINE_MAX_MESSAGES, action.end))
            if not lines:
                break
            position += len(lines)
            if not await self._publish_pieces(where, splitter.add(lines), action.signed):
                return
        if not await self._publish_pieces(where, splitter.finish(), action.signed):
            return
        if self._on_pushed is not None:
            self._on_pushed(self._links[where.channel], where, position)

    async def _publish_pieces(self, where: SubfeedOnChannel,
                              pieces: list[NewSubfeedMessages | TooBigToPush], signed: bool = True) -> bool:
        """Publish pieces in order; False if the rest of their range should not follow."""
        for piece in pieces:
            if isinstance(piece, TooBigToPush):
                await self._carry_out(self.core.on_push_oversized(anyio.current_time(), where))
                self._deadline_may_have_moved()
                return False
            if not await self._publish(Publish(where.channel, piece), signed=signed):
                return False  # the reader's next renewal re-syncs it
        return True

    async def _bucket_job(self, action: ReadBucketState | UploadSegments) -> None:
        """One step of a bucket job; the core's answer may start the next."""
        where, link = action.where, self._links[action.where.channel]
        subfeed = self._subfeed(where.subfeed)
        async with self._bucket_slots:
            try:
                if isinstance(action, ReadBucketState) and action.known_count is not None:
                    count = subfeed.get_num_local_messages()
                    plan = feed_bucket.plan_from_count(count, action.known_count)
                elif isinstance(action, ReadBucketState):
                    try:
                        bucket_head: bytes | None = await link.bucket_get(where.head_path)
                    except BucketObjectMissing:
                        bucket_head = None
                    # Reading up to 999 messages into the local head, and parsing the bucket's
                    # (~0.5 MB each), is milliseconds of CPU: off the loop that pushes.
                    count, plan = await anyio.to_thread.run_sync(_plan_from_head, subfeed, bucket_head)
                else:
                    await _upload_segments(link, subfeed, action, self._on_progress)
                    if self._on_head_uploaded is not None:
                        assert self._task_group is not None
                        self._task_group.start_soon(self._head_uploaded, link, where, action.head_count)
            except Exception as exc:  # transport errors; PermissionError without provide-feeds
                answer = self.core.on_bucket_failed(anyio.current_time(), where,
                                                    f"{type(exc).__name__}: {exc}")
            else:
                now = anyio.current_time()
                if isinstance(action, ReadBucketState):
                    answer = self.core.on_bucket_planned(now, where, plan, count)
                else:
                    answer = self.core.on_bucket_done(now, where)
        await self._carry_out(answer)

    async def _head_uploaded(self, link: ChannelLink, where: SubfeedOnChannel, count: int) -> None:
        """Tell ``on_head_uploaded`` (the witness), a bounded number at a time like the jobs."""
        assert self._on_head_uploaded is not None
        async with self._witness_slots:
            await self._on_head_uploaded(link, where, count)

    async def _on_progress(self, where: SubfeedOnChannel, count: int) -> None:
        """A provisional head for ``count`` messages is in the bucket."""
        await self._carry_out(self.core.on_bucket_progress(anyio.current_time(), where, count))

    # ------------------------------------------------------------------ helpers
    def _subfeed(self, subfeed: Subfeed) -> kf.Subfeed:
        """The store's handle of ``subfeed``, reused (making one costs more than the count query
        a push needs)."""
        handle = self._subfeed_objects.get(subfeed)
        if handle is None:
            if len(self._subfeed_objects) >= SUBFEED_OBJECTS_KEPT:
                self._subfeed_objects.clear()
            feed_id, subfeed_hash = subfeed
            handle = self._subfeed_objects[subfeed] = self.store.load_feed(feed_id).load_subfeed(
                "~" + subfeed_hash)
        return handle

    def _counts(self, subfeeds: Iterable[Subfeed]) -> dict[Subfeed, int]:
        """Local counts: those of the feeds with few provided subfeeds in one statement (per 64
        subfeeds), each other feed's in one query. This runs after every commit and every second
        (the store watch's safety re-check) for every provided subfeed, so N subscriptions must
        not cost N queries."""
        by_feed: dict[str, list[str]] = defaultdict(list)
        for feed_id, subfeed_hash in subfeeds:
            by_feed[feed_id].append(subfeed_hash)
        few = [(feed_id, h) for feed_id, hashes in by_feed.items() if len(hashes) <= COUNTS_ONE_BY_ONE
               for h in hashes]
        counts: dict[Subfeed, int] = self.store.counts(few) if few else {}
        for feed_id, hashes in by_feed.items():
            if len(hashes) <= COUNTS_ONE_BY_ONE:
                continue
            version = self._version.current()
            cached = self._held.get(feed_id)
            if cached is not None and cached[0] == version:  # nothing committed since: still true
                held = cached[1]  # (a renewal of N subfeeds: N/500 messages, one read)
            else:
                listed = self.store.load_feed(feed_id).list_subfeeds()
                held = {s["subfeed_hash"]: s["num_messages"] for s in listed}
                self._held[feed_id] = (version, held)
            counts.update(((feed_id, h), held.get(h, 0)) for h in hashes)
        return counts

    def _deadline_may_have_moved(self) -> None:
        """Wake the store watch early if the core's next deadline is now sooner than its wait."""
        deadline = self.core.next_deadline()
        if self._wait is not None and deadline is not None and deadline < self._wait.deadline:
            self._wait.deadline = deadline


@dataclass
class _Window:
    """Segments ``indices``, built, and the provisional head that may follow them (None: none)."""

    indices: range
    segments: list[bytes]
    head: tuple[int, bytes] | None


def _plan_from_head(subfeed: kf.Subfeed, bucket_head: bytes | None) -> tuple[int, feed_bucket.BucketPlan]:
    """(local count, the plan from the bucket's head and the local one at that count)."""
    count, local_head = feed_bucket.head_for(subfeed)
    return count, feed_bucket.plan_bucket_update(count, local_head, bucket_head)


def upload_windows(indices: range) -> list[range]:
    """``indices`` cut into upload windows of 1, 2, 4 … :data:`SEGMENTS_PER_UPLOAD` segments."""
    windows, first, size = [], indices.start, 1
    while first < indices.stop:
        windows.append(range(first, min(first + size, indices.stop)))
        first, size = windows[-1].stop, min(size * 2, SEGMENTS_PER_UPLOAD)
    return windows


async def _upload_segments(link: ChannelLink, subfeed: kf.Subfeed, action: UploadSegments,
                           on_progress: Callable[[SubfeedOnChannel, int], Awaitable[None]] | None = None
                           ) -> None:
    """Upload the action's segments a window at a time (:func:`upload_windows`: the first one is
    in the bucket soon); then the head (so the head never points past its segments).

    Each window is built from the store in a worker thread while the one before it uploads, so
    building and uploading overlap and memory holds at most two windows, whatever the subfeed's
    length. With ``action.provisional_heads``, after each window but the last a head for the
    messages up to the last signed one uploaded goes up too (its URL asked for with the
    window's), and ``on_progress`` hears its count: readers import while later windows are
    built."""
    where, windows = action.where, upload_windows(action.segments)
    send, receive = anyio.create_memory_object_stream[_Window](0)

    async def build_all() -> None:
        async with send:
            for batch in windows:
                # Blocks (holding this window) until the uploader has taken the one before.
                await send.send(await anyio.to_thread.run_sync(_build_window, subfeed, action, batch))

    async with anyio.create_task_group() as tg, receive:
        tg.start_soon(build_all)
        async for window in receive:
            items = [(where.segment_path(i), data) for i, data in zip(window.indices, window.segments,
                                                                       strict=True)]
            head = window.head
            await link.upload_many(items, then=None if head is None else (where.head_path, head[1]))
            del items, window
            if head is not None and on_progress is not None:
                await on_progress(where, head[0])
    head_bytes = await anyio.to_thread.run_sync(feed_bucket.head_at, subfeed, action.head_count)
    await link.upload(where.head_path, head_bytes)


def _build_window(subfeed: kf.Subfeed, action: UploadSegments, indices: range) -> _Window:
    """The segments ``indices`` and, with provisional heads and more to come, the head for the
    messages up to the last signed one among them (in a worker thread)."""
    built = [feed_bucket.segment_for(subfeed, i) for i in indices]
    head = None
    if action.provisional_heads and indices.stop < action.segments.stop:
        count = feed_bucket.signed_count_in_segment(built[-1], indices[-1])
        # At least the first segment's end: the bucket's own head was below it (the plan
        # starts at the segment holding it), so a provisional head never rolls it back.
        if count is not None and (action.segments.start + 1) * SEGMENT_SIZE <= count < action.head_count:
            head = (count, feed_bucket.head_at(subfeed, count))
    return _Window(indices, built, head)

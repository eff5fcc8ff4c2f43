"""The provider's side of the feed flow as a state machine: every subscription to subfeeds that
this node provides, on every channel, and the bucket copies that serve later readers.

Theory of operation (spec/node-protocol.md §Feeds, "Provider")
---------------------------------------------------------------
* On ``subscribeToSubfeed`` from a node allowed to request feeds, a provider that holds the
  subfeed (or owns its feed, even while it is empty) keeps the subscription for
  :data:`SUBSCRIPTION_TTL_SECONDS`; renewals extend it. If the reader is behind by at most
  :data:`INLINE_MAX_MESSAGES`, the missing messages are pushed inline (:class:`PushRange`),
  except, for a ``renewal``, those that went out to the channel in the last
  :data:`REPUSH_GRACE_SECONDS` (it crossed pushes in flight);
  otherwise the bucket is brought up to date and ``subfeedUploaded`` announced.
* Whenever the local subfeed grows (the driver reports local counts), the new messages are
  pushed inline to every live subscription, cut by :class:`InlineSplitter` into pieces of at
  most :data:`INLINE_MAX_BYTES` or :data:`INLINE_MAX_MESSAGES`, each ending at a signed message
  so it verifies alone; a piece that cannot be cut small enough goes, with the rest of its
  range, through the bucket instead (``on_push_oversized``). The bucket is brought up to date
  for later readers, debounced by :data:`BUCKET_DEBOUNCE_SECONDS`.
* A *bucket job* (one per subfeed and channel, never two at once) reads the bucket's head and
  uploads the full segments the bucket lacks, then the head, so the head never points past its
  segments (:func:`plan_bucket_update`). A long upload also writes provisional heads as it goes
  (each a valid prefix ending at a signed message), and a job that announces publishes
  ``subfeedUploaded`` for each (``on_bucket_progress``), so readers import while it builds.
  A head that claims our count but differs from ours (tampered, or truncated) is replaced.
  Requests that arrive while a job runs are merged into the next one.
* A subscription with ``bucket_rejected`` (at most once per :data:`REPAIR_MIN_INTERVAL_SECONDS`
  per subfeed and channel) rewrites the segments from the reader's position and the head,
  without trusting what the bucket holds.
* A *published* subfeed (:meth:`FeedProvider.set_published`: the owner asked for its bucket copy
  to be kept current, ``kachery feed publish``) behaves, for the bucket, as if a reader were
  always subscribed: when it is published, when its channel (re)connects and after each growth
  (debounced) its bucket copy is brought up to date; nothing is pushed inline for it (readers
  who subscribe get their pushes as usual).
* The feed's owner answers a subscription of a reader that holds every message, once the bucket
  is known to hold them too, with ``subfeedsHeld`` (one per subscription message, for all of
  its subfeeds due; each subfeed at most once per :data:`HELD_MIN_INTERVAL_SECONDS` per
  channel, for every reader at once): the readers' periodic bucket re-read, a safety net for
  pushes lost while no provider answered, is not needed while the owner says this.
* Live subscriptions are saved (:class:`SaveSubscriptions`, wall-clock expiries) whenever one
  is made or renewed (at most once per :data:`SAVE_MIN_INTERVAL_SECONDS`; a save writes only
  the subscriptions made or renewed since the last one, and drops the expired); when a
  channel (re)connects, those saved by a previous run are taken up again, and for
  each live one there the bucket is brought up to date and ``subfeedUploaded`` announced, so a
  reader that missed pushes catches up now, not at its next renewal.

Rules
-----
* One object for all conversations: subscriptions of many readers to one subfeed share the
  debounced bucket job and the repair rate limit, and a reconnect concerns all of a channel's
  subscriptions at once, so they are decided together.
* No I/O and no clock: events carry ``now`` (monotonic seconds) and, where subscriptions are
  saved or restored, ``wall_now``; the driver reads the store and reports counts and heads.
* Segments are named by index ranges (:class:`UploadSegments`): the driver builds each one from
  the store as it uploads it, so nothing holds every missing segment in memory at once.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .bucket_layout import SEGMENT_SIZE
from .feed_bucket import BucketPlan, plan_bucket_update, plan_from_count
from .feed_messages import (
    SUBSCRIBE_MANY_MAX,
    FeedProtocolMisuse,
    NewSubfeedMessages,
    ProviderAction,
    ProviderConnected,
    Publish,
    PushRange,
    ReadBucketState,
    Report,
    SavedSubscription,
    SaveSubscriptions,
    Severity,
    SubfeedOnChannel,
    SubfeedsHeld,
    SubfeedUploaded,
    SubscribeToSubfeed,
    UploadSegments,
)

SUBSCRIPTION_TTL_SECONDS = 60.0
INLINE_MAX_MESSAGES = 200
INLINE_MAX_BYTES = 40_000  # the embedded relay refuses messages over 64 KiB by default
INLINE_MAX_BODY_BYTES = INLINE_MAX_BYTES + 8_000  # a piece over this goes through the bucket
BUCKET_DEBOUNCE_SECONDS = 0.5
#: A bucket copy this provider found at a count (by reading its head) is then brought up to
#: date this many times from what the provider itself wrote there, without reading the head
#: again: under steady appends every debounce interval updates it, and reading a head whose
#: tail holds up to 999 messages (~0.5 MB) and building the local one to compare cost both the
#: hub and the provider milliseconds of their event loops each time, while pushes wait. The
#: next update after that many reads the head again (another node may have rewritten it); a
#: failed job, a reader's rejection of the copy (repair) or the end of the subfeed's last
#: subscription make the next one read it at once.
BUCKET_UPDATES_TRUSTED = 60
REPAIR_MIN_INTERVAL_SECONDS = 10.0
#: A *renewal* (``SubscribeToSubfeed.renewal``: the reader kept its subscription without a gap
#: since the last one) whose missing messages all went out to the channel this recently is not
#: pushed them again: it crossed the pushes in flight, and a re-push would reach every
#: subscriber (N renewals crossing pushes made N^2 deliveries). A reader that lost them sees a
#: gap at the next push, catches up and subscribes without ``renewal`` (always pushed); on a
#: quiet subfeed its next renewal, after this grace, gets the push. 2 s was too short on a loaded
#: machine (bench_fanout, N = 200: a push took over 2 s to reach the last reader, and renewals
#: that crossed it re-pushed it to all); a lost push on a quiet subfeed waits at most this much
#: longer for its renewal.
REPUSH_GRACE_SECONDS = 5.0
#: The owner says ``subfeedsHeld`` of a subfeed on a channel at most this often: well within the
#: readers' BUCKET_RECHECK_SECONDS (300), so that one lost message does not cost a re-read, and
#: rarely enough that N followed subfeeds cost about N/500 messages per this interval.
HELD_MIN_INTERVAL_SECONDS = 100.0
#: Subscriptions are saved at most this often (0: at every subscription and renewal, the
#: default: 5 s made a provider killed a few seconds after a reader (re)subscribed forget it at
#: restart, so the reader waited for its next renewal; tests/network/test_faults.py). A save
#: writes only what changed since the last one (a renewal of many subfeeds: one save).
SAVE_MIN_INTERVAL_SECONDS = 0.0

Subfeed = tuple[str, str]  # (feed ID, subfeed hash)


class BucketJobState(enum.Enum):
    IDLE = "idle"
    READING = "reading the bucket's head"
    UPLOADING = "uploading"


class BucketStep(enum.Enum):
    SYNC = "sync"
    REPAIR = "repair"
    UP_TO_DATE = "up to date"
    UPLOAD = "upload"
    DONE = "done"
    FAILED = "failed"


BUCKET_TRANSITIONS: dict[tuple[BucketJobState, BucketStep], BucketJobState] = {
    (BucketJobState.IDLE, BucketStep.SYNC): BucketJobState.READING,
    (BucketJobState.IDLE, BucketStep.REPAIR): BucketJobState.UPLOADING,
    (BucketJobState.READING, BucketStep.UP_TO_DATE): BucketJobState.IDLE,
    (BucketJobState.READING, BucketStep.UPLOAD): BucketJobState.UPLOADING,
    (BucketJobState.READING, BucketStep.FAILED): BucketJobState.IDLE,
    (BucketJobState.UPLOADING, BucketStep.DONE): BucketJobState.IDLE,
    (BucketJobState.UPLOADING, BucketStep.FAILED): BucketJobState.IDLE,
}


@dataclass
class _BucketJob:
    """The bucket copy of one subfeed on one channel: the job running and the ones asked for."""

    state: BucketJobState = BucketJobState.IDLE
    sync_wanted: bool = False
    announce_wanted: bool = False
    repair_wanted: tuple[int, int] | None = None  # (reader's position, our count)
    announce: bool = False  # the running job publishes subfeedUploaded when done
    count: int = 0  # what the running upload brings the bucket to
    read_head: bool = False  # the running job planned from the bucket's head (not from trust)

    def move(self, step: BucketStep) -> None:
        try:
            self.state = BUCKET_TRANSITIONS[(self.state, step)]
        except KeyError:
            raise FeedProtocolMisuse(f"bucket job: {step.value!r} cannot happen while "
                                     f"{self.state.value}") from None


@dataclass
class _Subscription:
    pushed: int  # messages [0, pushed) are known to the channel (pushed, or in the bucket)
    expires: float  # monotonic
    #: Pushes carry an envelope signature until then (monotonic): a reader that did not say it
    #: takes unsigned pushes subscribed less than a TTL ago (or, restored from the saved
    #: subscriptions, it is not known what they said).
    signed_until: float = math.inf
    #: (time, start) of each push of the last :data:`REPUSH_GRACE_SECONDS`, oldest first. Each
    #: push reached ``pushed`` as it was then, and the later ones go on from there, so together
    #: they cover [the least start, pushed).
    recent: deque[tuple[float, int]] = field(default_factory=deque)

    def pushed_range(self, now: float, start: int) -> None:
        self.recent.append((now, start))
        self._forget_before(now - REPUSH_GRACE_SECONDS)

    def pushed_lately(self, now: float, position: int) -> bool:
        """Whether [position, pushed) went out in the last :data:`REPUSH_GRACE_SECONDS`."""
        self._forget_before(now - REPUSH_GRACE_SECONDS)
        return bool(self.recent) and min(start for _, start in self.recent) <= position

    def _forget_before(self, cutoff: float) -> None:
        while self.recent and self.recent[0][0] < cutoff:
            self.recent.popleft()


# ----------------------------------------------------------------------------- inline pushes
@dataclass(frozen=True)
class TooBigToPush:
    """A piece of ``lines`` wire lines that no cut brings under the pub-sub size limit."""

    lines: int


class InlineSplitter:
    """Cuts a contiguous run of wire lines (fed in order, in any slices) into inline pushes.

    A piece is cut once it holds :data:`INLINE_MAX_BYTES` or :data:`INLINE_MAX_MESSAGES`, but
    only after a signed message (a line not ending in TAB), so each piece verifies alone.
    """

    def __init__(self, feed_id: str, subfeed_hash: str) -> None:
        self.feed_id = feed_id
        self.subfeed_hash = subfeed_hash
        self._batch: list[bytes] = []
        self._size = 0

    def add(self, lines: Iterable[bytes]) -> list[NewSubfeedMessages | TooBigToPush]:
        pieces: list[NewSubfeedMessages | TooBigToPush] = []
        for line in lines:
            self._batch.append(line)
            self._size += len(line)
            full = self._size >= INLINE_MAX_BYTES or len(self._batch) >= INLINE_MAX_MESSAGES
            if full and not line.endswith(b"\t"):
                pieces.append(self._cut())
        return pieces

    def finish(self) -> list[NewSubfeedMessages | TooBigToPush]:
        """The last piece (ranges read from a store always end at a signed message)."""
        return [self._cut()] if self._batch else []

    def _cut(self) -> NewSubfeedMessages | TooBigToPush:
        piece = NewSubfeedMessages(self.feed_id, self.subfeed_hash, tuple(self._batch))
        self._batch, self._size = [], 0
        if piece.size() > INLINE_MAX_BODY_BYTES:
            return TooBigToPush(len(piece.lines))
        return piece


# ----------------------------------------------------------------------------- the provider
class FeedProvider:
    """Subscriptions to the subfeeds this node provides, and their bucket copies (see the
    module docstring). ``saved``: subscriptions saved by a previous run, taken up again when
    their channel connects."""

    def __init__(self, saved: Iterable[SavedSubscription] = ()) -> None:
        self._subscriptions: dict[SubfeedOnChannel, _Subscription] = {}
        self._saved: dict[SubfeedOnChannel, float] = {row.where: row.expires for row in saved}
        self._jobs: dict[SubfeedOnChannel, _BucketJob] = {}
        self._dirty: dict[SubfeedOnChannel, None] = {}  # bucket copies to update (ordered set)
        self._flush_at: float | None = None
        self._repaired: dict[SubfeedOnChannel, float] = {}  # -> when last rewritten
        self._published: dict[SubfeedOnChannel, int] = {}  # -> the local count last synced
        self._saved_at: float | None = None  # when subscriptions were last saved
        self._save_at: float | None = None  # a save put off by SAVE_MIN_INTERVAL_SECONDS
        self._unsaved: dict[SubfeedOnChannel, None] = {}  # made or renewed since the last save
        self._wall_offset = 0.0  # wall clock minus monotonic clock, as last reported
        # The count each bucket copy was last found at or brought to: a renewal at that count
        # needs no bucket job (N readers renewing every 20 s would cost N head reads).
        self._bucket_counts: dict[SubfeedOnChannel, int] = {}
        # How many more updates may plan from that count without reading the head (see
        # BUCKET_UPDATES_TRUSTED); absent: read it.
        self._bucket_trust: dict[SubfeedOnChannel, int] = {}
        # No subscription expires before this (a lower bound, made exact by _expire): the min
        # over all subscriptions at every event would cost O(N) per renewal.
        self._earliest_expiry: float | None = None
        self._held_said: dict[SubfeedOnChannel, float] = {}  # -> when subfeedsHeld last said it

    # ------------------------------------------------------------------ queries
    def subfeeds(self, channel: str | None = None) -> set[Subfeed]:
        """The subfeeds whose local counts :meth:`on_local_counts` (all live subscriptions) or
        :meth:`on_connected` (``channel``'s, saved ones included) needs."""
        wheres = [w for w in self._subscriptions if channel in (None, w.channel)]
        wheres += [w for w in self._published if channel in (None, w.channel)]
        if channel is not None:
            wheres += [w for w in self._saved if w.channel == channel]
        return {w.subfeed for w in wheres}

    def has_work(self) -> bool:
        """Whether store changes concern this provider: a live or saved subscription, a
        publication, or a bucket job (O(1))."""
        return bool(self._subscriptions or self._published or self._saved or self._jobs)

    def published(self) -> list[SubfeedOnChannel]:
        """The published subfeeds (:meth:`set_published`)."""
        return list(self._published)

    def subscriptions(self, now: float) -> list[SubfeedOnChannel]:
        """The live subscriptions."""
        return [w for w, sub in self._subscriptions.items() if sub.expires > now]

    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` has something to do: a debounced bucket update, an expiry."""
        times = [t for t in (self._earliest_expiry, self._flush_at, self._save_at) if t is not None]
        return min(times, default=None)

    # ------------------------------------------------------------------ events
    def on_subscribe(self, now: float, wall_now: float, channel: str, sender: str,
                     message: SubscribeToSubfeed, *, may_provide: bool, sender_allowed: bool,
                     local_count: int, owns_feed: bool) -> list[ProviderAction]:
        """A reader's subscription. ``may_provide``: this node holds provide-feeds on the
        channel; ``sender_allowed``: the membership gives the sender request-feeds;
        ``local_count``: messages of the subfeed here; ``owns_feed``: this node holds its key."""
        return self.on_subscribe_many(
            now, wall_now, channel, sender, [message], may_provide=may_provide,
            sender_allowed=sender_allowed, owns_feed=owns_feed,
            local_counts={(message.feed_id, message.subfeed_hash): local_count})

    def on_subscribe_many(self, now: float, wall_now: float, channel: str, sender: str,
                          messages: Iterable[SubscribeToSubfeed], *, may_provide: bool,
                          sender_allowed: bool, local_counts: Mapping[Subfeed, int],
                          owns_feed: bool) -> list[ProviderAction]:
        """A reader's subscriptions to subfeeds of one feed (a ``subscribeToSubfeeds``, or one
        ``subscribeToSubfeed``), each handled as :meth:`on_subscribe` would, with one save for
        all of them. ``local_counts``: messages here of each subfeed (absent: 0)."""
        if not may_provide:
            return []
        if not sender_allowed:
            return [Report(Severity.INFO, f"ignoring subscription from {sender[:12]}: "
                                          f"not allowed to request feeds on {channel}")]
        actions: list[ProviderAction] = []
        held: dict[str, list[tuple[str, int]]] = {}  # feed -> (subfeed hash, count) to say held
        for message in messages:
            where = SubfeedOnChannel(channel, message.feed_id, message.subfeed_hash)
            count = local_counts.get(where.subfeed, 0)
            actions += self._subscribe(now, where, message, count, owns_feed, sender)
            if owns_feed and self._may_say_held(now, where, message.position, count):
                held.setdefault(where.feed_id, []).append((where.subfeed_hash, count))
        for feed_id, pairs in held.items():
            for start in range(0, len(pairs), SUBSCRIBE_MANY_MAX):
                actions.append(Publish(channel, SubfeedsHeld(
                    feed_id, tuple(pairs[start:start + SUBSCRIBE_MANY_MAX]))))
        if self._unsaved:
            self._wall_offset = wall_now - now
            actions[:0] = self._save_soon(now)  # saved before anything is pushed
        return actions

    def _subscribe(self, now: float, where: SubfeedOnChannel, message: SubscribeToSubfeed,
                   local_count: int, owns_feed: bool, sender: str) -> list[ProviderAction]:
        position = message.position
        actions: list[ProviderAction] = []
        if message.bucket_rejected and position < local_count:
            actions += self._repair(now, where, position, local_count, sender)
        if local_count == 0 and not owns_feed:
            return actions  # a replica with nothing to provide; the owner keeps even an empty one
        sub = self._subscriptions.get(where)
        if sub is None:
            sub = self._subscriptions[where] = _Subscription(pushed=local_count, expires=now,
                                                             signed_until=now)
        sub.expires = now + SUBSCRIPTION_TTL_SECONDS
        if not message.unsigned_pushes:
            sub.signed_until = max(sub.signed_until, sub.expires)
        if self._earliest_expiry is None:
            self._earliest_expiry = sub.expires
        self._saved.pop(where, None)  # superseded by the live one
        self._unsaved[where] = None
        if message.renewal and position < min(sub.pushed, local_count) \
                and sub.pushed_lately(now, position):
            # A renewal that crossed pushes in flight: every subscriber has them coming. Only
            # what was not pushed yet (the store grew before we heard of it) goes out.
            position = sub.pushed
        if position < local_count:
            if local_count - position <= INLINE_MAX_MESSAGES:
                actions.append(PushRange(where, position, local_count, now < sub.signed_until))
                sub.pushed_range(now, position)
            else:
                actions += self._request_sync(where, announce=True)
        sub.pushed = max(sub.pushed, local_count)
        if self._bucket_counts.get(where) != local_count:
            self._mark_dirty(now, where)
        return actions

    def _may_say_held(self, now: float, where: SubfeedOnChannel, position: int, count: int) -> bool:
        """Whether to tell ``where``'s readers, now, that we hold ``count`` messages and so does
        the bucket: the reader holds them all (one behind is pushed instead), the bucket was
        last found at or brought to that count, and it was not said in the last interval."""
        if position < count or self._bucket_counts.get(where) != count:
            return False
        said = self._held_said.get(where)
        if said is not None and now - said < HELD_MIN_INTERVAL_SECONDS:
            return False
        self._held_said[where] = now
        return True

    def on_local_counts(self, now: float, counts: Mapping[Subfeed, int]) -> list[ProviderAction]:
        """The store changed: ``counts`` of (at least) :meth:`subfeeds`. New messages are pushed
        to every live subscription, and their bucket copies marked for a debounced update."""
        actions: list[ProviderAction] = []
        self._expire(now)
        for where, sub in self._subscriptions.items():
            count = counts.get(where.subfeed)
            if count is not None and count > sub.pushed:
                actions.append(PushRange(where, sub.pushed, count, now < sub.signed_until))
                sub.pushed_range(now, sub.pushed)
                sub.pushed = count
                self._mark_dirty(now, where)
        for where, synced in self._published.items():
            count = counts.get(where.subfeed)
            if count is not None and count > synced:
                self._published[where] = count
                self._mark_dirty(now, where)
        return actions

    def set_published(self, now: float, wheres: Iterable[SubfeedOnChannel],
                      counts: Mapping[Subfeed, int]) -> list[ProviderAction]:
        """The published subfeeds are now ``wheres`` (on channels that are up; ``counts``:
        their local counts). A newly published one with messages gets its bucket copy brought
        up to date now; one no longer listed is no longer kept current (its copy stays)."""
        wanted = dict.fromkeys(wheres)
        for where in [w for w in self._published if w not in wanted]:
            del self._published[where]
        actions: list[ProviderAction] = []
        for where in wanted:
            if where in self._published:
                continue
            count = counts.get(where.subfeed, 0)
            self._published[where] = count
            if count > 0:
                actions += self._request_sync(where, announce=True)
        return actions

    def on_connected(self, now: float, wall_now: float, channel: str,
                     counts: Mapping[Subfeed, int], *, may_provide: bool = False) -> list[ProviderAction]:
        """``channel`` came (back) up; ``counts`` of :meth:`subfeeds` (``channel``). With
        ``may_provide`` (this node holds provide-feeds there), say so first
        (``providerConnected``): readers whose subscriptions it missed while it was away publish
        them again. Saved subscriptions there are taken up again, and every live one there gets
        the bucket up to date and a ``subfeedUploaded``, planned from the bucket's heads read
        again (another node may have written them meanwhile)."""
        for where in [w for w in self._bucket_trust if w.channel == channel]:
            del self._bucket_trust[where]
        for where, expires_wall in list(self._saved.items()):
            if where.channel != channel:
                continue
            del self._saved[where]
            if expires_wall > wall_now and where not in self._subscriptions:
                expires = now + expires_wall - wall_now  # signed until then: who knows
                self._subscriptions[where] = _Subscription(
                    pushed=counts.get(where.subfeed, 0), expires=expires, signed_until=expires)
                expires = self._subscriptions[where].expires
                if self._earliest_expiry is None or expires < self._earliest_expiry:
                    self._earliest_expiry = expires
        actions: list[ProviderAction] = [Publish(channel, ProviderConnected())] if may_provide else []
        for where, sub in self._subscriptions.items():
            count = counts.get(where.subfeed, 0)
            if where.channel != channel or sub.expires <= now or count == 0:
                continue
            actions += self._request_sync(where, announce=True)
            sub.pushed = max(sub.pushed, count)
        for where in self._published:
            count = counts.get(where.subfeed, 0)
            if where.channel == channel and count > 0 and where not in self._subscriptions:
                self._published[where] = count
                actions += self._request_sync(where, announce=True)
        return actions

    def on_push_oversized(self, now: float, where: SubfeedOnChannel) -> list[ProviderAction]:
        """A piece of a :class:`PushRange` was :class:`TooBigToPush`: the driver stops pushing
        that range; the bucket carries it instead."""
        return [Report(Severity.INFO, f"messages of {where.uri} too big to push on {where.channel}: "
                                      "announcing the bucket's copy instead"),
                *self._request_sync(where, announce=True)]

    def on_timer(self, now: float) -> list[ProviderAction]:
        """Expire subscriptions, save them if a save was put off, and start the debounced
        bucket updates that are due."""
        self._expire(now)
        saves: list[ProviderAction] = []
        if self._save_at is not None and now >= self._save_at and self._unsaved:
            saves = self._save_soon(now)
        elif self._save_at is not None and now >= self._save_at:
            self._save_at = None
        for where, when in list(self._repaired.items()):
            if now - when >= REPAIR_MIN_INTERVAL_SECONDS:
                del self._repaired[where]
        if self._flush_at is None or now < self._flush_at:
            return saves
        dirty, self._dirty, self._flush_at = self._dirty, {}, None
        actions: list[ProviderAction] = saves
        for where in dirty:
            actions += self._request_sync(where, announce=False)
        return actions

    def on_bucket_state(self, now: float, where: SubfeedOnChannel, bucket_head: bytes | None,
                        local_count: int, local_head: bytes) -> list[ProviderAction]:
        """Answer to :class:`ReadBucketState`: upload what the bucket lacks, or finish.
        ``bucket_head`` is None when the bucket has none, or when the action said
        ``known_count`` (the head was not read: ``local_head`` is not needed either)."""
        job = self._jobs.get(where)
        if job is not None and not job.read_head:
            plan = plan_from_count(local_count, self._bucket_counts.get(where, 0))
        else:
            plan = plan_bucket_update(local_count, local_head, bucket_head)
        return self.on_bucket_planned(now, where, plan, local_count)

    def on_bucket_planned(self, now: float, where: SubfeedOnChannel, plan: BucketPlan,
                          local_count: int) -> list[ProviderAction]:
        """Answer to :class:`ReadBucketState` with the plan made from it (by
        :func:`~.feed_bucket.plan_bucket_update` of the head read, or
        :func:`~.feed_bucket.plan_from_count` of its ``known_count``), e.g. in a worker thread:
        :meth:`on_bucket_state` does both steps at once."""
        job = self._job(where)
        if job.read_head:
            self._bucket_trust[where] = BUCKET_UPDATES_TRUSTED
        if not plan.upload:
            job.move(BucketStep.UP_TO_DATE)
            job.count = local_count
            self._bucket_counts[where] = local_count
            return self._finish(where, job)
        job.move(BucketStep.UPLOAD)
        job.count = local_count
        actions: list[ProviderAction] = []
        if plan.replaces_bad_head:
            actions.append(Report(Severity.WARNING,
                                  f"replacing a bad head of {where.uri} in the {where.channel} bucket"))
        actions.append(UploadSegments(where, plan.segments, local_count, provisional_heads=True))
        return actions

    def on_bucket_progress(self, now: float, where: SubfeedOnChannel, count: int) -> list[ProviderAction]:
        """A running :class:`UploadSegments` put a provisional head for ``count`` messages in
        the bucket: a reader waiting for this job hears of it now, not after the last segment."""
        job = self._job(where)
        if job.state is not BucketJobState.UPLOADING:
            raise FeedProtocolMisuse(f"bucket job: progress reported while {job.state.value}")
        if not job.announce:
            return []
        return [Publish(where.channel, SubfeedUploaded(where.feed_id, where.subfeed_hash, count))]

    def on_bucket_done(self, now: float, where: SubfeedOnChannel) -> list[ProviderAction]:
        """The :class:`UploadSegments` succeeded."""
        job = self._job(where)
        job.move(BucketStep.DONE)
        self._bucket_counts[where] = job.count
        return self._finish(where, job)

    def on_bucket_failed(self, now: float, where: SubfeedOnChannel, detail: str) -> list[ProviderAction]:
        """Reading or uploading failed (transport): the readers' renewals will re-sync them."""
        job = self._job(where)
        job.move(BucketStep.FAILED)
        self._bucket_counts.pop(where, None)
        self._bucket_trust.pop(where, None)
        job.announce = False
        return [Report(Severity.INFO, f"bucket update of {where.uri} on {where.channel} failed: {detail}"),
                *self._finish(where, job)]

    # ------------------------------------------------------------------ internals
    def _job(self, where: SubfeedOnChannel) -> _BucketJob:
        job = self._jobs.get(where)
        if job is None:
            raise FeedProtocolMisuse(f"no bucket job runs for {where.uri} on {where.channel}")
        return job

    def _request_sync(self, where: SubfeedOnChannel, *, announce: bool) -> list[ProviderAction]:
        job = self._jobs.setdefault(where, _BucketJob())
        job.sync_wanted = True
        job.announce_wanted |= announce
        return self._start_next(where, job)

    def _repair(self, now: float, where: SubfeedOnChannel, position: int, count: int,
                reporter: str) -> list[ProviderAction]:
        self._bucket_trust.pop(where, None)  # a reader found the copy bad: read it next time
        last = self._repaired.get(where)
        if last is not None and now - last < REPAIR_MIN_INTERVAL_SECONDS:
            return []
        self._repaired[where] = now
        job = self._jobs.setdefault(where, _BucketJob())
        job.repair_wanted = (position, count)
        return [Report(Severity.WARNING, f"{reporter[:12]} rejected the {where.channel} bucket's copy "
                                         f"of {where.uri}: uploading it again from message {position}"),
                *self._start_next(where, job)]

    def _start_next(self, where: SubfeedOnChannel, job: _BucketJob) -> list[ProviderAction]:
        if job.state is not BucketJobState.IDLE:
            return []  # merged into the job after the running one
        if job.repair_wanted is not None:
            position, count = job.repair_wanted
            job.repair_wanted, job.announce, job.count, job.read_head = None, False, count, False
            job.move(BucketStep.REPAIR)
            return [UploadSegments(where, range(position // SEGMENT_SIZE, count // SEGMENT_SIZE), count)]
        if job.sync_wanted:
            job.announce = job.announce_wanted
            job.sync_wanted = job.announce_wanted = False
            job.move(BucketStep.SYNC)
            trust, known = self._bucket_trust.get(where, 0), self._bucket_counts.get(where)
            job.read_head = trust <= 0 or known is None
            if job.read_head:
                return [ReadBucketState(where)]
            self._bucket_trust[where] = trust - 1
            return [ReadBucketState(where, known_count=known)]
        del self._jobs[where]
        return []

    def _finish(self, where: SubfeedOnChannel, job: _BucketJob) -> list[ProviderAction]:
        actions: list[ProviderAction] = []
        if job.announce and job.count > 0:
            actions.append(Publish(where.channel,
                                   SubfeedUploaded(where.feed_id, where.subfeed_hash, job.count)))
        job.announce = False
        return actions + self._start_next(where, job)

    def _mark_dirty(self, now: float, where: SubfeedOnChannel) -> None:
        self._dirty[where] = None
        if self._flush_at is None:
            self._flush_at = now + BUCKET_DEBOUNCE_SECONDS

    def _expire(self, now: float) -> None:
        if self._earliest_expiry is None or now < self._earliest_expiry:
            return  # nothing can have expired: no O(N) scan at every event
        expired = [w for w, sub in self._subscriptions.items() if sub.expires <= now]
        for where in expired:
            del self._subscriptions[where]
            self._bucket_counts.pop(where, None)
            self._bucket_trust.pop(where, None)
            self._held_said.pop(where, None)
        self._earliest_expiry = min((sub.expires for sub in self._subscriptions.values()), default=None)

    def _save_soon(self, now: float) -> list[ProviderAction]:
        """Save what changed now, or once :data:`SAVE_MIN_INTERVAL_SECONDS` have passed since
        the last save."""
        if self._saved_at is not None and now - self._saved_at < SAVE_MIN_INTERVAL_SECONDS:
            self._save_at = self._saved_at + SAVE_MIN_INTERVAL_SECONDS
            return []
        self._saved_at, self._save_at = now, None
        return [self._save(now, now + self._wall_offset)]

    def _save(self, now: float, wall_now: float) -> SaveSubscriptions:
        """The subscriptions made or renewed since the last save (in wall-clock time); rows
        saved by a previous run stay saved as they are until they expire."""
        unsaved, self._unsaved = self._unsaved, {}
        rows = []
        for where in unsaved:
            sub = self._subscriptions.get(where)
            if sub is not None and sub.expires > now:
                rows.append(SavedSubscription(where.channel, where.feed_id, where.subfeed_hash,
                                              sub.expires - now + wall_now))
        return SaveSubscriptions(tuple(rows), expired_before=wall_now)

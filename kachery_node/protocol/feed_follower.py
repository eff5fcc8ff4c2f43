"""The reader's side of the feed flow as a state machine: one subfeed followed on one channel.

Theory of operation (spec/node-protocol.md §Feeds, "Reader")
-------------------------------------------------------------
A follower loops through three steps for as long as the subfeed is followed:

1. **Catch up from the bucket**: read the subfeed's head (:class:`ReadHead`); if it holds more
   than the local store, download the full segments the store lacks and import them, then the
   tail (:class:`ImportFromBucket`), everything verified by kachery_feeds.
2. **Subscribe**: publish ``subscribeToSubfeed`` with the local count.
3. **Wait** :data:`RENEW_SECONDS` (rounded up to the grid of :data:`RENEW_ALIGN_SECONDS`, see
   :func:`renewal_due`), or less if a provider has just connected (``providerConnected``: the
   subscription is published again at once, which a provider that was offline never heard),
   or if *nudged*: the channel (re)connected, a provider
   said the bucket holds more than we have (``subfeedUploaded``), or an inline push did not
   chain onto the local end (a gap). Nudged, go to 1. At the renewal, go to 1 if the bucket was
   last read :data:`BUCKET_RECHECK_SECONDS` ago or more and the feed's owner has not said
   within that time (``subfeedsHeld``) how many messages it and the bucket hold (so a reader
   whose owner answers reads the bucket only when something changed); otherwise publish the subscription
   again with the local count (a provider pushes or announces what a reader lacks, so the head
   need not be read every time: N followed subfeeds cost N bucket reads per 5 minutes, not per
   20 s) and wait again. Such a subscription, and only it, says ``renewal``: nothing happened
   since the last one that a provider's recent pushes would not cover (a gap, or the bucket
   read that a gap or a nudge leads to, always ends in a subscription without it).

If the bucket's data fails verification (a malformed head, a bad signature or chain), the
follower waits :data:`REJECTED_RETRY_SECONDS` (so as not to spin) and then subscribes with
``bucket_rejected: true``, which asks providers to upload the bucket's copy again.

Rules
-----
* Everything that decides what a follower does next lives in this file; the driver
  (``kachery_node/daemon/feed_follower_driver.py``) only carries out actions and reports what
  happened. No I/O, no clock: ``now`` (float seconds, monotonic) comes with every event.
* One catch-up at a time: a nudge that arrives during one is remembered and starts the next
  as soon as the subscription that ends it is published (no nudge is lost, none doubles up).
* The local store is the truth about what we hold: the driver reports ``local_count`` with
  every event that needs it; the follower keeps no copy of the subfeed.
* An event the current state does not expect raises :class:`FeedProtocolMisuse` (the driver's
  bug); a peer's bad data is an outcome, never an exception.
"""

from __future__ import annotations

import enum
import math

from .feed_bucket import HeadError, parse_head, segments_to_download
from .feed_messages import (
    FeedProtocolMisuse,
    FollowerAction,
    GiveUp,
    ImportFromBucket,
    Publish,
    ReadHead,
    Report,
    Severity,
    SubfeedOnChannel,
    SubfeedUploaded,
    SubscribeToSubfeed,
)

RENEW_SECONDS = 20.0
#: Renewals fall due on a grid of this many seconds of the driver's clock (:func:`renewal_due`),
#: so that a node's followers renew together and their subscriptions travel batched, one
#: ``subscribeToSubfeeds`` per feed; a renewal comes 20 to 25 s after the last subscription,
#: well within a provider's SUBSCRIPTION_TTL_SECONDS (60).
RENEW_ALIGN_SECONDS = 5.0
CATCH_UP_TIMEOUT_SECONDS = 60.0
REJECTED_RETRY_SECONDS = 1.0  # after rejecting bucket data, before the next subscription
#: A renewal reads the bucket's head again only if the last read, and the owner's last word on
#: what it holds (``subfeedsHeld``), are this old: a safety net for pushes lost while no
#: provider answered; other renewals only re-publish the subscription.
BUCKET_RECHECK_SECONDS = 300.0


def renewal_due(now: float) -> float:
    """When a subscription published at ``now`` is renewed: :data:`RENEW_SECONDS` later, rounded
    up to a multiple of :data:`RENEW_ALIGN_SECONDS` (the same instants for every follower)."""
    return math.ceil((now + RENEW_SECONDS) / RENEW_ALIGN_SECONDS) * RENEW_ALIGN_SECONDS


class FollowerState(enum.Enum):
    NEW = "new"  # start() not called yet
    READING_HEAD = "reading head"  # a ReadHead is out
    IMPORTING = "importing"  # an ImportFromBucket is out
    BACKING_OFF = "backing off"  # rejected the bucket's data; subscribes when the pause ends
    SUBSCRIBED = "subscribed"  # waiting for the renewal or a nudge
    STOPPED = "stopped"  # gave up (no request-feeds role here)


class Step(enum.Enum):
    """What moves a follower from one state to the next (see :data:`TRANSITIONS`)."""

    START = "start"
    NO_ROLE = "no role"
    NOTHING_NEW = "bucket holds nothing new"
    BEHIND = "bucket holds more"
    IMPORTED = "imported"
    REJECTED = "bucket data rejected"
    FAILED = "catch-up failed (transport, timeout, fork)"
    RETRY_DUE = "pause after rejection over"
    CATCH_UP_DUE = "renewal due or nudged"
    RENEW = "renewal due, bucket read recently"


TRANSITIONS: dict[tuple[FollowerState, Step], FollowerState] = {
    (FollowerState.NEW, Step.START): FollowerState.READING_HEAD,
    (FollowerState.NEW, Step.NO_ROLE): FollowerState.STOPPED,
    (FollowerState.READING_HEAD, Step.NOTHING_NEW): FollowerState.SUBSCRIBED,
    (FollowerState.READING_HEAD, Step.BEHIND): FollowerState.IMPORTING,
    (FollowerState.READING_HEAD, Step.REJECTED): FollowerState.BACKING_OFF,
    (FollowerState.READING_HEAD, Step.FAILED): FollowerState.SUBSCRIBED,
    (FollowerState.IMPORTING, Step.IMPORTED): FollowerState.SUBSCRIBED,
    (FollowerState.IMPORTING, Step.REJECTED): FollowerState.BACKING_OFF,
    (FollowerState.IMPORTING, Step.FAILED): FollowerState.SUBSCRIBED,
    (FollowerState.BACKING_OFF, Step.RETRY_DUE): FollowerState.SUBSCRIBED,
    (FollowerState.SUBSCRIBED, Step.CATCH_UP_DUE): FollowerState.READING_HEAD,
    (FollowerState.SUBSCRIBED, Step.RENEW): FollowerState.SUBSCRIBED,
}


#: States in which a nudge waits for the catch-up (or pause) under way to end.
_BUSY = frozenset({FollowerState.READING_HEAD, FollowerState.IMPORTING, FollowerState.BACKING_OFF})


class CatchUpFailure(enum.Enum):
    """Why reading or importing the bucket's copy did not finish."""

    REJECTED = "rejected"  # bad signature, broken chain, segments that do not fit: not trusted
    FORK = "fork"  # a valid, conflicting message: recorded with its proof by the store
    TIMED_OUT = "timed out"
    UNREACHABLE = "unreachable"  # transport errors; the next renewal retries


class InlineOutcome(enum.Enum):
    """What importing a ``newSubfeedMessages`` did to the local store."""

    STORED = "stored"  # new messages, or duplicates (a no-op)
    GAP = "gap"  # they start past the local end: the reader was away
    FORK = "fork"
    REJECTED = "rejected"  # failed verification


def inline_report(uri: str, outcome: InlineOutcome, sender: str, detail: str = "") -> Report | None:
    """What to log about an inline push's import (None: nothing worth saying)."""
    if outcome is InlineOutcome.FORK:
        return Report(Severity.ERROR, f"FORK in {uri} reported by {sender[:12]}: {detail}")
    if outcome is InlineOutcome.REJECTED:
        return Report(Severity.WARNING, f"rejected messages for {uri} from {sender[:12]}: {detail}")
    return None


class FeedFollower:
    """Follows one subfeed on one channel (see the module docstring).

    Example, with a driver's view of the bucket::

        f = FeedFollower(SubfeedOnChannel("lab", feed_id, subfeed_hash))
        [read] = f.start(now, may_request=True)          # ReadHead
        f.on_head(now, None, local_count=0)              # [Publish(subscribeToSubfeed ...)]
        f.next_deadline()                                # renewal_due(now)
    """

    def __init__(self, where: SubfeedOnChannel) -> None:
        self.where = where
        self.state = FollowerState.NEW
        self._nudged = False  # a nudge came during a catch-up or pause
        self._rejected = False  # the next subscription says bucket_rejected
        self._due: float | None = None  # renewal (SUBSCRIBED) or end of pause (BACKING_OFF)
        self._position = 0  # the local count the last catch-up left, for the next subscription
        self._read_at: float | None = None  # when the last catch-up (bucket read) began
        self._held_at: float | None = None  # when the owner last said what it and the bucket hold

    # ------------------------------------------------------------------ events
    def start(self, now: float, *, may_request: bool) -> list[FollowerAction]:
        """Begin; ``may_request``: this node holds the request-feeds role on the channel."""
        if not may_request:
            self._move(Step.NO_ROLE)
            reason = "this node lacks the request-feeds role"
            return [Report(Severity.WARNING, f"cannot follow {self.where.uri} on "
                                             f"{self.where.channel}: {reason}"),
                    GiveUp(self.where, reason)]
        return self._catch_up(now, Step.START)

    def on_head(self, now: float, head: bytes | None, local_count: int) -> list[FollowerAction]:
        """The bucket's head object (None: there is none, nothing was published yet)."""
        self._expect(FollowerState.READING_HEAD)
        if head is None:
            return self._subscribe(now, Step.NOTHING_NEW, local_count)
        try:
            parsed = parse_head(head)
        except HeadError as exc:
            return self.on_catch_up_failed(now, CatchUpFailure.REJECTED, local_count, str(exc))
        if parsed.count <= local_count:
            return self._subscribe(now, Step.NOTHING_NEW, local_count)
        self._move(Step.BEHIND)
        return [ImportFromBucket(self.where, segments_to_download(local_count, parsed),
                                 tuple(parsed.tail), now + CATCH_UP_TIMEOUT_SECONDS)]

    def on_imported(self, now: float, added: int, local_count: int) -> list[FollowerAction]:
        """The bucket's segments and tail were imported; ``added`` of them were new."""
        self._expect(FollowerState.IMPORTING)
        actions: list[FollowerAction] = []
        if added:
            actions.append(Report(Severity.INFO, f"imported {added} messages of {self.where.uri} "
                                                 f"from the {self.where.channel} bucket"))
        return actions + self._subscribe(now, Step.IMPORTED, local_count)

    def on_catch_up_failed(self, now: float, failure: CatchUpFailure, local_count: int,
                           detail: str = "") -> list[FollowerAction]:
        """Reading the head or importing failed. Rejected data: pause, then ask providers for a
        new copy; anything else: subscribe now and let the next renewal retry."""
        self._expect(FollowerState.READING_HEAD, FollowerState.IMPORTING)
        where = f"{self.where.uri} on {self.where.channel}"
        self._position = local_count
        if failure is CatchUpFailure.REJECTED:
            self._move(Step.REJECTED)
            self._rejected = True
            self._due = now + REJECTED_RETRY_SECONDS
            return [Report(Severity.WARNING, f"rejected bucket data for {where}: {detail}")]
        report = {
            CatchUpFailure.FORK: Report(Severity.ERROR, f"FORK in {self.where.uri}: {detail}"),
            CatchUpFailure.TIMED_OUT: Report(Severity.WARNING, f"catching up {where} timed out"),
            CatchUpFailure.UNREACHABLE: Report(Severity.INFO, f"bucket read for {where} failed: {detail}"),
        }[failure]
        return [report] + self._subscribe(now, Step.FAILED, local_count)

    def on_nudge(self, now: float) -> list[FollowerAction]:
        """Catch up now rather than at the renewal (after a reconnect, or a gap)."""
        if self.state is FollowerState.SUBSCRIBED:
            return self._catch_up(now, Step.CATCH_UP_DUE)
        if self.state in _BUSY:
            self._nudged = True  # NEW: start() catches up anyway; STOPPED: nothing to do
        return []

    def on_subfeed_uploaded(self, now: float, message: SubfeedUploaded,
                            local_count: int) -> list[FollowerAction]:
        """A provider says the bucket holds ``message.count`` messages: catch up if that is more."""
        if message.count > local_count:
            return self.on_nudge(now)
        return []

    def on_subfeed_held(self, now: float, count: int, local_count: int) -> list[FollowerAction]:
        """The feed's owner says it holds ``count`` messages and the bucket holds them all
        (``subfeedsHeld``): the next bucket re-read waits, unless that is more than we hold (a
        push was lost: catch up now)."""
        self._held_at = now
        if count > local_count:
            return self.on_nudge(now)
        return []

    def on_provider_connected(self, now: float, local_count: int | None) -> list[FollowerAction]:
        """A provider has just connected to the channel (``providerConnected``): a subscription
        published while it was away never reached it, so publish it again now (as a renewal:
        nothing happened since the last one) rather than at the renewal, 20 to 25 s later. A
        follower catching up, or pausing, subscribes when that ends anyway."""
        if self.state is not FollowerState.SUBSCRIBED:
            return []
        return self._subscribe(now, Step.RENEW, local_count)

    def on_new_messages(self, now: float, outcome: InlineOutcome, sender: str,
                        detail: str = "") -> list[FollowerAction]:
        """An inline push was imported (or not): a gap sends us back to the bucket."""
        if outcome is InlineOutcome.GAP:
            return self.on_nudge(now)
        report = inline_report(self.where.uri, outcome, sender, detail)
        return [report] if report is not None else []

    def on_timer(self, now: float, local_count: int | None = None) -> list[FollowerAction]:
        """Call when :meth:`next_deadline` has passed (calling early does nothing), with the
        store's count: a renewal soon after a bucket read only re-publishes the subscription
        (without ``local_count`` every renewal reads the bucket)."""
        if self._due is None or now < self._due:
            return []
        if self.state is FollowerState.BACKING_OFF:
            return self._subscribe(now, Step.RETRY_DUE, None)
        if self.state is FollowerState.SUBSCRIBED:
            recent = any(t is not None and now - t < BUCKET_RECHECK_SECONDS
                         for t in (self._read_at, self._held_at))
            if local_count is not None and recent:
                return self._subscribe(now, Step.RENEW, local_count)
            return self._catch_up(now, Step.CATCH_UP_DUE)
        return []

    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` has something to do (None: waiting for the driver's answer)."""
        if self.state in (FollowerState.SUBSCRIBED, FollowerState.BACKING_OFF):
            return self._due
        return None

    # ------------------------------------------------------------------ internals
    def _catch_up(self, now: float, step: Step) -> list[FollowerAction]:
        self._move(step)
        self._nudged = False
        self._due = None
        self._read_at = now
        return [ReadHead(self.where, now + CATCH_UP_TIMEOUT_SECONDS)]

    def _subscribe(self, now: float, step: Step, local_count: int | None) -> list[FollowerAction]:
        """Publish a subscription (with the count the last catch-up left us), then wait."""
        if local_count is not None:
            self._position = local_count
        self._move(step)
        # Only a plain renewal says so: one after a catch-up (a gap among them) must be pushed
        # what the reader lacks even if the provider pushed it a moment ago (spec: `renewal`).
        message = SubscribeToSubfeed(self.where.feed_id, self.where.subfeed_hash, self._position,
                                     bucket_rejected=self._rejected, renewal=step is Step.RENEW)
        self._rejected = False
        self._due = renewal_due(now)
        actions: list[FollowerAction] = [Publish(self.where.channel, message)]
        if self._nudged:
            actions += self._catch_up(now, Step.CATCH_UP_DUE)
        return actions

    def _expect(self, *states: FollowerState) -> None:
        if self.state not in states:
            raise FeedProtocolMisuse(f"follower of {self.where.uri} is {self.state.value}, "
                                     f"not {' or '.join(s.value for s in states)}")

    def _move(self, step: Step) -> None:
        try:
            self.state = TRANSITIONS[(self.state, step)]
        except KeyError:
            raise FeedProtocolMisuse(
                f"follower of {self.where.uri}: {step.value!r} cannot happen while {self.state.value}"
            ) from None

"""Drives :class:`~kachery_node.protocol.feed_follower.FeedFollower`: one task per subfeed
followed on a channel, carrying out its actions with the channel's link and the feed store.

What happens when is the core's business (kachery_node/protocol/feed_follower.py); this module
does the waiting (anyio deadlines, ``anyio.current_time()`` as the core's clock), the bucket
reads (at most :data:`CATCH_UPS_AT_ONCE` at a time: following 10,000 subfeeds must not send
10,000 requests to the hub at once), the verified imports (segments in a worker thread, a few
downloads ahead) and the publishing, and tells the core how each went.

Subscriptions are not published one by one: each channel's :class:`_SubscriptionBatcher`
gathers those handed to it within :data:`SUBSCRIBE_BATCH_SECONDS` and publishes them batched
(:func:`~kachery_node.protocol.feed_messages.batch_subscriptions`: one ``subscribeToSubfeeds``
per feed and 500 subfeeds). Renewals fall due on a shared grid (the core's ``renewal_due``), so
N followed subfeeds of one feed cost about N/500 messages per renewal period, not N.

Followers' timers are not N sleeping tasks: one timer task keeps every follower's next deadline
in a heap, and at each due instant reads the counts of the due followers (one query per feed
when there are many), asks each core, and hands plain renewals straight to the batcher. A
follower's own task is woken only when its core has more to do (a bucket read), so a renewal
round of 10,000 subfeeds is not 10,000 task wake-ups and 10,000 count queries.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import anyio
import anyio.abc

import kachery_feeds as kf
from kachery_feeds.checkpoints import CheckpointError, parse_witnessed_checkpoint

from ..protocol import feed_bucket
from ..protocol.bucket_layout import subfeed_checkpoint_path, subfeed_fork_path
from ..protocol.feed_follower import (
    CatchUpFailure,
    FeedFollower,
    FollowerState,
    InlineOutcome,
    inline_report,
)
from ..protocol.feed_messages import (
    FollowerAction,
    GiveUp,
    ImportFromBucket,
    NewSubfeedMessages,
    Publish,
    ReadHead,
    Report,
    SubfeedOnChannel,
    SubfeedsHeld,
    SubfeedUploaded,
    SubscribeToSubfeed,
    batch_subscriptions,
)
from ..protocol.witness_gate import POLICY_SUBFEED_HASH, WitnessGate, required_witnesses
from .channel_link import BucketObjectMissing, ChannelLink

log = logging.getLogger("kachery.feeds")

SEGMENT_DOWNLOADS_AHEAD = 4
SUBFEED_OBJECTS_KEPT = 4096  # kf.Subfeed handles kept for reuse (dropped all at once beyond)
FORK_READ_TIMEOUT_SECONDS = 10.0  # reading the bucket's fork proof before following
CATCH_UPS_AT_ONCE = 16  # bucket reads and imports under way at once, over all followers
SUBSCRIBE_BATCH_SECONDS = 0.05  # subscriptions handed over within this time travel together
# Renewals of at most this many subfeeds of one feed due at once read their counts one by one
# (a few µs each, by primary key); more, in one query over the feed.
COUNTS_ONE_BY_ONE = 8
TIMERS_PER_TURN = 500  # followers' deadlines fired between two turns of the event loop
#: Providers' ``providerConnected`` re-publish a channel's subscriptions at most this often (a
#: renewal round comes every 20 to 25 s anyway).
RESUBSCRIBE_MIN_SECONDS = 5.0


@dataclass
class _Conversation:
    """One follower, the link it talks on, and the actions it has yet to carry out."""

    follower: FeedFollower
    link: ChannelLink
    subfeed: kf.Subfeed
    pending: deque[FollowerAction] = field(default_factory=deque)
    wake: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)  # cancelled: unfollowed
    scheduled: float | None = None  # the deadline the driver's timer holds for it (None: none)

    def give(self, actions: Iterable[FollowerAction]) -> None:
        """Queue ``actions`` and wake the follower's task, if there are any: a live push that
        was stored needs nothing more, and waking the task for it cost a task switch a push."""
        before = len(self.pending)
        self.pending.extend(actions)
        if len(self.pending) > before:
            self.wake.set()


class _SubscriptionBatcher:
    """The subscriptions to publish on one channel. A lone one goes at once (a single follow
    waits for nothing); when several are pending (followers renewing at the same instant, a
    bulk follow catching up), those handed over within :data:`SUBSCRIBE_BATCH_SECONDS` travel
    batched. Each goes with the store's count at sending time if that is higher than the one
    it was made with (a subscription behind the store would make providers push again)."""

    def __init__(self, link: ChannelLink, store: kf.Store) -> None:
        self.link = link
        self._store = store
        self._pending: list[SubscribeToSubfeed] = []
        self._wake = anyio.Event()

    def add(self, message: SubscribeToSubfeed) -> None:
        self._pending.append(message)
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()  # before the pause: what comes during it joins this batch
            await anyio.sleep(0)  # followers woken at the same instant hand theirs over first
            if len(self._pending) > 1:
                await anyio.sleep(SUBSCRIBE_BATCH_SECONDS)
            pending, self._pending = self._pending, []
            for message in batch_subscriptions(self._current(pending)):
                try:
                    await self.link.publish(message.band, message.to_body())
                except Exception as exc:  # the runtime reconnects; the core renews later
                    log.info("publishing %s on %s failed (%s); retrying at the renewal",
                             type(message).__name__, self.link.channel, exc)

    def _current(self, pending: list[SubscribeToSubfeed]) -> list[SubscribeToSubfeed]:
        """``pending`` with positions raised to the store's counts (one query per feed)."""
        by_feed: dict[str, list[str]] = {}
        for m in pending:
            by_feed.setdefault(m.feed_id, []).append(m.subfeed_hash)
        counts = {feed_id: _local_counts(self._store, feed_id, hashes) for feed_id, hashes in by_feed.items()}
        out = []
        for m in pending:
            count = counts[m.feed_id][m.subfeed_hash]
            if count > m.position and not m.bucket_rejected:
                m = dataclasses.replace(m, position=count)
            out.append(m)
        return out


class FollowerDriver:
    """Follows remote subfeeds on the daemon's channels."""

    def __init__(self, store: kf.Store, on_fork: Callable[[ChannelLink, bytes], None] | None = None,
                 gate: WitnessGate | None = None) -> None:
        self.store = store
        self._on_fork = on_fork  # a fork found on import: its proof goes to the channel
        self.gate = gate  # holds messages until the witnesses their owner requires signed them
        self._policies: dict[str, tuple[int, dict[str, int]]] = {}  # feed -> (count read, policy)
        self._conversations: dict[SubfeedOnChannel, _Conversation] = {}
        self._followed: dict[tuple[str, str], None] = {}  # (feed ID, subfeed hash), in order
        self._task_group: anyio.abc.TaskGroup | None = None
        self._batchers: dict[str, _SubscriptionBatcher] = {}  # channel -> its batcher
        self._catch_ups = anyio.CapacityLimiter(CATCH_UPS_AT_ONCE)
        self._subfeed_objects: dict[tuple[str, str], kf.Subfeed] = {}
        # (deadline, tie-breaker, conversation); an entry whose deadline is no longer the
        # conversation's ``scheduled`` is stale and skipped when it comes up.
        self._timers: list[tuple[float, int, _Conversation]] = []
        self._timer_order = itertools.count()
        self._timer_wait: anyio.CancelScope | None = None  # the timer task's sleep, while it sleeps
        self._resubscribed_at: dict[str, float] = {}  # channel -> when providerConnected was answered
        self._resubscribe_pending: set[str] = set()  # channels where an answer waits its turn

    async def run(self, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        """Own the followers' tasks until cancelled."""
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            tg.start_soon(self._run_timers)
            task_status.started()
            await anyio.sleep_forever()

    def follow(self, links: Iterable[ChannelLink], feed_id: str, subfeed_hash: str) -> None:
        """Start following a remote subfeed on ``links`` (idempotent; keeps running)."""
        self._followed[(feed_id, subfeed_hash)] = None
        links = list(links)
        if self.gate is not None and subfeed_hash != POLICY_SUBFEED_HASH:
            self.follow(links, feed_id, POLICY_SUBFEED_HASH)  # the owner's witness requirements
        for link in links:
            where = SubfeedOnChannel(link.channel, feed_id, subfeed_hash)
            if where in self._conversations:
                continue
            subfeed = self.store.load_feed(feed_id).load_subfeed("~" + subfeed_hash)
            conversation = self._conversations[where] = _Conversation(FeedFollower(where), link, subfeed)
            assert self._task_group is not None, "FeedExchange.run() must be running"
            self._task_group.start_soon(self._drive, conversation)

    def followed(self) -> list[tuple[str, str]]:
        return list(self._followed)

    def unfollow(self, feed_id: str, subfeed_hash: str) -> bool:
        """Stop following a subfeed on every channel (its stored messages stay); False if it
        was not followed. Its providers' subscriptions lapse, unrenewed."""
        known = self._followed.pop((feed_id, subfeed_hash), False) is None
        for where in [w for w in self._conversations if w.subfeed == (feed_id, subfeed_hash)]:
            self._conversations.pop(where).scope.cancel()
        return known

    def on_reconnect(self, link: ChannelLink) -> None:
        """``link``'s channel came (back) up: every follower there catches up and re-subscribes now."""
        now = anyio.current_time()
        for where, conversation in self._conversations.items():
            if where.channel == link.channel:
                conversation.give(conversation.follower.on_nudge(now))

    def on_subfeed_uploaded(self, link: ChannelLink, message: SubfeedUploaded) -> None:
        conversation = self._conversation(link, message.feed_id, message.subfeed_hash)
        if conversation is not None:
            count = conversation.subfeed.get_num_local_messages()
            conversation.give(conversation.follower.on_subfeed_uploaded(anyio.current_time(), message, count))

    def on_subfeeds_held(self, link: ChannelLink, message: SubfeedsHeld) -> None:
        """The feed's owner says how many messages of each subfeed it and the bucket hold: each
        of ours on this channel hears it (the local counts read in one query for the feed)."""
        conversations = [(c, count) for h, count in message.subfeeds
                         if (c := self._conversation(link, message.feed_id, h)) is not None]
        if not conversations:
            return
        local = _local_counts(self.store, message.feed_id,
                              [c.follower.where.subfeed_hash for c, _count in conversations], self._subfeed)
        now = anyio.current_time()
        for conversation, count in conversations:
            held = local[conversation.follower.where.subfeed_hash]
            conversation.give(conversation.follower.on_subfeed_held(now, count, held))

    def on_provider_connected(self, link: ChannelLink, sender: str) -> None:
        """A provider has just connected to ``link``'s channel: the followers there that wait
        for their renewal publish their subscriptions now (batched: one message per feed and
        500 subfeeds), so an owner that was offline hears them and answers at once.

        At most once per :data:`RESUBSCRIBE_MIN_SECONDS` per channel, whoever sent it: when a
        hub restarts, every member reconnects at once, and each announcement must not cost a
        round of subscriptions. One that comes sooner is answered when that time is up."""
        if sender == link.node_id or link.channel in self._resubscribe_pending:
            return  # our own announcement heard back, or a round is already on its way
        now = anyio.current_time()
        wait = self._resubscribed_at.get(link.channel, -math.inf) + RESUBSCRIBE_MIN_SECONDS - now
        if wait <= 0:
            self._resubscribe(link, now)
            return
        assert self._task_group is not None, "FeedExchange.run() must be running"
        self._resubscribe_pending.add(link.channel)
        self._task_group.start_soon(self._resubscribe_later, link, wait)

    async def _resubscribe_later(self, link: ChannelLink, wait: float) -> None:
        try:
            await anyio.sleep(wait)
        finally:
            self._resubscribe_pending.discard(link.channel)
        self._resubscribe(link, anyio.current_time())

    def _resubscribe(self, link: ChannelLink, now: float) -> None:
        """Publish the subscriptions of the channel's followers that wait for their renewal."""
        self._resubscribed_at[link.channel] = now
        waiting = [c for where, c in self._conversations.items()
                   if where.channel == link.channel and c.follower.state is FollowerState.SUBSCRIBED]
        counts = self._renewal_counts(waiting)
        for conversation in waiting:
            for action in conversation.follower.on_provider_connected(
                    now, counts.get(conversation.follower.where.subfeed)):
                assert isinstance(action, Publish) and isinstance(action.message, SubscribeToSubfeed)
                self._batcher(link).add(action.message)
            self._schedule(conversation)  # its renewal moved

    def on_new_messages(self, link: ChannelLink, sender: str, message: NewSubfeedMessages) -> None:
        """Import an inline push (verified) if we follow its subfeed on any channel; a gap
        nudges this channel's follower back to the bucket."""
        if (message.feed_id, message.subfeed_hash) not in self._followed:
            return  # not following it (any more)
        subfeed = self._subfeed(message.feed_id, message.subfeed_hash)
        lines = list(message.lines)
        if self.witnesses_required(message.feed_id, message.subfeed_hash):
            assert self.gate is not None
            lines = self.gate.admit((message.feed_id, message.subfeed_hash),
                                    subfeed.get_num_local_messages(), lines)
            if not lines:
                return  # waiting for the witnesses (or nothing new)
        detail = ""
        try:
            subfeed.add_signed_messages(lines)
            outcome = InlineOutcome.STORED
        except kf.MissingMessagesError:
            outcome = InlineOutcome.GAP
        except kf.ForkError as exc:
            outcome, detail = InlineOutcome.FORK, str(exc)
            if self._on_fork is not None:
                self._on_fork(link, exc.proof)
        except kf.VerificationError as exc:
            outcome, detail = InlineOutcome.REJECTED, str(exc)
        conversation = self._conversation(link, message.feed_id, message.subfeed_hash)
        if conversation is not None:
            conversation.give(conversation.follower.on_new_messages(
                anyio.current_time(), outcome, sender, detail))
        else:  # heard on a channel we do not follow it on: nobody to nudge, but say what was wrong
            report = inline_report(subfeed.uri, outcome, sender, detail)
            if report is not None:
                log.log(report.severity, "%s", report.text)

    def witnesses_required(self, feed_id: str, subfeed_hash: str) -> int:
        """How many witnesses the owner requires for the subfeed before this follower accepts
        its messages (0 without a gate); tells the gate."""
        if self.gate is None:
            return 0
        k = self.policy_requirement(feed_id, subfeed_hash)
        self.gate.set_required((feed_id, subfeed_hash), k)
        return k

    def policy_requirement(self, feed_id: str, subfeed_hash: str) -> int:
        """How many witnesses the owner requires for the subfeed, per the local copy of the
        feed's policy subfeed (re-read when it grew)."""
        if subfeed_hash == POLICY_SUBFEED_HASH:
            return 0
        policy_subfeed = self._subfeed(feed_id, POLICY_SUBFEED_HASH)
        count = policy_subfeed.get_num_local_messages()
        read, policy = self._policies.get(feed_id, (0, {}))
        if count != read:
            policy = required_witnesses(policy_subfeed.get_messages())
            self._policies[feed_id] = (count, policy)
        return policy.get(subfeed_hash, 0)

    def release(self, link: ChannelLink, feed_id: str, subfeed_hash: str) -> None:
        """A checkpoint with enough witnesses arrived: import what was waiting for it."""
        if self.gate is None or (feed_id, subfeed_hash) not in self._followed:
            return
        subfeed = self.store.load_feed(feed_id).load_subfeed("~" + subfeed_hash)
        lines = self.gate.admit((feed_id, subfeed_hash), subfeed.get_num_local_messages())
        if not lines:
            return
        try:
            subfeed.add_signed_messages(lines)
        except kf.ForkError as exc:
            if self._on_fork is not None:
                self._on_fork(link, exc.proof)
            log.error("FORK in %s: %s", subfeed.uri, exc)
        except (kf.VerificationError, kf.MissingMessagesError) as exc:
            log.warning("witnessed messages of %s not imported: %s", subfeed.uri, exc)

    def _batcher(self, link: ChannelLink) -> _SubscriptionBatcher:
        batcher = self._batchers.get(link.channel)
        if batcher is None or batcher.link is not link:  # (a channel left and joined again)
            if batcher is not None:
                batcher.link = link
            else:
                batcher = self._batchers[link.channel] = _SubscriptionBatcher(link, self.store)
                assert self._task_group is not None, "FeedExchange.run() must be running"
                self._task_group.start_soon(batcher.run)
        return batcher

    def _subfeed(self, feed_id: str, subfeed_hash: str) -> kf.Subfeed:
        """The store's handle of a subfeed, reused (a push needs one, and its policy's)."""
        handle = self._subfeed_objects.get((feed_id, subfeed_hash))
        if handle is None:
            if len(self._subfeed_objects) >= SUBFEED_OBJECTS_KEPT:
                self._subfeed_objects.clear()
            handle = self._subfeed_objects[(feed_id, subfeed_hash)] = self.store.load_feed(
                feed_id).load_subfeed("~" + subfeed_hash)
        return handle

    def _conversation(self, link: ChannelLink, feed_id: str, subfeed_hash: str) -> _Conversation | None:
        return self._conversations.get(SubfeedOnChannel(link.channel, feed_id, subfeed_hash))

    # ------------------------------------------------------------------ one follower's task
    async def _drive(self, conversation: _Conversation) -> None:
        with conversation.scope:  # entered cancelled if unfollowed before it started
            await self._converse(conversation)

    async def _converse(self, conversation: _Conversation) -> None:
        follower, link = conversation.follower, conversation.link
        async with self._catch_ups:
            with anyio.move_on_after(FORK_READ_TIMEOUT_SECONDS):
                await self._learn_bucket_fork(link, conversation.subfeed)
        conversation.give(follower.start(anyio.current_time(), may_request="request-feeds" in link.roles))
        while True:
            conversation.wake = anyio.Event()  # before taking actions: a later give() wakes us
            while conversation.pending:
                action = conversation.pending.popleft()
                if isinstance(action, GiveUp):
                    return
                conversation.give(await self._carry_out(conversation, action))
            self._schedule(conversation)  # its deadline, if any, is the timer task's to keep
            await conversation.wake.wait()

    # ------------------------------------------------------------------ the followers' timers
    def _schedule(self, conversation: _Conversation) -> None:
        """Give the timer task the conversation's next deadline (if it has one and it moved)."""
        due = conversation.follower.next_deadline()
        if due == conversation.scheduled:
            return
        conversation.scheduled = due
        if due is None:
            return  # its old entry, if any, is now stale
        heapq.heappush(self._timers, (due, next(self._timer_order), conversation))
        if self._timer_wait is not None and due < self._timer_wait.deadline:
            self._timer_wait.deadline = due

    async def _run_timers(self) -> None:
        """Fire followers' deadlines as they come, those due together in one round."""
        while True:
            now = anyio.current_time()
            due: list[_Conversation] = []
            while self._timers and self._timers[0][0] <= now:
                deadline, _, conversation = heapq.heappop(self._timers)
                if conversation.scheduled != deadline or conversation.scope.cancel_called:
                    continue  # superseded by a later schedule, or unfollowed
                conversation.scheduled = None
                due.append(conversation)
            if due:
                await self._fire(now, due)
            with anyio.CancelScope(deadline=self._timers[0][0] if self._timers else math.inf) \
                    as self._timer_wait:
                await anyio.sleep_forever()
            self._timer_wait = None

    async def _fire(self, now: float, due: list[_Conversation]) -> None:
        """Tell each core its deadline passed, with the store's count (a renewal carries it): a
        plain renewal goes straight to the batcher; anything else wakes the follower's task.
        Other tasks (a live push) get a turn every :data:`TIMERS_PER_TURN` followers."""
        counts = self._renewal_counts(due)
        for i, conversation in enumerate(due):
            if i and i % TIMERS_PER_TURN == 0:
                await anyio.sleep(0)
            if conversation.scope.cancel_called:
                continue  # unfollowed while others had their turn
            actions = conversation.follower.on_timer(now, counts.get(conversation.follower.where.subfeed))
            rest: list[FollowerAction] = []
            for action in actions:
                if isinstance(action, Publish) and isinstance(action.message, SubscribeToSubfeed):
                    self._batcher(conversation.link).add(action.message)
                else:
                    rest.append(action)
            conversation.give(rest)
            if not rest:
                self._schedule(conversation)  # (else its task schedules once it carried them out)

    def _renewal_counts(self, due: list[_Conversation]) -> dict[tuple[str, str], int]:
        """The store's counts for the renewals of ``due`` (one query per feed when several of
        it are due); none for a subfeed whose messages wait in the gate: its renewal then reads
        the bucket, which is how a gated follower learns that a witness it did not trust then
        (granted since) made the checkpoint count."""
        by_feed: dict[str, list[_Conversation]] = {}
        for conversation in due:
            if self.gate is not None and self.gate.waiting(conversation.follower.where.subfeed):
                continue
            by_feed.setdefault(conversation.follower.where.feed_id, []).append(conversation)
        counts: dict[tuple[str, str], int] = {}
        for feed_id, conversations in by_feed.items():
            local = _local_counts(self.store, feed_id, [c.follower.where.subfeed_hash for c in conversations],
                                  self._subfeed)
            counts.update(((feed_id, h), n) for h, n in local.items())
        return counts

    async def _carry_out(self, conversation: _Conversation, action: FollowerAction) -> list[FollowerAction]:
        """Do ``action``; returns what the follower answers to its outcome."""
        link = conversation.link
        if isinstance(action, Report):
            log.log(action.severity, "%s", action.text)
        elif isinstance(action, Publish) and isinstance(action.message, SubscribeToSubfeed):
            self._batcher(link).add(action.message)
        elif isinstance(action, Publish):
            try:
                await link.publish(action.band, action.message.to_body(),
                                   attachment=action.message.attachment())
            except Exception as exc:  # the runtime reconnects; the core tries again at the renewal
                log.info("publishing %s on %s failed (%s); retrying later",
                         type(action.message).__name__, link.channel, exc)
        elif isinstance(action, ReadHead | ImportFromBucket):
            return await self._catch_up_step(conversation, action)
        else:
            raise AssertionError(f"unexpected follower action {action!r}")
        return []

    async def _catch_up_step(self, conversation: _Conversation,
                             action: ReadHead | ImportFromBucket) -> list[FollowerAction]:
        """Read the head, or import segments and tail, by the action's deadline; the I/O's
        outcome goes to the follower (whose own mistakes are not caught here)."""
        link, subfeed = conversation.link, conversation.subfeed
        failure, detail = None, ""
        head: bytes | None = None
        added = 0
        with anyio.CancelScope(deadline=action.deadline) as scope:
            async with self._catch_ups:  # within the deadline: a wait too long times out
                try:
                    gated = self.witnesses_required(action.where.feed_id, action.where.subfeed_hash)
                    if isinstance(action, ReadHead):
                        if gated:
                            await self._read_witnessed_checkpoint(link, action.where)
                        head = await _read_head(link, action.where)
                    else:
                        added = await _import_from_bucket(link, subfeed, action,
                                                          self.gate if gated else None)
                except kf.ForkError as exc:
                    failure, detail = CatchUpFailure.FORK, str(exc)
                    if self._on_fork is not None:
                        self._on_fork(link, exc.proof)
                except (kf.VerificationError, kf.MissingMessagesError) as exc:
                    failure, detail = CatchUpFailure.REJECTED, str(exc)
                except Exception as exc:  # transport errors (a missing segment among them)
                    failure, detail = CatchUpFailure.UNREACHABLE, f"{type(exc).__name__}: {exc}"
        if scope.cancelled_caught:
            failure = CatchUpFailure.TIMED_OUT
        follower, now, count = conversation.follower, anyio.current_time(), subfeed.get_num_local_messages()
        if failure is not None:
            return follower.on_catch_up_failed(now, failure, count, detail)
        if isinstance(action, ReadHead):
            return follower.on_head(now, head, count)
        return follower.on_imported(now, added, count)


    async def _learn_bucket_fork(self, link: ChannelLink, subfeed: kf.Subfeed) -> None:
        """Before following a subfeed on a channel, learn a fork proven there while this node was
        away (the bucket's ``.../fork``, spec/witness.md §5): verified and recorded, so nothing
        past the fork is accepted."""
        path = subfeed_fork_path(link.channel, subfeed.feed_id, subfeed.subfeed_hash)
        try:
            proof = await link.bucket_get(path)
        except Exception:  # absent (the usual case), or the bucket unreachable: the catch-up says
            return
        try:
            info = kf.verify_fork_proof(proof)
        except kf.VerificationError as exc:
            log.warning("ignoring the %s bucket's fork proof of %s: %s", link.channel, subfeed.uri, exc)
            return
        if (info.feed_id, info.subfeed_hash) != (subfeed.feed_id, subfeed.subfeed_hash):
            log.warning("ignoring the %s bucket's fork proof of %s: another subfeed's", link.channel,
                        subfeed.uri)
            return
        if proof not in subfeed.get_fork_proofs():
            self.store.record_fork_proof(proof)
            log.error("FORK in %s at message %d (proven in the %s bucket): no message at or past it "
                      "is accepted", subfeed.uri, info.position, link.channel)

    async def _read_witnessed_checkpoint(self, link: ChannelLink, where: SubfeedOnChannel) -> None:
        """Tell the gate about the bucket's witnessed checkpoint (a gated follower catching up)."""
        assert self.gate is not None
        try:
            data = await link.bucket_get(subfeed_checkpoint_path(where.channel, where.feed_id,
                                                                 where.subfeed_hash))
            obj = parse_witnessed_checkpoint(data)
        except (BucketObjectMissing, CheckpointError):
            return
        if (obj.checkpoint.feed_id, obj.checkpoint.subfeed_hash) == where.subfeed:
            self.gate.on_checkpoint(obj, lambda w: trusted_witness(link, w))


def trusted_witness(link: ChannelLink, witness: str) -> bool:
    """Witnesses whose cosignatures count toward an owner's requirement: the channel's hub and
    members of the channel (spec/witness.md §4.4)."""
    return witness == link.hub_id or link.may(witness, "request-feeds")


def _local_counts(store: kf.Store, feed_id: str, hashes: list[str],
                  subfeed: Callable[[str, str], kf.Subfeed] | None = None) -> dict[str, int]:
    """The store's count of each subfeed ``hashes`` of feed ``feed_id`` (0 for one it lacks):
    one by one for a few (an index seek each, through ``subfeed``'s reused handles if given),
    else in one query over the feed (``list_subfeeds``: more for one, far less for many)."""
    if len(hashes) <= COUNTS_ONE_BY_ONE:
        if subfeed is None:
            feed = store.load_feed(feed_id)
            return {h: feed.load_subfeed("~" + h).get_num_local_messages() for h in hashes}
        return {h: subfeed(feed_id, h).get_num_local_messages() for h in hashes}
    held = {s["subfeed_hash"]: s["num_messages"] for s in store.load_feed(feed_id).list_subfeeds()}
    return {h: held.get(h, 0) for h in hashes}


async def _read_head(link: ChannelLink, where: SubfeedOnChannel) -> bytes | None:
    try:
        return await link.bucket_get(where.head_path)
    except BucketObjectMissing:
        return None


async def _import_from_bucket(link: ChannelLink, subfeed: kf.Subfeed, action: ImportFromBucket,
                              gate: WitnessGate | None = None) -> int:
    """Import the action's segments, then its tail; returns how many messages were new. With a
    ``gate``, only what a checkpoint with enough witnesses covers is imported."""
    importer = feed_bucket.SegmentImporter(subfeed) if gate is None else _GatedImporter(subfeed, gate)
    try:
        await _download_and_import(link, action.where, action.segments, importer)
    except ExceptionGroup as group:  # the task group wraps even the importer's own error
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    importer.add_lines(list(action.tail))
    return importer.finish()


async def _download_and_import(link: ChannelLink, where: SubfeedOnChannel, indices: range,
                               importer: feed_bucket.SegmentImporter) -> None:
    """Download segments a few at a time ahead of the import, and import them in order in a
    worker thread, so that network waits overlap verification and the event loop stays free."""
    results: dict[int, anyio.Event | bytes] = {i: anyio.Event() for i in indices}
    slots = anyio.Semaphore(SEGMENT_DOWNLOADS_AHEAD)

    async def download(index: int) -> None:
        sink = _SegmentSink()
        await link.bucket_download(where.segment_path(index), sink)
        done = results[index]
        results[index] = bytes(sink.data)
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


class _SegmentSink:
    """A download's bytes gathered in memory (a segment: about 0.5 MB). Segments come through
    ``bucket_download``, straight off the socket in a worker thread, not ``bucket_get``: httpx
    hands a 0.5 MB body over in 64 KiB pieces through the event loop, which cost the catching-up
    daemon about a third of its CPU (py-spy, bench/network/run.py --only catchup)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write_blocking(self, piece: bytes | memoryview) -> None:
        self.data += piece


class _GatedImporter(feed_bucket.SegmentImporter):
    """A SegmentImporter that passes lines through a witness gate first (the rest wait there)."""

    def __init__(self, subfeed: kf.Subfeed, gate: WitnessGate) -> None:
        super().__init__(subfeed)
        self._gate = gate

    def add_lines(self, lines: list[bytes]) -> None:
        key = (self.subfeed.feed_id, self.subfeed.subfeed_hash)
        local = self.subfeed.get_num_local_messages() + len(self._pending)
        admitted = self._gate.admit(key, local, lines)
        if admitted:
            super().add_lines(admitted)

    def finish(self) -> int:
        self._pending = []  # lines past the witnessed checkpoint wait in the gate, not here
        return self.added

"""Feeds across nodes: following remote subfeeds and providing local ones (spec/node-protocol.md §Feeds).

:class:`FeedExchange` is the face the node runtime uses. It parses the feed bands' messages
(:mod:`kachery_node.protocol.feed_messages`) and hands each to the side it concerns:

* the **follower** side (``feed_follower_driver.py``, rules in ``protocol/feed_follower.py``)
  catches up from the bucket, keeps a subscription alive on each channel a subfeed is followed
  on, and imports what providers push or announce;
* the **provider** side (``feed_provider_driver.py``, rules in ``protocol/feed_provider.py``)
  answers subscriptions, pushes new local messages, keeps the buckets' copies up to date and
  remembers subscriptions across restarts (``provided_subscriptions.py``).

Every message is verified by kachery_feeds before it is stored; a fork raises ForkError, whose
proof is recorded in the store, logged and spread on the channel; the **witness** side
(``witness_driver.py``, spec/witness.md) gets provided subfeeds' checkpoints cosigned by the hub
and checks the checkpoints and fork notices other members publish.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import anyio
import anyio.abc

import kachery_feeds as kf
from kachery_feeds.checkpoints import WitnessedCheckpoint

from ..protocol import feed_messages, witness_messages
from ..protocol.feed_messages import (
    MalformedFeedMessage,
    NewSubfeedMessages,
    ProviderConnected,
    SubfeedOnChannel,
    SubfeedsHeld,
    SubfeedUploaded,
    SubscribeToSubfeed,
    SubscribeToSubfeeds,
)
from ..protocol.node_messages import Envelope
from ..protocol.witness_gate import WitnessGate
from ..storage.witness_state import Witness
from .channel_link import ChannelLink
from .feed_follower_driver import FollowerDriver, trusted_witness
from .feed_provider_driver import ProviderDriver
from .store_changes import ChangeBroadcaster
from .witness_driver import WitnessDriver

log = logging.getLogger("kachery.feeds")


class FeedExchange:
    """Follows remote subfeeds and provides local ones over the daemon's channels."""

    def __init__(
        self, store: kf.Store, changes: ChangeBroadcaster, subscriptions_path: Path | None = None,
        node_witness: Witness | None = None,
    ) -> None:
        self.store = store
        self.gate = WitnessGate()
        # A witness node checks messages before anyone has cosigned them: gating its own copy
        # on cosignatures (its own among them) would never let them in (spec/witness.md §4.4).
        self.following = FollowerDriver(store, self._fork_found,
                                        self.gate if node_witness is None else None)
        self.witnessing = WitnessDriver(store, self._verified_checkpoint, node_witness=node_witness,
                                        follow=self._follow_one, spawn=self._spawn,
                                        requirement=self.following.policy_requirement)
        self.providing = ProviderDriver(store, changes, subscriptions_path,
                                        self.witnessing.on_head_uploaded, self._pushed)
        self._task_group: anyio.abc.TaskGroup | None = None

    async def run(self, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        """Run both sides until cancelled."""
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            await tg.start(self.following.run)
            await tg.start(self.providing.run)
            task_status.started()

    def follow(self, links: Iterable[ChannelLink], feed_id: str, subfeed_hash: str) -> None:
        """Start following a remote subfeed on ``links`` (idempotent; keeps running)."""
        self.following.follow(links, feed_id, subfeed_hash)

    def unfollow(self, feed_id: str, subfeed_hash: str) -> bool:
        """Stop following a remote subfeed (its messages stay stored); False if not followed."""
        return self.following.unfollow(feed_id, subfeed_hash)

    def followed(self) -> list[tuple[str, str]]:
        """The subfeeds followed, as (feed ID, subfeed hash)."""
        return self.following.followed()

    def on_reconnect(self, link: ChannelLink) -> None:
        """A channel came (back) up: every follower on it catches up and re-subscribes now, and
        every live subscription there hears how far its subfeed goes."""
        self.following.on_reconnect(link)
        self.providing.on_connected(link)

    async def on_message(self, link: ChannelLink, band: str, env: Envelope) -> None:
        """Handle a verified envelope from ``band`` of ``link``'s channel."""
        if band not in (feed_messages.REQUEST_BAND, feed_messages.PROVIDE_BAND):
            return  # file and task messages reach every exchange; they are not ours to judge
        if env.body.get("type") in witness_messages.TYPES:
            await self._on_witness_message(link, band, env)
            return
        try:
            message = feed_messages.parse(band, env.body, env.attachment)
        except MalformedFeedMessage as exc:
            log.info("ignoring %s from %s: %s", env.body.get("type"), env.sender[:12], exc)
            return
        if isinstance(message, SubscribeToSubfeed | SubscribeToSubfeeds):
            await self.providing.on_subscribe(link, env.sender, message)
        elif isinstance(message, NewSubfeedMessages):
            self.following.on_new_messages(link, env.sender, message)
        elif isinstance(message, SubfeedUploaded):
            self.following.on_subfeed_uploaded(link, message)
        elif isinstance(message, SubfeedsHeld):
            self.following.on_subfeeds_held(link, message)
        elif isinstance(message, ProviderConnected):
            self.following.on_provider_connected(link, env.sender)

    def on_message_inline(self, link: ChannelLink, band: str, env: Envelope) -> bool:
        """Import a live push (``newSubfeedMessages``) at once, in the channel's receiving task
        (verifying and storing it waits for nothing); False for every other message, which
        :meth:`on_message` handles in a task of its own."""
        if band != feed_messages.PROVIDE_BAND or env.body.get("type") != feed_messages.NEW_MESSAGES:
            return False
        try:
            message = feed_messages.parse(band, env.body, env.attachment)
        except MalformedFeedMessage as exc:
            log.info("ignoring %s from %s: %s", env.body.get("type"), env.sender[:12], exc)
            return True
        assert isinstance(message, NewSubfeedMessages)
        self.following.on_new_messages(link, env.sender, message)
        return True

    async def _on_witness_message(self, link: ChannelLink, band: str, env: Envelope) -> None:
        try:
            message = witness_messages.parse(env.body, env.attachment)
        except MalformedFeedMessage as exc:
            log.info("ignoring %s from %s: %s", env.body.get("type"), env.sender[:12], exc)
            return
        if isinstance(message, witness_messages.ForkProof):
            await self.witnessing.on_fork_proof(link, env.sender, message)
        elif isinstance(message, witness_messages.CheckpointCosignature):
            if band == feed_messages.REQUEST_BAND:  # node witnesses publish as readers
                self._spawn(self.witnessing.on_cosignature, link, env.sender, message)
        elif band == feed_messages.PROVIDE_BAND:  # checkpoints come from providers only
            await self.witnessing.on_checkpoint(link, env.sender, message)

    def _pushed(self, link: ChannelLink, where: SubfeedOnChannel, count: int) -> None:
        """New messages went out inline: if their owner requires witnesses (this node holds the
        feed's policy), get them witnessed now rather than after the debounced head upload, so
        followers hold them for one witness round trip instead of half a second more. Called by
        the push itself: a task only when there is witnessing to do."""
        if self.following.policy_requirement(where.feed_id, where.subfeed_hash):
            self._spawn(self.witnessing.witness, link, where, count)

    def _spawn(self, fn, *args) -> None:
        if self._task_group is not None:
            self._task_group.start_soon(fn, *args)

    def _follow_one(self, link: ChannelLink, feed_id: str, subfeed_hash: str) -> None:
        """A node witness follows what it witnesses (on the channel it heard of it)."""
        self.following.follow([link], feed_id, subfeed_hash)

    def _fork_found(self, link: ChannelLink, proof: bytes) -> None:
        """An import found a fork: spread its proof (in a task: the import path does not wait)."""
        if self._task_group is not None:
            self._task_group.start_soon(self.witnessing.on_fork_found, link, proof)

    def _verified_checkpoint(self, link: ChannelLink, obj: WitnessedCheckpoint) -> None:
        """A witnessed checkpoint consistent with the local copy: messages waiting for their
        witnesses may go in now; beyond the local copy, catch up as after ``subfeedUploaded``."""
        feed_id, subfeed_hash, size = obj.checkpoint.feed_id, obj.checkpoint.subfeed_hash, obj.checkpoint.size
        if self.following.witnesses_required(feed_id, subfeed_hash) and self.gate.on_checkpoint(
                obj, lambda w: trusted_witness(link, w)):
            self.following.release(link, feed_id, subfeed_hash)
        local = self.store.load_feed(feed_id).load_subfeed("~" + subfeed_hash).get_num_local_messages()
        if size > local:
            self.following.on_subfeed_uploaded(link, SubfeedUploaded(feed_id, subfeed_hash, size))

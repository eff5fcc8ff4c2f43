"""The daemon's network side: joined channels and the exchanges that run over them.

:class:`NodeRuntime` owns one :class:`~kachery_node.daemon.channel_runtime.ChannelRuntime` per
channel in ``<storage>/channels.json`` (re-read every :data:`CHANNELS_POLL_SECONDS`, so
``kachery node join``/``leave`` take effect without a restart), the :class:`FeedExchange` and
the :class:`FileExchange`. Subfeeds that local clients asked to follow are remembered in
``<storage>/followed-subfeeds.db`` (kachery_node/storage/followed_subfeeds.py: one row written
per follow, not the whole list), so a restarted daemon resumes following them, with when
each was last read (asked for by a client, or read through the local API): one nobody has read
for ``[daemon.feeds] unfollow_idle`` seconds (config.toml; default 7 days) is unfollowed, its
messages kept. Other
nodes' live subscriptions to subfeeds provided here are kept in
``<storage>/provided-subscriptions.db`` (provided_subscriptions.py), so a restarted daemon goes
on serving them. The
feeds this node publishes (``<storage>/published-feeds.json``, kachery_node/feed_publications.py)
are re-read when that file changes, like channels.json.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

import trio

from ..config import NodeConfig, read_settings
from ..errors import ConfigError, KacheryError
from ..feed_publications import load_publications, publications_path
from ..identity import load_node_key
from ..joined_channels import load_memberships
from ..storage.followed_subfeeds import FollowedSubfeed, FollowedSubfeeds
from ..storage.node_storage import Storage
from ..storage.witness_state import Witness
from .channel_runtime import ChannelRuntime
from .feeds_exchange import FeedExchange
from .files_exchange import FileExchange, file_timeouts_from_settings
from .store_changes import ChangeBroadcaster
from .tasks_exchange import TaskExchange  # tasks (issue 6)

log = logging.getLogger("kachery.node")

CHANNELS_POLL_SECONDS = 2.0
UNFOLLOW_IDLE_SECONDS = 7 * 24 * 3600.0  # default of [daemon.feeds] unfollow_idle
LAST_READ_SAVE_SECONDS = 60.0  # a read refreshes the saved time at most this often
SUBSCRIPTIONS_FILE = "provided-subscriptions.db"  # other nodes' live subscriptions to our subfeeds


def unfollow_idle_from_settings(settings: dict[str, Any]) -> float:
    """``[daemon.feeds] unfollow_idle`` of config.toml: seconds a followed subfeed may go unread
    before the daemon stops following it (default :data:`UNFOLLOW_IDLE_SECONDS`)::

        [daemon.feeds]
        unfollow_idle = 86400   # one day

    Raises ConfigError for an unknown name or a value that is not a positive number."""
    table = settings.get("daemon", {}).get("feeds", {})
    if not isinstance(table, dict):
        raise ConfigError("[daemon.feeds] in config.toml must be a table")
    unknown = set(table) - {"unfollow_idle"}
    if unknown:
        raise ConfigError(f"unknown setting [daemon.feeds] {sorted(unknown)[0]} in config.toml "
                          "(known: unfollow_idle)")
    value = table.get("unfollow_idle", UNFOLLOW_IDLE_SECONDS)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"[daemon.feeds] unfollow_idle in config.toml must be a positive number "
                          f"of seconds, not {value!r}")
    return float(value)


class NotJoinedError(KacheryError):
    """The node has not joined the channel named (see `kachery node join`)."""


class MissingRoleError(KacheryError):
    """This node lacks the role an operation needs on the channel (see `kachery node status`)."""


class NodeRuntime:
    def __init__(self, storage: Storage, config: NodeConfig, changes: ChangeBroadcaster) -> None:
        self.storage = storage
        self.config = config
        self.node_key = load_node_key(storage.directory)
        settings = read_settings(storage.directory)
        node_witness = None
        if settings.get("witness") is True:  # `kachery node witness on` (spec/witness.md §4.3)
            node_witness = Witness(storage.directory / "witness", self.node_key.signing_key)
        self.feeds = FeedExchange(storage.feeds, changes, storage.directory / SUBSCRIPTIONS_FILE,
                                  node_witness)
        self.files = FileExchange(
            storage, timeouts=file_timeouts_from_settings(read_settings(storage.directory))
        )
        self.tasks = TaskExchange(storage.directory)  # tasks (issue 6)
        self.channels: dict[str, ChannelRuntime] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._channels_mtime: float | None = None
        self._publications_mtime: float | None = None
        self._followed_table = FollowedSubfeeds(storage.directory)
        rows = self._followed_table.rows()
        self._followed: dict[tuple[str, str], str | None] = {(r.feed_id, r.subfeed_hash): r.channel
                                                             for r in rows}
        self._last_read = {(r.feed_id, r.subfeed_hash): r.last_read for r in rows}  # wall-clock s
        self._last_read_saved = dict(self._last_read)
        self._oldest_read: float | None = None  # no last read is older (None: look)
        self.unfollow_idle = unfollow_idle_from_settings(read_settings(storage.directory))

    # ------------------------------------------------------------------ lifecycle
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.feeds.run)
            await nursery.start(self.files.run)
            await nursery.start(self.tasks.run)  # tasks (issue 6)
            self._sync_channels()
            self.reload_publications()
            task_status.started()
            while True:
                await trio.sleep(CHANNELS_POLL_SECONDS)
                self._sync_channels()
                self.reload_publications()
                self._unfollow_idle()

    def reload_publications(self, *, force: bool = False) -> None:
        """Hand the feed exchange the node's publications if their file changed (or ``force``)."""
        try:
            mtime: float | None = publications_path(self.storage.directory).stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime == self._publications_mtime and not force:
            return
        self._publications_mtime = mtime
        try:
            publications = load_publications(self.storage.directory)
        except ConfigError as exc:
            log.error("%s", exc)
            return
        self.feeds.providing.set_publications(publications)

    def _sync_channels(self) -> None:
        path = self.storage.directory / "channels.json"
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            mtime = None
        if mtime == self._channels_mtime:
            return
        self._channels_mtime = mtime
        try:
            entries = load_memberships(self.storage.directory)
        except ConfigError as exc:
            log.error("%s", exc)
            return
        for name in list(self.channels):
            if name not in entries:
                log.info("left channel %s", name)
                self._scopes.pop(name).cancel()
                del self.channels[name]
        for name, entry in entries.items():
            if name in self.channels:
                continue
            runtime = ChannelRuntime(
                channel=name,
                entry=entry,
                node_key=self.node_key,
                store=self.storage.feeds,
                # Each message goes to the one exchange of its band's flow (protocol/roles.py).
                handlers={"files": self.files.on_message, "feeds": self.feeds.on_message,
                          "tasks": self.tasks.on_message},
                inline_handlers={"feeds": self.feeds.on_message_inline,
                                 "tasks": self.tasks.on_message_inline},
                on_connected=self._on_connected,
            )
            self.channels[name] = runtime
            assert self._nursery is not None
            self._nursery.start_soon(self._run_channel, runtime)
            log.info("joined channel %s on %s", name, entry.get("hub_url"))

    async def _run_channel(self, runtime: ChannelRuntime) -> None:
        with trio.CancelScope() as scope:
            self._scopes[runtime.channel] = scope
            try:
                await runtime.run()
            finally:
                with trio.CancelScope(shield=True):
                    await runtime.aclose()

    async def _on_connected(self, runtime: ChannelRuntime) -> None:
        """After (re)connecting: follow remembered subfeeds there and catch up on each."""
        for (feed_id, subfeed_hash), channel in self._followed.items():
            if channel in (None, runtime.channel):
                self.feeds.follow([runtime], feed_id, subfeed_hash)
        self.feeds.on_reconnect(runtime)

    # ------------------------------------------------------------------ for the local API
    def links(self, channel: str | None = None) -> list[ChannelRuntime]:
        """The joined channels to use: all of them, or the one named."""
        if channel is None:
            return list(self.channels.values())
        if channel not in self.channels:
            joined = ", ".join(self.channels) or "none"
            raise NotJoinedError(
                f"this node has not joined channel {channel!r} (joined: {joined}); "
                f"run `kachery node join {channel} --hub URL`"
            )
        return [self.channels[channel]]

    def follow(self, feed_id: str, subfeed_hash: str, channel: str | None = None) -> list[str]:
        """Follow a remote subfeed (remembered across restarts); returns the channels used."""
        return self.follow_many([(feed_id, subfeed_hash)], channel)

    def follow_many(self, subfeeds: Iterable[tuple[str, str]], channel: str | None = None) -> list[str]:
        """Follow remote subfeeds, as (feed ID, subfeed hash), on ``channel`` (None: every
        joined channel); remembered across restarts, all in one write. Returns the channels
        used."""
        links = self.links(channel)
        # Refuse only when every channel's membership is known: one still connecting may have it.
        if links and all(link.membership is not None and "request-feeds" not in link.roles
                         for link in links):
            where = ", ".join(f"{link.channel} ({' '.join(sorted(link.roles)) or 'no roles'})"
                              for link in links)
            raise MissingRoleError(
                f"this node does not have the request-feeds role on any channel it could follow "
                f"this subfeed on: {where}; the channel owner can grant it with "
                f"`kachery channel grant <channel> {self.config.node_id} request-feeds`"
            )
        now = time.time()
        new: list[FollowedSubfeed] = []
        subfeeds = list(dict.fromkeys(subfeeds))
        for key in subfeeds:
            if self._followed.get(key, False) == channel:
                self.touch(*key)  # followed already: a read (saved now and then)
            else:
                self._followed[key] = channel
                self._last_read[key] = self._last_read_saved[key] = now
                new.append(FollowedSubfeed(key[0], key[1], channel, now))
        self._followed_table.put(new)  # before following: a follow answered is remembered
        for feed_id, subfeed_hash in subfeeds:
            self.feeds.follow(links, feed_id, subfeed_hash)
        return [link.channel for link in links]

    def unfollow(self, feed_id: str, subfeed_hash: str) -> bool:
        """Stop following a remote subfeed (and forget it across restarts); its messages stay.
        False if it was not followed."""
        key = (feed_id, subfeed_hash)
        known = self._followed.pop(key, False) is not False
        self._last_read.pop(key, None)
        self._last_read_saved.pop(key, None)
        known = self._followed_table.remove(feed_id, subfeed_hash) or known
        return self.feeds.unfollow(feed_id, subfeed_hash) or known

    def touch(self, feed_id: str, subfeed_hash: str) -> None:
        """A followed subfeed was read: it is not idle (its row updated now and then)."""
        key = (feed_id, subfeed_hash)
        if key not in self._followed:
            return
        now = self._last_read[key] = time.time()
        if now - self._last_read_saved.get(key, 0.0) >= LAST_READ_SAVE_SECONDS:
            self._last_read_saved[key] = now
            self._followed_table.set_last_read(feed_id, subfeed_hash, now)

    def _unfollow_idle(self) -> None:
        cutoff = time.time() - self.unfollow_idle
        if self._oldest_read is not None and self._oldest_read >= cutoff:
            return  # none can be idle yet: no O(N) scan every 2 s (reads only move times forward)
        self._oldest_read = min(self._last_read.values(), default=None)
        for (feed_id, subfeed_hash), last in list(self._last_read.items()):
            if last < cutoff:
                log.info("unfollowing feed://%s/~%s: nobody read it for %g s ([daemon.feeds] "
                         "unfollow_idle); its messages stay", feed_id, subfeed_hash, self.unfollow_idle)
                self.unfollow(feed_id, subfeed_hash)

    def describe_channels(self) -> list[dict[str, Any]]:
        return [runtime.describe() for runtime in self.channels.values()]

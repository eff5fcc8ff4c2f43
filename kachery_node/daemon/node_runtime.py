"""The daemon's network side: joined channels and the exchanges that run over them.

:class:`NodeRuntime` owns one :class:`~kachery_node.daemon.channel_runtime.ChannelRuntime` per
channel in ``<storage>/channels.json`` (re-read every :data:`CHANNELS_POLL_SECONDS`, so
``kachery node join``/``leave`` take effect without a restart), the :class:`FeedExchange` and
the :class:`FileExchange`. Subfeeds that local clients asked to follow are remembered in
``<storage>/followed-subfeeds.json``, so a restarted daemon resumes following them; other
nodes' live subscriptions to subfeeds provided here are kept in
``<storage>/provided-subscriptions.json``, so a restarted daemon goes on serving them.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import trio

from ..config import NodeConfig, read_settings
from ..errors import ConfigError, KacheryError
from ..identity import load_node_key
from ..joined_channels import load_memberships
from ..storage.node_storage import Storage
from .channel_runtime import ChannelRuntime
from .feeds_exchange import FeedExchange
from .files_exchange import FileExchange, file_timeouts_from_settings
from .store_changes import ChangeBroadcaster
from .tasks_exchange import TaskExchange  # tasks (issue 6)

log = logging.getLogger("kachery.node")

CHANNELS_POLL_SECONDS = 2.0
FOLLOWED_FILE = "followed-subfeeds.json"
SUBSCRIPTIONS_FILE = "provided-subscriptions.json"  # other nodes' live subscriptions to our subfeeds


class NotJoinedError(KacheryError):
    """The node has not joined the channel named (see `kachery node join`)."""


class MissingRoleError(KacheryError):
    """This node lacks the role an operation needs on the channel (see `kachery node status`)."""


class NodeRuntime:
    def __init__(self, storage: Storage, config: NodeConfig, changes: ChangeBroadcaster) -> None:
        self.storage = storage
        self.config = config
        self.node_key = load_node_key(storage.directory)
        self.feeds = FeedExchange(storage.feeds, changes, storage.directory / SUBSCRIPTIONS_FILE)
        self.files = FileExchange(
            storage, timeouts=file_timeouts_from_settings(read_settings(storage.directory))
        )
        self.tasks = TaskExchange(storage.directory)  # tasks (issue 6)
        self.channels: dict[str, ChannelRuntime] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        self._channels_mtime: float | None = None
        self._followed_path = storage.directory / FOLLOWED_FILE
        self._followed: dict[tuple[str, str], str | None] = self._load_followed()

    # ------------------------------------------------------------------ lifecycle
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.feeds.run)
            await nursery.start(self.files.run)
            await nursery.start(self.tasks.run)  # tasks (issue 6)
            self._sync_channels()
            task_status.started()
            while True:
                await trio.sleep(CHANNELS_POLL_SECONDS)
                self._sync_channels()

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
        if self._followed.get((feed_id, subfeed_hash), "unset") != channel:  # a repeat writes nothing
            self._followed[(feed_id, subfeed_hash)] = channel
            self._save_followed()
        self.feeds.follow(links, feed_id, subfeed_hash)
        return [link.channel for link in links]

    def describe_channels(self) -> list[dict[str, Any]]:
        return [runtime.describe() for runtime in self.channels.values()]

    # ------------------------------------------------------------------ persistence
    def _load_followed(self) -> dict[tuple[str, str], str | None]:
        try:
            rows = json.loads(self._followed_path.read_text())
            return {(r["feed_id"], r["subfeed_hash"]): r.get("channel") for r in rows}
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError) as exc:
            log.error("ignoring unreadable %s: %s", self._followed_path, exc)
            return {}

    def _save_followed(self) -> None:
        rows = [{"feed_id": f, "subfeed_hash": s, "channel": c} for (f, s), c in self._followed.items()]
        tmp = Path(str(self._followed_path) + ".tmp")
        tmp.write_text(json.dumps(rows, indent=1))
        os.replace(tmp, self._followed_path)

"""A channel's health figures for its owner: disk use and quota of the embedded bucket,
connected nodes, relay traffic. ``kachery hub status`` and the web UI show them; only the
channel's owner may see them (the hub has no other administrator)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import Hub
    from .state import Channel


def channel_status(hub: Hub, ch: Channel, now_ms: int) -> dict[str, Any]:
    """The figures of channel ``ch`` (the caller checked that the asker owns it)."""
    usage = hub.bucket.index.channel_usage(ch.name)
    quota = hub.quota_of(ch.name)
    nodes = []
    for n in hub.state.members(ch.name):
        limits = hub.relay.nodes.get((ch.name, n["node"]))
        nodes.append({"node": n["node"], "label": n["label"], **hub.presence(ch.name, n["node"], now_ms),
                      "relay_connections": limits.connections if limits is not None else 0})
    return {
        "channel": ch.name,
        "bucket": {"backend": (ch.config.get("bucket") or {}).get("backend", "embedded"),
                   **usage.to_json(), "quota_bytes": quota,
                   "quota_from": "channel" if ch.quota_bytes is not None else "hub default"},
        "nodes": nodes,
        "online": sum(1 for n in nodes if n["online"]),
        "relay": hub.relay.traffic.of(ch.name).to_json(),
    }


def hub_status(hub: Hub, user: str, now_ms: int | None = None) -> dict[str, Any]:
    """What ``user`` may see of the hub's health: each channel they own."""
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    return {"hub_id": hub.state.hub_id, "url": hub.public_url,
            "since_ms": hub.relay.traffic.started_ms,
            "channel_quota_default": hub.settings.channel_quota,
            "channels": [channel_status(hub, ch, now) for ch in hub.state.channels(owner_id=user)]}

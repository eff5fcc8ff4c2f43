"""The node's own record of the channels it joined: ``<storage>/channels.json``.

Written by ``kachery node join`` / ``leave``; read by the daemon. One entry per channel::

    {"channels": {"lab": {"hub_url": "http://127.0.0.1:8080", "hub_id": "<64 hex>",
                          "feed_id": "<64 hex: the channel's membership feed>",
                          "roles": ["request-files", ...],           # what the owner asked for
                          "bucket_url": "<where the bucket's objects are read>",
                          "bucket": {"backend": "embedded", "read_url": ...},  # channel_info's
                          "joined_ms": 1700000000000}}}

``bucket`` (saved since daemon-less reads; :mod:`kachery_node.channel_buckets` fills it in from
the hub when it is missing) lets a process with no daemon read the channel's bucket.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import ConfigError

FILENAME = "channels.json"


def load_memberships(storage_dir: Path | str) -> dict[str, dict[str, Any]]:
    """Channel name -> membership entry (empty if the node joined none)."""
    path = Path(storage_dir) / FILENAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    channels = data.get("channels") if isinstance(data, dict) else None
    if not isinstance(channels, dict):
        raise ConfigError(f"{path} has no 'channels' object")
    return channels


def _write(storage_dir: Path, channels: dict) -> None:
    path = Path(storage_dir) / FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(FILENAME + ".tmp")
    tmp.write_text(json.dumps({"channels": channels}, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)  # atomic: the daemon never reads half a file


def save_membership(storage_dir: Path | str, channel: str, entry: dict[str, Any]) -> None:
    channels = load_memberships(storage_dir)
    channels[channel] = entry
    _write(Path(storage_dir), channels)


def remove_membership(storage_dir: Path | str, channel: str) -> bool:
    """Forget a channel; returns False if the node had not joined it."""
    channels = load_memberships(storage_dir)
    if channels.pop(channel, None) is None:
        return False
    _write(Path(storage_dir), channels)
    return True

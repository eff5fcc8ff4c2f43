"""Other nodes' live subscriptions to subfeeds provided here, saved across daemon restarts.

The file (``<storage>/provided-subscriptions.json``, see node_runtime.py) is a JSON list of
``{"channel", "feed_id", "subfeed_hash", "expires"}`` with ``expires`` in wall-clock seconds.
Which rows to save and what to do with them on start is decided by
:class:`~kachery_node.protocol.feed_provider.FeedProvider`; this module only reads and writes
them. An unreadable file is logged and treated as empty: losing it costs readers at most one
renewal period.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import kachery_feeds as kf

from ..protocol.feed_messages import SavedSubscription

log = logging.getLogger("kachery.feeds")


def load_subscriptions(path: Path | None) -> list[SavedSubscription]:
    """The rows saved at ``path`` (none if ``path`` is None, missing or unreadable)."""
    if path is None:
        return []
    try:
        rows = json.loads(path.read_text())
        return [SavedSubscription(str(r["channel"]), kf.normalize_feed_id(r["feed_id"]),
                                  kf.subfeed_hash("~" + r["subfeed_hash"]), float(r["expires"]))
                for r in rows]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError) as exc:  # kf.InvalidUriError is a ValueError
        log.error("ignoring unreadable %s: %s", path, exc)
        return []


def save_subscriptions(path: Path | None, rows: tuple[SavedSubscription, ...]) -> None:
    """Replace the file at ``path`` with ``rows`` atomically (nothing if ``path`` is None)."""
    if path is None:
        return
    data = [{"channel": r.channel, "feed_id": r.feed_id, "subfeed_hash": r.subfeed_hash,
             "expires": round(r.expires, 3)} for r in rows]
    tmp = Path(str(path) + ".tmp")
    try:
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not save subscriptions to %s: %s", path, exc)

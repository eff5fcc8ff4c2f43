"""Other nodes' live subscriptions to subfeeds provided here, saved across daemon restarts.

A SQLite table (``<storage>/provided-subscriptions.db``, see node_runtime.py): one row per
subscription, ``(channel, feed_id, subfeed_hash, expires)`` with ``expires`` in wall-clock
seconds. Which rows to save and what to do with them on start is decided by
:class:`~kachery_node.protocol.feed_provider.FeedProvider`; this module only reads and writes
them. A save writes only the rows it is given (the subscriptions made or renewed since the
last save) and deletes the expired ones, in one transaction: saving at every subscription
costs what changed, not every subscription, and a process killed right after a save has lost
nothing (WAL). A ``provided-subscriptions.json`` left by an older daemon (a JSON list of those
rows) is taken in on first open and then removed; an unreadable one is logged and ignored:
losing it costs readers at most one renewal period.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import kachery_feeds as kf

from ..protocol.feed_messages import SavedSubscription, SaveSubscriptions
from ..storage.sqlite_tables import immediate_transaction, open_table_file

log = logging.getLogger("kachery.feeds")


class ProvidedSubscriptions:
    """The saved subscriptions at ``path`` (a SQLite file; nothing is saved if ``path`` is
    None). Used by the provider driver's task only."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        if path is None:
            return
        try:
            conn = open_table_file(path)
            conn.execute("CREATE TABLE IF NOT EXISTS subscriptions (channel TEXT NOT NULL, "
                         "feed_id TEXT NOT NULL, subfeed_hash TEXT NOT NULL, expires REAL NOT NULL, "
                         "PRIMARY KEY (channel, feed_id, subfeed_hash)) WITHOUT ROWID")
            conn.execute("CREATE INDEX IF NOT EXISTS subscriptions_expires ON subscriptions (expires)")
        except (OSError, sqlite3.Error) as exc:
            log.error("cannot keep subscriptions in %s (they will not survive a restart): %s", path, exc)
            return
        self._conn = conn
        if path.suffix != ".json":  # (a caller naming the table's file *.json has no older file)
            self._migrate(path.with_suffix(".json"))

    def load(self) -> list[SavedSubscription]:
        """The rows saved (none without a file)."""
        if self._conn is None:
            return []
        rows = self._conn.execute(
            "SELECT channel, feed_id, subfeed_hash, expires FROM subscriptions").fetchall()
        return [SavedSubscription(*row) for row in rows]

    def save(self, action: SaveSubscriptions) -> None:
        """Carry out ``action``: upsert its rows, drop the expired ones."""
        if self._conn is None:
            return
        values = [(r.channel, r.feed_id, r.subfeed_hash, round(r.expires, 3)) for r in action.rows]
        try:
            with immediate_transaction(self._conn):
                self._conn.executemany("INSERT OR REPLACE INTO subscriptions VALUES (?, ?, ?, ?)", values)
                self._conn.execute("DELETE FROM subscriptions WHERE expires <= ?", (action.expired_before,))
        except sqlite3.Error as exc:
            log.warning("could not save subscriptions to %s: %s", self.path, exc)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _migrate(self, legacy: Path) -> None:
        """Take in an older daemon's JSON file, then remove it (killed in between, the next
        start takes it in again: the same rows, replaced by themselves)."""
        try:
            rows = json.loads(legacy.read_text())
            saved = [SavedSubscription(str(r["channel"]), kf.normalize_feed_id(r["feed_id"]),
                                       kf.subfeed_hash("~" + r["subfeed_hash"]), float(r["expires"]))
                     for r in rows]
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError) as exc:  # kf.InvalidUriError is a ValueError
            log.error("ignoring unreadable %s: %s", legacy, exc)
            saved = []
        self.save(SaveSubscriptions(tuple(saved)))
        legacy.unlink(missing_ok=True)

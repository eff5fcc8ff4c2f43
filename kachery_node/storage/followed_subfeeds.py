"""The remote subfeeds a node's daemon follows, remembered across restarts.

A SQLite table in ``<storage>/followed-subfeeds.db`` (spec/node-protocol.md §Feeds, "Reader"):
one row per followed subfeed, ``(feed_id, subfeed_hash, channel, last_read)``, ``channel``
None meaning every joined channel and ``last_read`` wall-clock seconds. Each follow, unfollow
or refreshed read time writes only its own rows, in one transaction (WAL: a process killed
right after a call returns has lost nothing), so following N subfeeds costs O(N), not the
O(N^2) of rewriting a whole file at each follow.

The daemon (kachery_node/daemon/node_runtime.py) writes it; ``kachery feed followed`` reads it
and ``kachery feed unfollow`` edits it when no daemon runs. A ``followed-subfeeds.json`` left
by an older daemon (a JSON list of those rows) is taken in on first open and then removed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .sqlite_tables import immediate_transaction, open_table_file

log = logging.getLogger("kachery.node")

DB_FILE = "followed-subfeeds.db"
LEGACY_JSON_FILE = "followed-subfeeds.json"  # written by daemons before this table


@dataclass(frozen=True)
class FollowedSubfeed:
    """One followed subfeed: on ``channel`` (None: every joined channel), last read at
    ``last_read`` (wall-clock seconds)."""

    feed_id: str
    subfeed_hash: str
    channel: str | None
    last_read: float

    @property
    def uri(self) -> str:
        return f"feed://{self.feed_id}/~{self.subfeed_hash}"


class FollowedSubfeeds:
    """The followed-subfeeds table of one storage directory (safe across threads and
    processes; every method is one transaction)."""

    def __init__(self, storage_dir: Path) -> None:
        self.path = Path(storage_dir) / DB_FILE
        self._lock = threading.Lock()
        self._conn = open_table_file(self.path)
        # rowid keeps the order subfeeds were first followed in (an upsert keeps the row's rowid).
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS followed (feed_id TEXT NOT NULL, subfeed_hash TEXT NOT NULL, "
            "channel TEXT, last_read REAL NOT NULL, UNIQUE (feed_id, subfeed_hash))")
        self._migrate(Path(storage_dir) / LEGACY_JSON_FILE)

    def close(self) -> None:
        self._conn.close()

    def rows(self) -> list[FollowedSubfeed]:
        """Every followed subfeed, in the order they were first followed."""
        with self._lock:
            found = self._conn.execute(
                "SELECT feed_id, subfeed_hash, channel, last_read FROM followed ORDER BY rowid").fetchall()
        return [FollowedSubfeed(*row) for row in found]

    def put(self, rows: Iterable[FollowedSubfeed]) -> None:
        """Add or update ``rows`` (one transaction)."""
        values = [(r.feed_id, r.subfeed_hash, r.channel, r.last_read) for r in rows]
        if not values:
            return
        with self._lock, immediate_transaction(self._conn):
            self._conn.executemany(
                "INSERT INTO followed (feed_id, subfeed_hash, channel, last_read) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (feed_id, subfeed_hash) DO UPDATE SET channel = excluded.channel, "
                "last_read = excluded.last_read", values)

    def set_last_read(self, feed_id: str, subfeed_hash: str, last_read: float) -> None:
        """Record a read of a followed subfeed (nothing if it is not followed)."""
        with self._lock:
            self._conn.execute("UPDATE followed SET last_read = ? WHERE feed_id = ? AND subfeed_hash = ?",
                               (last_read, feed_id, subfeed_hash))

    def remove(self, feed_id: str, subfeed_hash: str) -> bool:
        """Forget a followed subfeed; False if it was not followed."""
        with self._lock:
            cursor = self._conn.execute("DELETE FROM followed WHERE feed_id = ? AND subfeed_hash = ?",
                                        (feed_id, subfeed_hash))
        return cursor.rowcount > 0

    def _migrate(self, legacy: Path) -> None:
        """Take in an older daemon's JSON file (once: the table then holds its rows) and remove
        it. Killed between the commit and the removal, the next open sees the file again and
        only removes it (``user_version`` 1 says it was taken in)."""
        try:
            text = legacy.read_text()
        except FileNotFoundError:
            return
        with self._lock:
            migrated = self._conn.execute("PRAGMA user_version").fetchone()[0] >= 1
        if not migrated:
            try:
                now = time.time()  # a row of a still older daemon has no last_read: count from now
                rows = [FollowedSubfeed(str(r["feed_id"]), str(r["subfeed_hash"]), r.get("channel"),
                                        float(r.get("last_read", now))) for r in json.loads(text)]
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                log.error("ignoring unreadable %s: %s", legacy, exc)
                rows = []
            with self._lock, immediate_transaction(self._conn):
                self._conn.executemany(
                    "INSERT OR IGNORE INTO followed (feed_id, subfeed_hash, channel, last_read) "
                    "VALUES (?, ?, ?, ?)",
                    [(r.feed_id, r.subfeed_hash, r.channel, r.last_read) for r in rows])
                self._conn.execute("PRAGMA user_version = 1")
            log.info("moved %d followed subfeeds from %s to %s", len(rows), legacy.name, self.path.name)
        legacy.unlink(missing_ok=True)


def read_followed(storage_dir: Path) -> list[FollowedSubfeed]:
    """The followed subfeeds of a storage directory, for a reader with no daemon of its own
    (``kachery feed followed``): nothing if none was ever followed."""
    if not (Path(storage_dir) / DB_FILE).exists() and not (Path(storage_dir) / LEGACY_JSON_FILE).exists():
        return []
    table = FollowedSubfeeds(Path(storage_dir))
    try:
        return table.rows()
    finally:
        table.close()

"""The embedded bucket's index: each object's size and last access, and each channel's totals.

Kept in SQLite at ``<bucket root>/.index.db`` (no object key starts with ``.``), so that a
channel's disk use is known without walking its directories and its objects can be taken least
recently used first (hub/bucket_quota.py). The objects on disk are the truth; the index follows
them:

* it is built by walking the bucket when the file is missing (last access: the file's mtime),
  and reconciled the same way (known access times kept, vanished objects dropped, new ones
  added) when the previous run did not close it (a crash between an object's rename and its
  row, or objects copied in by hand);
* an access (GET or HEAD) is remembered in memory and written in batches, at most every
  :data:`ACCESS_FLUSH_S` seconds or :data:`ACCESS_PENDING_MAX` keys, before any eviction, and at
  close: serving an object costs no database write.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator

from .object_files import ObjectFiles

INDEX_NAME = ".index.db"
ACCESS_FLUSH_S = 30.0
ACCESS_PENDING_MAX = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (key TEXT PRIMARY KEY, channel TEXT NOT NULL,
    size INTEGER NOT NULL, refetchable INTEGER NOT NULL, accessed_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS objects_lru ON objects (channel, refetchable, accessed_ms);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def is_refetchable(key: str) -> bool:
    """Whether an object can be evicted: file contents and chunks (``<channel>/sha1/…``), which
    a provider uploads again when a requester asks. Heads, segments and task results are not
    (spec/bucket.md §6)."""
    parts = key.split("/", 2)
    return len(parts) == 3 and parts[1] == "sha1"


class ChannelUsage:
    """One channel's objects on disk: how many, their bytes, and the bytes that may be evicted."""

    __slots__ = ("bytes", "objects", "refetchable_bytes")

    def __init__(self, objects: int = 0, size: int = 0, refetchable_bytes: int = 0) -> None:
        self.objects, self.bytes, self.refetchable_bytes = objects, size, refetchable_bytes

    def add(self, key: str, size: int, sign: int = 1) -> None:
        self.objects += sign
        self.bytes += sign * size
        if is_refetchable(key):
            self.refetchable_bytes += sign * size

    def to_json(self) -> dict[str, int]:
        return {"objects": self.objects, "bytes": self.bytes, "refetchable_bytes": self.refetchable_bytes}


def _now_ms() -> int:
    return int(time.time() * 1000)


class ObjectIndex:
    """The index of the objects of ``files`` (see the module docstring). Not thread-safe: the
    hub calls it from its event loop only."""

    def __init__(self, files: ObjectFiles) -> None:
        self.files = files
        path = files.root / INDEX_NAME
        fresh = not path.exists()
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        clean = self.db.execute("SELECT value FROM meta WHERE name='clean'").fetchone()
        self.rebuilt = fresh or clean is None or clean[0] != "1"
        if self.rebuilt:
            self._reconcile()
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('clean', '0')")  # until close()
        self.usage: dict[str, ChannelUsage] = {}
        for channel, count, size, refetchable in self.db.execute(
                "SELECT channel, COUNT(*), SUM(size), SUM(size * refetchable) FROM objects GROUP BY channel"):
            self.usage[channel] = ChannelUsage(count, size, refetchable)
        self._accessed: dict[str, int] = {}
        self._flushed_at = time.monotonic()

    def close(self) -> None:
        self.flush_accesses()
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('clean', '1')")
        self.db.close()

    def _reconcile(self) -> None:
        """Make the rows match the files: keep the access times of known objects, take a new
        object's mtime as its last access, drop rows of vanished objects."""
        known = {key: accessed for key, accessed in self.db.execute("SELECT key, accessed_ms FROM objects")}
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("DELETE FROM objects")
            for key, st in self.files.objects():
                accessed = known.get(key, int(st.st_mtime * 1000))
                self.db.execute("INSERT INTO objects VALUES (?,?,?,?,?)",
                                (key, key.split("/", 1)[0], st.st_size, int(is_refetchable(key)), accessed))
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def channel_usage(self, channel: str) -> ChannelUsage:
        """What ``channel``'s objects take (zeros for a channel with none)."""
        return self.usage.get(channel) or ChannelUsage()

    def size_of(self, key: str) -> int | None:
        row = self.db.execute("SELECT size FROM objects WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def record(self, key: str, size: int, now_ms: int | None = None) -> None:
        """Object ``key`` was (re)written with ``size`` bytes: it counts as accessed now."""
        channel = key.split("/", 1)[0]
        usage = self.usage.setdefault(channel, ChannelUsage())
        old = self.size_of(key)
        if old is not None:
            usage.add(key, old, -1)
        self.db.execute("INSERT OR REPLACE INTO objects VALUES (?,?,?,?,?)",
                        (key, channel, size, int(is_refetchable(key)), now_ms or _now_ms()))
        usage.add(key, size)
        self._accessed.pop(key, None)

    def forget(self, keys: list[tuple[str, int]]) -> None:
        """Objects ``(key, size)`` were removed."""
        self.db.executemany("DELETE FROM objects WHERE key=?", [(k,) for k, _size in keys])
        for key, size in keys:
            self.channel_usage(key.split("/", 1)[0]).add(key, size, -1)
            self._accessed.pop(key, None)

    def forget_channel(self, channel: str) -> None:
        """Every object of ``channel`` was removed."""
        self.db.execute("DELETE FROM objects WHERE channel=?", (channel,))
        self.usage.pop(channel, None)
        prefix = channel + "/"
        for key in [k for k in self._accessed if k.startswith(prefix)]:
            del self._accessed[key]

    def note_access(self, key: str, now_ms: int | None = None) -> None:
        """Object ``key`` was read: remembered now, written with the next batch."""
        self._accessed[key] = now_ms or _now_ms()
        if (len(self._accessed) >= ACCESS_PENDING_MAX
                or time.monotonic() - self._flushed_at >= ACCESS_FLUSH_S):
            self.flush_accesses()

    def flush_accesses(self) -> None:
        """Write the remembered accesses (one transaction)."""
        self._flushed_at = time.monotonic()
        if not self._accessed:
            return
        pending, self._accessed = self._accessed, {}
        self.db.execute("BEGIN")
        self.db.executemany("UPDATE objects SET accessed_ms=MAX(accessed_ms, ?) WHERE key=?",
                            [(ms, key) for key, ms in pending.items()])
        self.db.execute("COMMIT")

    def least_recently_used(self, channel: str, exclude: str = "") -> Iterator[tuple[str, int]]:
        """``channel``'s refetchable objects ``(key, size)``, least recently accessed first
        (``exclude``, the object being written, left out)."""
        self.flush_accesses()
        rows = self.db.execute("SELECT key, size FROM objects WHERE channel=? AND refetchable=1 "
                               "ORDER BY accessed_ms, key", (channel,))
        for key, size in rows:
            if key != exclude:
                yield key, size

"""Mutables: a small local key-value store with JSON keys and values (``<storage>/mutables.db``).

Local only, as in the original: nothing here is shared over the network. A key is a string or
any JSON value; it is stored as its compact, sorted-key JSON text so that ``{"a":1,"b":2}`` and
``{"b":2,"a":1}`` name the same entry. Values are JSON (numpy values allowed, as in
store_json).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from ..errors import InvalidDataError, NotFoundError
from .data_objects import decode_json, encode_json
from .private_files import create_private_file

_MISSING: Any = object()


def _key_text(key: Any) -> str:
    try:
        return json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidDataError(f"a mutable key must be a string or JSON value: {exc}") from exc


class Mutables:
    """The key-value store of one storage directory. Safe across threads and processes."""

    def __init__(self, db_path: Path) -> None:
        create_private_file(db_path)  # 0600, and so its -wal and -shm
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(db_path, timeout=30, isolation_level=None,
                                     check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS mutables (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            " WITHOUT ROWID")

    def set(self, key: Any, value: Any, *, overwrite: bool = True) -> bool:
        """Set ``key`` to ``value``. With ``overwrite=False`` an existing value is kept and the
        result is False. Returns True when the value was written."""
        k, v = _key_text(key), encode_json(value).decode()
        with self._lock:
            verb = "INSERT OR REPLACE" if overwrite else "INSERT OR IGNORE"
            cur = self._conn.execute(f"{verb} INTO mutables (key, value) VALUES (?, ?)", (k, v))
            return cur.rowcount > 0

    def get(self, key: Any, default: Any = _MISSING) -> Any:
        """The value of ``key``; ``default`` if given and the key is absent, otherwise
        :class:`NotFoundError`."""
        with self._lock:
            row = self._conn.execute("SELECT value FROM mutables WHERE key = ?",
                                     (_key_text(key),)).fetchone()
        if row is None:
            if default is not _MISSING:
                return default
            raise NotFoundError(f"no mutable with key {_key_text(key)}")
        return decode_json(row[0].encode())

    def delete(self, key: Any) -> bool:
        """Delete ``key``; True if it existed."""
        with self._lock:
            cur = self._conn.execute("DELETE FROM mutables WHERE key = ?", (_key_text(key),))
            return cur.rowcount > 0

    def keys(self) -> list[Any]:
        with self._lock:
            rows = self._conn.execute("SELECT key FROM mutables ORDER BY key").fetchall()
        return [json.loads(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

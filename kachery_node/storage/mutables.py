"""Mutables: a small local key-value store with JSON keys and values (``<storage>/mutables.db``).

Local only, as in the original: nothing here is shared over the network. A key is a string or
any JSON value; it is stored as its compact, sorted-key JSON text so that ``{"a":1,"b":2}`` and
``{"b":2,"a":1}`` name the same entry. Values are JSON (numpy values allowed, as in
store_json).

Two tables, chosen by what the file already holds:

* this node's own, ``mutables(key, value)`` (WAL), in a storage that had no ``mutables.db``;
* the original kachery's, ``mutables(sha1, key, value)``, in a storage the original daemon
  wrote: it is **used as it is**, not converted: rows keep the original's spelling (the key and
  value as the original daemon's canonical JSON, the row found by ``sha1`` of the key text),
  the journal mode stays the one the file has (no switch to WAL), and so the original daemon and
  kachery-client 1.2.0 read what this node writes and the other way round. Converting would gain
  nothing (the lookups are the same) and would strand the values the original's programs
  read (spec/legacy.md §2).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from ..errors import InvalidDataError, NotFoundError
from ..legacy.canonical_json import NotCanonicalizableError, canonical_json
from ..legacy.storage_dir import is_original_mutables_table
from .data_objects import decode_json, encode_json
from .private_files import create_private_file

_MISSING: Any = object()


def _key_text(key: Any) -> str:
    try:
        return json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidDataError(f"a mutable key must be a string or JSON value: {exc}") from exc


def _original_text(value: Any, what: str) -> str:
    """The original daemon's spelling of a key or value (its canonical JSON)."""
    try:
        return canonical_json(json.loads(encode_json(value)))  # numpy values become plain JSON
    except (NotCanonicalizableError, InvalidDataError) as exc:
        raise InvalidDataError(f"a mutable {what} must be a JSON value: {exc}") from exc


def _sha1_text(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()


class Mutables:
    """The key-value store of one storage directory. Safe across threads and processes."""

    def __init__(self, db_path: Path) -> None:
        create_private_file(db_path)  # 0600, and so its -wal and -shm
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(db_path, timeout=30, isolation_level=None,
                                     check_same_thread=False)
        #: True when the file holds the original kachery's table, used as it is (see above)
        self.original_table = is_original_mutables_table(self._conn)
        if not self.original_table:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS mutables (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
                " WITHOUT ROWID")

    def _where(self, key: Any) -> tuple[str, str]:
        """The column and value that find ``key``'s row."""
        if self.original_table:
            return "sha1", _sha1_text(_original_text(key, "key"))
        return "key", _key_text(key)

    def set(self, key: Any, value: Any, *, overwrite: bool = True) -> bool:
        """Set ``key`` to ``value``. With ``overwrite=False`` an existing value is kept and the
        result is False. Returns True when the value was written."""
        verb = "INSERT OR REPLACE" if overwrite else "INSERT OR IGNORE"
        if self.original_table:
            k, v = _original_text(key, "key"), _original_text(value, "value")
            row = (_sha1_text(k), k, v)
            sql = f"{verb} INTO mutables (sha1, key, value) VALUES (?, ?, ?)"
        else:
            row = (_key_text(key), encode_json(value).decode())
            sql = f"{verb} INTO mutables (key, value) VALUES (?, ?)"
        with self._lock:
            return self._conn.execute(sql, row).rowcount > 0

    def get(self, key: Any, default: Any = _MISSING) -> Any:
        """The value of ``key``; ``default`` if given and the key is absent, otherwise
        :class:`NotFoundError`."""
        column, value = self._where(key)
        with self._lock:
            row = self._conn.execute(f"SELECT value FROM mutables WHERE {column} = ?",
                                     (value,)).fetchone()
        if row is None:
            if default is not _MISSING:
                return default
            raise NotFoundError(f"no mutable with key {_key_text(key)}")
        return decode_json(row[0].encode("utf-8", "surrogatepass"))

    def delete(self, key: Any) -> bool:
        """Delete ``key``; True if it existed."""
        column, value = self._where(key)
        with self._lock:
            cur = self._conn.execute(f"DELETE FROM mutables WHERE {column} = ?", (value,))
            return cur.rowcount > 0

    def keys(self) -> list[Any]:
        with self._lock:
            rows = self._conn.execute("SELECT key FROM mutables ORDER BY key").fetchall()
        return [json.loads(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

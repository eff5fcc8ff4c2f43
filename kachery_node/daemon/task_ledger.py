"""``<storage>/tasks.db``: the at-most-once ledger of tasks (spec/tasks.md §7).

Two tables, one per role:

* ``accepted_requests`` (provider): every request this node accepted to run, recorded *before*
  it runs, and its final status once it has one. A request ID found here is answered from the
  record and never runs again.
* ``assigned_requests`` (requester): which provider each of this node's requests was assigned
  to, so that a retry of the request goes to that provider only.

Records older than :data:`KEEP_DAYS` are deleted when the daemon starts. The task cores
(``protocol/task_provider.py``, ``protocol/task_requester.py``) ask; this module answers.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson

from ..protocol.task_actions import AcceptedRecord

KEEP_DAYS = 30


def _wall_ms() -> int:
    return int(time.time() * 1000)  # a date on a record, not a deadline


class TaskLedger:
    """The ledger in ``path`` (created if missing)."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # A commit survives the process being killed, not a power loss; FULL would cost ~6 ms of
        # fsync per commit (three per task) on the daemon's event loop.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS accepted_requests (channel TEXT, request_id TEXT, "
            "function_id TEXT, requester TEXT, accepted_ms INTEGER, final_status TEXT, "
            "PRIMARY KEY (channel, request_id))")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS assigned_requests (channel TEXT, request_id TEXT, "
            "provider TEXT, function_id TEXT, assigned_ms INTEGER, PRIMARY KEY (channel, request_id))")
        cutoff = _wall_ms() - KEEP_DAYS * 86_400_000
        self._db.execute("DELETE FROM accepted_requests WHERE accepted_ms < ?", (cutoff,))
        self._db.execute("DELETE FROM assigned_requests WHERE assigned_ms < ?", (cutoff,))

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ requester
    def assigned_to(self, channel: str, request_id: str) -> str | None:
        """The provider this request was assigned to before, if any."""
        row = self._db.execute(
            "SELECT provider FROM assigned_requests WHERE channel = ? AND request_id = ?",
            (channel, request_id)).fetchone()
        return row[0] if row else None

    def record_assignment(self, channel: str, request_id: str, provider: str,
                          function_id: str) -> None:
        self._db.execute("INSERT OR IGNORE INTO assigned_requests VALUES (?, ?, ?, ?, ?)",
                         (channel, request_id, provider, function_id, _wall_ms()))

    # ------------------------------------------------------------------ provider
    def accept(self, channel: str, request_id: str, function_id: str, requester: str) -> bool:
        """Record the request; False if it was accepted before (then it must not run)."""
        cur = self._db.execute(
            "INSERT OR IGNORE INTO accepted_requests VALUES (?, ?, ?, ?, ?, NULL)",
            (channel, request_id, function_id, requester, _wall_ms()))
        return cur.rowcount == 1

    def accepted(self, channel: str, request_id: str) -> AcceptedRecord | None:
        """The record of a request accepted before (its final status, if it has one), or None."""
        row = self._db.execute(
            "SELECT final_status FROM accepted_requests WHERE channel = ? AND request_id = ?",
            (channel, request_id)).fetchone()
        if row is None:
            return None
        try:
            return AcceptedRecord(orjson.loads(row[0]) if row[0] else None)
        except orjson.JSONDecodeError:  # unreadable: as good as lost, and still not run again
            return AcceptedRecord(None)

    def finish(self, channel: str, request_id: str, status: dict[str, Any]) -> None:
        """Record a request's final status body."""
        self._db.execute(
            "UPDATE accepted_requests SET final_status = ? WHERE channel = ? AND request_id = ?",
            (orjson.dumps(status).decode(), channel, request_id))

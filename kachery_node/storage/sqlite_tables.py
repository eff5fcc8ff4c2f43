"""Small SQLite files a node keeps beside its storage (followed subfeeds, provided
subscriptions): opened the same way, written in short ``BEGIN IMMEDIATE`` transactions."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .private_files import create_private_file


def open_table_file(path: Path) -> sqlite3.Connection:
    """An autocommit connection to the private file ``path`` (created if missing) in WAL mode
    with ``synchronous=NORMAL``: a commit survives a killed process, and readers of other
    processes never wait for the writer."""
    create_private_file(path)
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


@contextmanager
def immediate_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` on an autocommit connection (``ROLLBACK`` on an
    exception, which goes on)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")

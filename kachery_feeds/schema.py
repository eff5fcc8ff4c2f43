"""The store's SQLite schema and its migrations.

The schema version is SQLite's ``PRAGMA user_version``. :data:`MIGRATIONS` is the table of
steps: ``MIGRATIONS[i]`` takes a store from version ``i`` to ``i + 1``; a store is brought up to
date inside one write transaction when it is opened, so concurrent openers never see a half-
migrated schema. A store newer than this code is refused rather than guessed at.

Tables (version 1):

* ``feeds``: one row per feed this store knows; ``private_key`` (the 32-byte Ed25519 seed) is
  present only for feeds this store can sign. ``name`` is an optional local name.
* ``subfeeds``: one row per (feed, subfeed hash) with the message ``count`` and the hash of the
  last message (``head_hash``), so appends never scan.
* ``messages``: the exact body bytes and the signature (NULL inside a batch) per position.
  ``WITHOUT ROWID`` keeps the rows in one B-tree ordered by (subfeed, number): appends go to
  the end of it and range reads are sequential.
* ``fork_proofs``: evidence of forks detected on import (see :mod:`kachery_feeds.forks`).

Version 2 (fork-safe restore, spec/feeds.md §8):

* ``feeds.restoring_since_ms``: set while a feed whose key was restored from a backup has not
  caught up with the network yet; appends are refused until it is cleared.

Version 2 also holds key successions (spec/feeds.md §9):

* ``feed_successions``: the verified succession records of each feed, ``seq`` 1, 2, …; the
  feed's ``private_key`` is then the seed of the newest key.
* ``subfeeds.succession_seq``: how many records the subfeed's own messages have carried, so
  that the next append carries the chain when a newer record exists.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import sqlite_utils

from .errors import StoreVersionError


def _v0_to_v1(db: sqlite_utils.Database) -> None:
    db["feeds"].create(
        {"feed_id": str, "private_key": bytes, "name": str, "created_ms": int},
        pk="feed_id",
        not_null={"created_ms"},
    )
    db["feeds"].create_index(["name"], unique=True)
    db["subfeeds"].create(
        {
            "id": int,
            "feed_id": str,
            "subfeed_hash": str,
            "name": str,  # JSON of the subfeed's name, when known
            "count": int,
            "head_hash": bytes,
        },
        pk="id",
        not_null={"feed_id", "subfeed_hash", "count"},
        defaults={"count": 0},
    )
    db["subfeeds"].create_index(["feed_id", "subfeed_hash"], unique=True)
    # sqlite-utils cannot declare WITHOUT ROWID tables, hence plain SQL here.
    db.execute(
        """CREATE TABLE messages (
               subfeed_id INTEGER NOT NULL,
               n INTEGER NOT NULL,
               body BLOB NOT NULL,
               sig BLOB,
               PRIMARY KEY (subfeed_id, n)
           ) WITHOUT ROWID"""
    )
    db["fork_proofs"].create(
        {
            "id": int,
            "feed_id": str,
            "subfeed_hash": str,
            "position": int,
            "proof_sha256": bytes,
            "proof": bytes,
            "detected_ms": int,
        },
        pk="id",
        not_null={"feed_id", "subfeed_hash", "position", "proof", "detected_ms"},
    )
    db["fork_proofs"].create_index(["proof_sha256"], unique=True)


def _v1_to_v2(db: sqlite_utils.Database) -> None:
    db.execute("ALTER TABLE feeds ADD COLUMN restoring_since_ms INTEGER")
    db.execute("ALTER TABLE subfeeds ADD COLUMN succession_seq INTEGER NOT NULL DEFAULT 0")
    db.execute("""CREATE TABLE feed_successions (
                      feed_id TEXT NOT NULL,
                      seq INTEGER NOT NULL,
                      record BLOB NOT NULL,
                      PRIMARY KEY (feed_id, seq)
                  ) WITHOUT ROWID""")


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_v0_to_v1, _v1_to_v2]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the database up to :data:`SCHEMA_VERSION` (no-op when it already is)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]  # re-read under the lock
        if version > SCHEMA_VERSION:
            raise StoreVersionError(
                f"this store has schema version {version}, but this kachery_feeds understands "
                f"only up to {SCHEMA_VERSION}; upgrade kachery"
            )
        db = sqlite_utils.Database(conn)
        for step in MIGRATIONS[version:]:
            step(db)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise

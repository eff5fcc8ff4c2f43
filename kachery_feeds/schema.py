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

Version 3 (issue 15): ``subfeeds.count`` and ``subfeeds.head_hash`` are dropped. A subfeed's
message count and head are those of its last message in ``messages`` (one seek at the end of
its range of the primary key, :data:`SUBFEED_COUNT`), so an append writes the messages B-tree
only, not a second page per commit. Stores are numbered 0, 1, … without gaps (the audit checks
it), so the count is the last number + 1.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from .errors import StoreVersionError

# The statements are exactly those sqlite-utils generated when it built this schema (so stores
# made before and after read the same in ``sqlite_master``); plain SQL here keeps sqlite-utils
# (and numpy, which it imports: ~0.1 s) out of ``import kachery_feeds`` and of store creation.
_V1_STATEMENTS = (
    'CREATE TABLE "feeds" (\n'
    '   "feed_id" TEXT PRIMARY KEY,\n'
    '   "private_key" BLOB,\n'
    '   "name" TEXT,\n'
    '   "created_ms" INTEGER NOT NULL\n'
    ')',
    'CREATE UNIQUE INDEX "idx_feeds_name"\n    ON "feeds" ("name")',
    'CREATE TABLE "subfeeds" (\n'
    '   "id" INTEGER PRIMARY KEY,\n'
    '   "feed_id" TEXT NOT NULL,\n'
    '   "subfeed_hash" TEXT NOT NULL,\n'
    '   "name" TEXT,\n'  # JSON of the subfeed's name, when known
    '   "count" INTEGER NOT NULL DEFAULT 0,\n'
    '   "head_hash" BLOB\n'
    ')',
    'CREATE UNIQUE INDEX "idx_subfeeds_feed_id_subfeed_hash"\n    ON "subfeeds" ("feed_id", "subfeed_hash")',
    """CREATE TABLE messages (
               subfeed_id INTEGER NOT NULL,
               n INTEGER NOT NULL,
               body BLOB NOT NULL,
               sig BLOB,
               PRIMARY KEY (subfeed_id, n)
           ) WITHOUT ROWID""",
    'CREATE TABLE "fork_proofs" (\n'
    '   "id" INTEGER PRIMARY KEY,\n'
    '   "feed_id" TEXT NOT NULL,\n'
    '   "subfeed_hash" TEXT NOT NULL,\n'
    '   "position" INTEGER NOT NULL,\n'
    '   "proof_sha256" BLOB,\n'
    '   "proof" BLOB NOT NULL,\n'
    '   "detected_ms" INTEGER NOT NULL\n'
    ')',
    'CREATE UNIQUE INDEX "idx_fork_proofs_proof_sha256"\n    ON "fork_proofs" ("proof_sha256")',
)


def _v0_to_v1(conn: sqlite3.Connection) -> None:
    for statement in _V1_STATEMENTS:
        conn.execute(statement)


def _v1_to_v2(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE feeds ADD COLUMN restoring_since_ms INTEGER")
    conn.execute("ALTER TABLE subfeeds ADD COLUMN succession_seq INTEGER NOT NULL DEFAULT 0")
    conn.execute("""CREATE TABLE feed_successions (
                        feed_id TEXT NOT NULL,
                        seq INTEGER NOT NULL,
                        record BLOB NOT NULL,
                        PRIMARY KEY (feed_id, seq)
                    ) WITHOUT ROWID""")


def _v2_to_v3(conn: sqlite3.Connection) -> None:
    # ALTER TABLE ... DROP COLUMN needs SQLite 3.35 (2021); Python 3.11's builds have newer.
    conn.execute("ALTER TABLE subfeeds DROP COLUMN count")
    conn.execute("ALTER TABLE subfeeds DROP COLUMN head_hash")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_v0_to_v1, _v1_to_v2, _v2_to_v3]
SCHEMA_VERSION = len(MIGRATIONS)

#: The message count of the subfeed row ``subfeeds`` in a query over that table: one seek to the
#: last entry of the subfeed's range of the messages primary key (SQLite answers ``max`` of an
#: index prefix without a scan).
SUBFEED_COUNT = "(SELECT coalesce(max(n) + 1, 0) FROM messages WHERE subfeed_id = subfeeds.id)"


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
        for step in MIGRATIONS[version:]:
            step(conn)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise

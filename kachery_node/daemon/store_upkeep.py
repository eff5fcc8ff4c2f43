"""Keeping the feed store's write-ahead log short, in the background.

SQLite copies the log back into the database file (a checkpoint: pages copied, two fsyncs) in
the commit that takes it past the store's ``wal_autocheckpoint`` pages, inside whichever append
or import made that commit: a script's ``append_message`` or this daemon's import of a live
push then takes milliseconds (tens of them on a slow disk) instead of a fraction of one, once
every few thousand messages. The daemon, the one process that runs as long as the store is
used, checkpoints in a worker thread a few seconds after the store changed instead, so the log
rarely reaches that size and those pauses stay out of the live path
(:meth:`kachery_feeds.Store.checkpoint_wal`). A store object's own checkpoint thread
(:mod:`kachery_feeds.wal_checkpoints`) copies bulk writes back as they go; this one restarts the
log short after the trickle of live writes, which never adds up to that thread's bound.
"""

from __future__ import annotations

import logging
import os
import sqlite3

import anyio

import kachery_feeds as kf

from .store_changes import ChangeBroadcaster

log = logging.getLogger("kachery.daemon")

#: After a change, wait this long before checkpointing: the changes of those seconds go back
#: in one checkpoint (at live rates a few hundred log frames, far under the autocheckpoint's
#: 4000).
CHECKPOINT_DELAY_SECONDS = 2.0


async def keep_wal_short(store: kf.Store, changes: ChangeBroadcaster) -> None:
    """Checkpoint ``store`` a little after each change until cancelled (run it in the daemon's
    nursery)."""
    wal = store.path.with_name(store.path.name + "-wal")
    checkpointed: int | None = None  # the log's mtime (ns) at the last checkpoint
    while True:
        await changes.current().wait()  # a commit, or the watcher's periodic safety wake
        await anyio.sleep(CHECKPOINT_DELAY_SECONDS)
        try:
            changed = os.stat(wal).st_mtime_ns  # every commit writes the log
        except FileNotFoundError:
            continue
        if changed == checkpointed:
            continue  # only safety wakes since: nothing to copy
        try:
            await anyio.to_thread.run_sync(store.checkpoint_wal)
        except sqlite3.Error as exc:  # e.g. busy for longer than the timeout: the next one will
            log.info("checkpointing %s failed: %s", store.path, exc)
        checkpointed = changed

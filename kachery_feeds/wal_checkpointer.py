"""Copying a store's WAL back into its database from a thread of its own.

In WAL mode every commit appends pages to ``<store>-wal``; a *checkpoint* copies them into the
database file and fsyncs it. SQLite's automatic checkpoint runs inside the commit that takes the
WAL past ``wal_autocheckpoint`` pages, on the committing thread: an append that happens to be
that commit waits for a copy of up to 16 MB and two fsyncs (in a run of batch appends, 15-25% of
the wall time). A :class:`WalCheckpointer` does that work instead: the store tells it how many
pages each commit added (an estimate: one per commit plus the bytes written), and once they pass
:data:`CHECKPOINT_PAGES` its thread runs ``PRAGMA wal_checkpoint(PASSIVE)`` on a connection of
its own (a passive checkpoint never blocks writers or readers; sqlite3 releases the GIL while it
runs). The store's connection keeps SQLite's automatic checkpoint at
:data:`SAFETY_CHECKPOINT_PAGES`, so the WAL stays bounded even if the thread falls behind, another
process writes, or the thread is not running (after ``fork``).

Durability is the ``synchronous`` setting's, unchanged: a commit is in the WAL before it
returns; the checkpoint connection uses the same setting.

The thread starts with the first checkpoint due and ends when the store closes.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

#: Pages (4 KiB) of WAL, as estimated, after which the thread checkpoints: ~16 MB of WAL between
#: checkpoints, what SQLite's automatic checkpoint did at this setting on the committing thread.
CHECKPOINT_PAGES = 4000
#: ``PRAGMA wal_autocheckpoint`` of the store's own connection: SQLite checkpoints inline only past
#: this many pages (64 MB), which the thread normally never lets the WAL reach.
SAFETY_CHECKPOINT_PAGES = 4 * CHECKPOINT_PAGES
#: Row bytes per 4 KiB page in the estimate (appended rows fill the pages of the messages table).
BYTES_PER_PAGE = 4000


class WalCheckpointer:
    """The checkpoint thread of one store connection (see the module docstring)."""

    def __init__(self, path: Path, synchronous: str) -> None:
        self._path = path
        self._synchronous = synchronous
        self._pages = 0  # estimated WAL pages added since the last checkpoint began
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._closed = False
        #: Checkpoints this thread has run (for tests and benchmarks).
        self.checkpoints = 0

    def committed(self, nbytes: int) -> None:
        """After a commit that wrote about ``nbytes`` of rows (0: a small write)."""
        self._pages += 1 + nbytes // BYTES_PER_PAGE
        if self._pages >= CHECKPOINT_PAGES:
            self._wake()

    def _wake(self) -> None:
        with self._cond:
            if self._closed:
                return
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name=f"kachery-checkpoint {self._path.name}", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        conn = sqlite3.connect(self._path, timeout=60.0, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            while True:
                with self._cond:
                    while not self._closed and self._pages < CHECKPOINT_PAGES:
                        self._cond.wait()
                    if self._closed:
                        return
                    self._pages = 0
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                self.checkpoints += 1
        except sqlite3.Error:
            # The file went away or cannot be checkpointed now: SQLite's automatic checkpoint
            # (SAFETY_CHECKPOINT_PAGES) still bounds the WAL, and the next commit past the
            # threshold starts a new thread.
            self._pages = 0
            return
        finally:
            conn.close()

    def close(self) -> None:
        """Stop the thread (after the checkpoint it may be running) and wait for it."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

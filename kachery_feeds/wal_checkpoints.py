"""Copying a store's write-ahead log back into its database in a thread of its own.

SQLite's autocheckpoint runs inside the commit that takes the log past its bound: the append
or import that made that commit copies megabytes and waits for two fsyncs (on the benchmark
machine, a batch append of 100k messages spent a quarter of its wall time there). A store
object instead has a daemon thread of its own checkpoint (PASSIVE: it never blocks a writer or
a reader) once its own writes have grown the log by about :data:`CHECKPOINT_EVERY_BYTES`,
while the writer goes on; the autocheckpoint stays, at a higher bound, for a log that this
thread cannot keep short (another process writing, a reader holding an old snapshot).
"""

from __future__ import annotations

import inspect
import sqlite3
import threading
import weakref
from collections.abc import Callable

#: A store object's commits that have added about this many bytes to the log (an estimate: see
#: :meth:`BackgroundCheckpointer.wrote`) since its last background checkpoint start the next
#: one: 4096 pages, about as often as SQLite's autocheckpoint ran in the commits before (at
#: 4000): more often costs fsyncs (a checkpoint's fixed cost) and gains nothing.
CHECKPOINT_EVERY_BYTES = 16 << 20

_PAGE = 4096


class BackgroundCheckpointer:
    """Runs ``checkpoint`` in a daemon thread, started on first use, each time the commits
    :meth:`wrote` was told of have added about :data:`CHECKPOINT_EVERY_BYTES` to the log since
    the last run.

    A bound method is held weakly: the thread does not keep its object (a store a script never
    closed) alive, and ends once that object is gone (:meth:`close` with ``timeout=0`` from its
    finalizer wakes it)."""

    def __init__(self, checkpoint: Callable[[], object],
                 every_bytes: int = CHECKPOINT_EVERY_BYTES) -> None:
        self._checkpoint: Callable[[], Callable[[], object] | None] = (
            weakref.WeakMethod(checkpoint) if inspect.ismethod(checkpoint) else lambda: checkpoint)
        self._every = every_bytes
        self._written = 0  # an estimate shared by the store's threads: a lost update is harmless
        self._wake = threading.Event()
        self._start = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.runs = 0  # completed checkpoints (tests, diagnostics)

    def wrote(self, messages: int, body_bytes: int) -> None:
        """Count one commit of ``messages`` messages, ``body_bytes`` in all; past the bound,
        wake the thread. What a commit adds to the log is estimated as its bodies' bytes (with
        the fields around a payload) and the page it ends in, which it writes whole: measured,
        a single append adds 1.3 pages of log."""
        written = self._written + body_bytes + messages * 256 + _PAGE
        if written < self._every:
            self._written = written
            return
        self._written = 0
        if self._thread is None:
            with self._start:
                if self._thread is None and not self._closed:
                    thread = threading.Thread(target=self._run, name="kachery-wal-checkpoint",
                                              daemon=True)
                    thread.start()
                    self._thread = thread
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            checkpoint = None if self._closed else self._checkpoint()
            if checkpoint is None:  # closed, or its store is gone
                return
            try:
                checkpoint()
            except sqlite3.Error:  # busy past the timeout, or the store closing: the next run
                pass               # (or the autocheckpoint) copies those pages
            del checkpoint  # no reference to the store while waiting
            self.runs += 1

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread, after the checkpoint it may be running (waits up to ``timeout``;
        0: only tell it)."""
        self._closed = True
        self._wake.set()
        thread = self._thread
        if timeout > 0 and thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

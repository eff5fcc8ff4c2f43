"""One watcher of the feed store for the whole daemon, broadcast to every waiting stream.

A kernel watch per browser stream would run into the per-user inotify limit; instead one task
waits on the store's :class:`~kachery_feeds.watch.ChangeWatcher` and wakes every stream that is
waiting, through an event that is replaced after each change.

Use: take :meth:`ChangeBroadcaster.current` *before* reading the store, then wait on it if the
read found nothing new. A change between the read and the wait has already set that event, so
no wake-up is lost.

The broadcaster waits on the kernel watch only while someone has taken :meth:`current` since
its last wake: a daemon whose store changes with every live message imported, and that has no
local stream waiting, is not woken by each of its own commits. The watch itself stays, and
queues every commit meanwhile, so the first wait after a quiet spell returns at once (a
spurious wake-up costs a waiter a re-read; a lost one would cost it the change).
"""

from __future__ import annotations

import anyio

import kachery_feeds


class ChangeBroadcaster:
    """Wakes all waiters whenever any process commits to the store."""

    def __init__(self, store: kachery_feeds.Store) -> None:
        self._store = store
        self._event = anyio.Event()
        self._wanted = anyio.Event()  # current() was taken since the last wake
        self.wakes = 0  # how many times the waiters were woken (diagnostics, tests)

    def current(self) -> anyio.Event:
        """The event that the next change will set."""
        self._wanted.set()
        return self._event

    def _fire(self) -> None:
        event, self._event = self._event, anyio.Event()
        self.wakes += 1
        event.set()

    async def run(self) -> None:
        """Watch the store until cancelled (run it in the daemon's nursery)."""
        with self._store.watcher() as watcher:
            while True:
                await self._wanted.wait()
                # Each return is a change or the watcher's safety re-check; waking waiters on
                # the latter costs them one cheap re-read.
                await watcher.wait_async(None)
                self._wanted = anyio.Event()  # before the waiters wake and take current() again
                self._fire()

"""The store's change watch (kachery_feeds.watch): a commit by any store object wakes a waiter,
which is told whether the kernel watch signalled it; a burst of commits is drained by one wake."""

from __future__ import annotations

import os
import threading

import anyio
import pytest

import kachery_feeds as kf
from kachery_feeds import watch


@pytest.fixture
def store(tmp_path):
    s = kf.open_store(tmp_path / "feeds.db")
    yield s
    s.close()


def _needs_inotify(watcher: watch.ChangeWatcher) -> None:
    if not watcher.uses_inotify:
        pytest.skip("no inotify here: waits are polls, which report no commit")


def test_a_commit_by_another_store_object_ends_a_wait_that_says_so(store, tmp_path):
    sf = store.create_feed().load_subfeed("log")
    other = kf.open_store(tmp_path / "feeds.db")
    try:
        with store.watcher() as watcher:
            _needs_inotify(watcher)
            assert watcher.wait(0.05) is False  # nothing committed: the timeout, reported
            # another store object (its own connection and notifier, as another process has)
            writer = threading.Timer(0.05, lambda: other.load_subfeed(sf.uri).append_message({"i": 0}))
            writer.start()
            try:
                assert watcher.wait(30) is True
            finally:
                writer.join()
            assert watcher.wait(0.05) is False  # that commit's events were all read
    finally:
        other.close()


def test_a_burst_of_commits_is_drained_by_one_wake(store):
    """More queued events than one read of the queue takes (16 bytes each, 65536 a read): the
    wake reads them all, so the next wait does not return at once for the same burst."""
    sf = store.create_feed().load_subfeed("log")
    with store.watcher() as watcher:
        _needs_inotify(watcher)
        sf.append_messages([{"i": i} for i in range(10)])
        # inotify merges an event into the one before it when they are the same, so alternate
        # two kinds (as a notifier's write and a touch of the file): 6000 events, ~94 KiB
        path = watch.notify_path(store.path)
        for _ in range(3000):
            store._notifier.notify()
            os.utime(path)
        assert watcher.wait(30) is True
        assert watcher.wait(0.05) is False


def test_wait_async_reports_a_commit_and_a_timeout(store):
    sf = store.create_feed().load_subfeed("log")

    async def main() -> tuple[bool, bool]:
        with store.watcher() as watcher:
            _needs_inotify(watcher)
            quiet = await watcher.wait_async(0.05)
            async with anyio.create_task_group() as tg:
                async def append_soon() -> None:
                    await anyio.sleep(0.05)
                    sf.append_message({"i": 0})
                tg.start_soon(append_soon)
                signalled = await watcher.wait_async(30)
            return quiet, signalled

    assert anyio.run(main) == (False, True)

"""The daemon's store-change broadcaster: a waiter is woken by any process's commit, and commits
made while nobody waits do not wake the broadcaster (a reader-only daemon imports a live message
with every push: its own commits must not cost it a wake-up each) but are not lost either."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import kachery_feeds as kf
from kachery_node.daemon.store_changes import ChangeBroadcaster

pytestmark = pytest.mark.trio


async def test_a_waiter_is_woken_by_another_connections_commit_and_idle_commits_wake_nobody(tmp_path):
    store = kf.open_store(tmp_path / "feeds.db")
    other = kf.open_store(tmp_path / "feeds.db")  # like another process
    sf = other.create_feed().load_subfeed("log")
    changes = ChangeBroadcaster(store)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(changes.run)
        await trio.testing.wait_all_tasks_blocked()  # the broadcaster is waiting to be wanted
        for i in range(20):  # nobody waits: no wake-ups
            sf.append_message(i)
        # The kernel watch is readable now: a broadcaster waiting on it would be runnable at the
        # loop's next I/O check, so "every task blocked" means it was not woken.
        await trio.testing.wait_all_tasks_blocked()
        assert changes.wakes == 0
        # A waiter takes the event before reading; the commits made before are not lost (it
        # may be woken at once, for them), and the next commit wakes it.
        event = changes.current()
        with trio.fail_after(5):
            await event.wait()
        event = changes.current()
        if not event.is_set():
            sf.append_message("next")
            with trio.fail_after(5):
                await event.wait()
        assert changes.wakes >= 1
        nursery.cancel_scope.cancel()
    store.close()
    other.close()


async def test_a_commit_between_taking_the_event_and_waiting_is_not_lost(tmp_path):
    store = kf.open_store(tmp_path / "feeds.db")
    sf = store.create_feed().load_subfeed("log")
    changes = ChangeBroadcaster(store)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(changes.run)
        for i in range(3):
            event = changes.current()  # taken before "reading"
            sf.append_message(i)  # a change right after the read
            with trio.fail_after(5):
                await event.wait()
        nursery.cancel_scope.cancel()
    store.close()

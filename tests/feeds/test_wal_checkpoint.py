"""Store.checkpoint_wal: another thread (the daemon's upkeep, the store's own checkpoint thread)
copies the write-ahead log back while this store object appends, so no append pays for a
checkpoint (issue 15: a live push's import that crossed the autocheckpoint took tens of
milliseconds; a batch append spent a quarter of its wall time in checkpoints)."""

from __future__ import annotations

import sqlite3
import threading
import time

import kachery_feeds as kf
from kachery_feeds.wal_checkpoints import CHECKPOINT_EVERY_BYTES, BackgroundCheckpointer


def _frames(c: sqlite3.Connection) -> int:
    """Frames in the write-ahead log: the second of what ``wal_checkpoint`` returns (busy, log
    frames, frames checkpointed)."""
    _busy, log, _copied = c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return log


def test_the_log_restarts_short_after_a_checkpoint_from_another_thread(tmp_path):
    store = kf.open_store(tmp_path / "feeds.db")
    sf = store.create_feed().load_subfeed("log")
    for i in range(300):
        sf.append_message({"i": i})
    db_size = (tmp_path / "feeds.db").stat().st_size
    copied = []
    worker = threading.Thread(target=lambda: copied.append(store.checkpoint_wal()))
    worker.start()
    worker.join(30)
    assert copied and copied[0] >= 300  # each commit wrote at least one frame
    assert (tmp_path / "feeds.db").stat().st_size > db_size  # the pages went back into the file
    sf.append_message("after")  # starts the log again from its beginning
    with sqlite3.connect(tmp_path / "feeds.db") as c:
        assert _frames(c) < 20
    assert sf.get_num_local_messages() == 301 and store.verify().ok
    assert store.checkpoint_wal() >= 0  # again: nothing much to copy, no error
    store.close()


def test_appends_go_on_while_another_thread_checkpoints(tmp_path):
    store = kf.open_store(tmp_path / "feeds.db")
    sf = store.create_feed().load_subfeed("log")
    stop = threading.Event()

    def checkpoint_often() -> None:
        while not stop.is_set():
            store.checkpoint_wal()

    worker = threading.Thread(target=checkpoint_often)
    worker.start()
    try:
        for i in range(500):
            assert sf.append_message(i) == i
    finally:
        stop.set()
        worker.join(30)
    assert sf.get_messages() == list(range(500)) and store.verify().ok
    store.close()
    store.close()  # closing twice is harmless


def _checkpoint_threads() -> set[threading.Thread]:
    """The store checkpoint threads alive in this process (other tests' stores may have some:
    compare with the set from before)."""
    return {t for t in threading.enumerate() if t.name == "kachery-wal-checkpoint"}


def _wait_until(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_store_checkpoints_its_own_bulk_writes_in_a_thread_of_its_own_and_stops_it_at_close(tmp_path):
    db = tmp_path / "feeds.db"
    before = _checkpoint_threads()
    store = kf.open_store(db)
    sf = store.create_feed().load_subfeed("log")
    batch = [{"data": "x" * 1000, "i": i} for i in range(1000)]
    for _ in range(20):  # ~25 MB of log, past CHECKPOINT_EVERY_BYTES and under the autocheckpoint
        sf.append_messages(batch)
    # The thread copies the log back: the database file grows by most of what was appended
    # (without it, nothing would until the autocheckpoint's 64 MB).
    assert _wait_until(lambda: db.stat().st_size > CHECKPOINT_EVERY_BYTES)
    threads = list(_checkpoint_threads() - before)
    assert len(threads) == 1
    assert sf.get_num_local_messages() == 20_000
    store.close()
    assert not threads[0].is_alive()
    reopened = kf.open_store(db)
    assert reopened.verify().ok and reopened.load_subfeed(sf.uri).get_num_local_messages() == 20_000
    reopened.close()


def test_the_checkpoint_thread_starts_on_first_need_and_outlives_a_failed_checkpoint():
    calls = []
    done = threading.Event()

    def checkpoint() -> int:
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            raise sqlite3.OperationalError("database is locked")
        done.set()
        return 0

    before = _checkpoint_threads()
    checkpointer = BackgroundCheckpointer(checkpoint, every_bytes=100_000)
    checkpointer.wrote(1, 1000)  # under the bound: no thread yet
    assert _checkpoint_threads() == before
    checkpointer.wrote(200, 100_000)
    assert _wait_until(lambda: checkpointer.runs == 1)  # it failed, and the thread goes on
    checkpointer.wrote(200, 100_000)
    assert done.wait(30) and calls == ["kachery-wal-checkpoint"] * 2
    checkpointer.close()
    assert checkpointer._thread is not None and not checkpointer._thread.is_alive()
    checkpointer.wrote(200, 100_000)  # after close: nothing starts again
    assert not checkpointer._thread.is_alive() and len(calls) == 2


def test_a_store_never_closed_does_not_keep_its_checkpoint_thread_or_itself_alive(tmp_path):
    """A script that drops a store without closing it: the thread holds the store weakly, so the
    store is collected (its connections with it) and the thread ends. (A checkpoint under way
    holds it until it ends: the test waited for nothing and failed whenever the bulk writes
    above had just woken the thread.)"""
    import gc
    import weakref

    before = _checkpoint_threads()
    store = kf.open_store(tmp_path / "feeds.db")
    sf = store.create_feed().load_subfeed("log")
    for _ in range(20):  # past CHECKPOINT_EVERY_BYTES: the thread starts
        sf.append_messages([{"data": "x" * 1000, "i": i} for i in range(1000)])
    assert _wait_until(lambda: len(_checkpoint_threads() - before) == 1)
    (thread,) = _checkpoint_threads() - before
    gone = weakref.ref(store)
    del store, sf
    assert _wait_until(lambda: gc.collect() >= 0 and gone() is None)
    assert _wait_until(lambda: not thread.is_alive())

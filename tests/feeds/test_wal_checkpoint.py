"""Store.checkpoint_wal: another thread (the daemon's upkeep) copies the write-ahead log back
while this store object appends, so the log restarts short and no append pays for a checkpoint
(issue 15: a live push's import that crossed the autocheckpoint took tens of milliseconds)."""

from __future__ import annotations

import sqlite3
import threading

import kachery_feeds as kf


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

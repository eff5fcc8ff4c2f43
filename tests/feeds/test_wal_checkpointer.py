"""The store's WAL is copied back into the database by its checkpoint thread, not by the commit
that passes the interval (kachery_feeds.wal_checkpointer): the WAL stays bounded under sustained
appends and imports, the thread ends when the store closes, and nothing is lost."""

from __future__ import annotations

import threading
import time

import kachery_feeds as kf
from kachery_feeds.wal_checkpointer import CHECKPOINT_PAGES, SAFETY_CHECKPOINT_PAGES

PAGE = 4096
# Each message's body: ~300 bytes of payload and ~230 of fields (well under the ~1000 bytes of a
# row that SQLite keeps in its page, so that the store's estimate of WAL pages holds).
MESSAGE_BYTES = 530


def _batch(b: int) -> list[dict]:
    return [{"b": b, "i": i, "data": "x" * 280} for i in range(1000)]


def _batches_past_the_interval() -> int:
    """Batches of 1000 that write about twice CHECKPOINT_PAGES."""
    return 2 * CHECKPOINT_PAGES * PAGE // (1000 * MESSAGE_BYTES) + 1


def _checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("kachery-checkpoint")]


def _wait_for(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_sustained_appends_are_checkpointed_by_the_thread_and_the_store_closes_it(tmp_path):
    db = tmp_path / "s.db"
    store = kf.open_store(db)
    sf = store.create_feed().load_subfeed("log")
    assert not [t for t in _checkpoint_threads() if str(db.name) in t.name]
    batches = _batches_past_the_interval()
    for b in range(batches):
        sf.append_messages(_batch(b))
    # SQLite's own checkpoint would wait for SAFETY_CHECKPOINT_PAGES: the database file grows
    # (pages copied back from the WAL) only because the thread checkpointed.
    assert batches * 1000 * MESSAGE_BYTES < SAFETY_CHECKPOINT_PAGES * PAGE * 3 // 4
    assert _wait_for(lambda: db.stat().st_size > CHECKPOINT_PAGES * PAGE // 2)
    assert store._checkpointer.checkpoints >= 1
    wal = db.with_name(db.name + "-wal")
    assert wal.stat().st_size < SAFETY_CHECKPOINT_PAGES * PAGE
    threads = [t for t in _checkpoint_threads() if db.name in t.name]
    assert threads
    store.close()
    assert not any(t.is_alive() for t in threads)
    reopened = kf.open_store(db)
    assert reopened.load_subfeed(sf.uri).get_num_local_messages() == batches * 1000
    assert reopened.verify().ok
    reopened.close()


def test_an_import_counts_towards_the_checkpoint_too(tmp_path):
    src = kf.open_store(tmp_path / "src.db")
    sf = src.create_feed().load_subfeed("log")
    for b in range(_batches_past_the_interval()):
        sf.append_messages(_batch(b))
    db = tmp_path / "dst.db"
    dst = kf.open_store(db)
    assert dst.load_subfeed(sf.uri).add_signed_messages(sf.get_signed_messages()) > 0
    assert _wait_for(lambda: dst._checkpointer.checkpoints >= 1)
    assert db.stat().st_size > CHECKPOINT_PAGES * PAGE // 2
    dst.close()
    src.close()


def test_a_store_that_only_reads_or_writes_little_starts_no_thread(tmp_path):
    db = tmp_path / "small.db"
    store = kf.open_store(db)
    sf = store.create_feed().load_subfeed("log")
    for i in range(100):
        sf.append_message(i)
    assert sf.get_messages() == list(range(100))
    assert not [t for t in _checkpoint_threads() if db.name in t.name]
    store.close()

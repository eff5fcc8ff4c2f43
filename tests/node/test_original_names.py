"""The original kachery-client's names and keywords on kachery_node (issue 17; README "Coming
from kachery-client"). Each behaves as the original did, except that failures raise instead of
returning None."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import kachery_feeds as kf
import kachery_node as kn


def test_named_feeds(storage_dir: Path) -> None:
    feed = kn.create_feed("lab-notes")
    assert kn.get_feed_id("lab-notes") == feed.feed_id
    assert kn.load_feed("lab-notes") == feed
    with pytest.raises(kf.InvalidUriError, match="already exists"):
        kn.create_feed("lab-notes")
    with pytest.raises(kf.UnknownFeedError):
        kn.get_feed_id("no-such-feed")  # the original raised too ("Unable to load feed")
    created = kn.load_feed("made-on-demand", create=True)
    assert kn.load_feed("made-on-demand", create=True) == created  # once
    with pytest.raises(kf.InvalidUriError, match="needs a feed name"):
        kn.load_feed(feed.uri, create=True)
    kn.delete_feed("lab-notes")
    with pytest.raises(kf.UnknownFeedError):
        kn.load_feed("lab-notes")
    with pytest.raises(kf.UnknownFeedError):
        kn.delete_feed(feed.uri)


def test_mutables_update_keyword(storage_dir: Path) -> None:
    assert kn.set("k", 1) and not kn.set("k", 2, update=False) and kn.get("k") == 1
    assert kn.get("absent", None) is None  # a default, asked for; kn.get("absent") raises
    with pytest.raises(kn.NotFoundError):
        kn.get("absent")


def test_node_id(storage_dir: Path) -> None:
    with pytest.raises(kn.NotInitializedError):
        kn.get_node_id()
    cfg, _ = kn.init_node(storage_dir)
    assert kn.get_node_id() == cfg.node_id


def test_cursor_keywords_and_signed_messages(storage_dir: Path) -> None:
    feed = kn.create_feed()
    feed.load_subfeed("s").append_messages([{"i": 0}, {"i": 1}, {"i": 2}])
    sf = feed.load_subfeed("s", position=1)
    assert sf.get_next_messages() == [{"i": 1}, {"i": 2}]
    sf = kn.load_subfeed(feed.uri + "/s", position=2)
    signed = sf.get_next_messages(signed=True)
    assert signed[0]["body"]["payload"] == {"i": 2} and signed[0]["body"]["n"] == 2
    assert len(signed[0]["signature"]) == 128
    assert sf.position == 3
    peek = kn.load_subfeed(feed.uri + "/s").get_next_messages(advance_position=False, signed=True)
    assert [m["signature"] is None for m in peek] == [True, True, False]  # a batch signs its last


def test_watch_for_new_messages_over_several_subfeeds(storage_dir: Path) -> None:
    feed = kn.create_feed()
    a, b = feed.load_subfeed("a"), feed.load_subfeed({"kind": "b"})
    a.append_message({"a": 0})
    watches = {"a": {"feedId": feed.feed_id, "subfeedName": "a", "position": 1},
               "b": {"feedId": feed.feed_id, "subfeedHash": b.subfeed_hash, "position": 0},
               "c": {"uri": feed.uri + "/c", "position": 0}}
    assert kn.watch_for_new_messages(watches, wait_msec=0) == {"a": [], "b": [], "c": []}
    threading.Timer(0.3, lambda: b.append_message({"b": 0})).start()
    t0 = time.monotonic()
    news = kn.watch_for_new_messages(watches, wait_msec=10_000)
    assert news == {"a": [], "b": [{"b": 0}], "c": []}
    assert 0.2 < time.monotonic() - t0 < 5  # woken by the append, not the timeout
    # Positions are the caller's: what is there already comes back at once.
    news = kn.watch_for_new_messages({"a": {"feedId": feed.feed_id, "subfeedName": "a", "position": 0},
                                      "b": b}, wait_msec=10_000)
    assert news == {"a": [{"a": 0}], "b": [{"b": 0}]}
    with pytest.raises(kf.InvalidUriError, match="needs 'uri'"):
        kn.watch_for_new_messages({"x": {"position": 0}})


def test_message_stream_and_print_messages(storage_dir: Path, capsys) -> None:
    sf = kn.create_feed().load_subfeed("log")
    sf.append_messages([{"n": 0}, {"n": 1}])
    threading.Timer(0.2, lambda: sf.append_message({"n": 2})).start()
    stream = kn.load_subfeed(sf.uri).message_stream(timeout=5)
    assert [next(stream) for _ in range(3)] == [{"n": 0}, {"n": 1}, {"n": 2}]  # the last one live
    reader = kn.load_subfeed(sf.uri, position=1)
    reader.print_messages(timeout=0.2)
    assert capsys.readouterr().out.splitlines() == ["{'n': 1}", "{'n': 2}"]
    assert reader.position == 3


def test_store_json_is_the_originals_bytes(storage_dir: Path) -> None:
    # The original: simplejson.dumps(obj, separators=(',', ':')), non-ASCII escaped.
    uri = kn.store_json({"name": "Zoë", "emoji": "😀", "x": [1, 2.5, None]})
    assert Path(kn.load_file(uri)).read_bytes() == (
        b'{"name":"Zo\\u00eb","emoji":"\\ud83d\\ude00","x":[1,2.5,null]}')


def test_task_keywords_are_checked_before_anything_is_sent(storage_dir: Path) -> None:
    with pytest.raises(kn.TaskArgumentError, match="not both"):
        kn.request_task("lab.a.1", task_function_id="lab.a.1")
    with pytest.raises(kn.TaskArgumentError, match="no function decorated"):
        kn.run_task_backend(task_function_ids=["lab.never-decorated.1"])
    with pytest.raises(kn.TaskArgumentError, match="not both"):
        kn.run_task_backend(functions=[], task_function_ids=[])


def test_new_names_are_offered_for_completion() -> None:
    names = set(dir(kn))
    for name in ("create_feed", "get_feed_id", "get_node_id", "delete_feed", "watch_for_new_messages",
                 "upload_text", "upload_json", "upload_npy", "upload_pkl", "request_task",
                 "run_task_backend", "taskfunction", "TaskHandle", "OriginalFeedsDatabaseError"):
        assert name in kn.__all__ and name in names, name

"""Subfeeds as bucket segments and head: layout, encoding, verified import across segments."""

from __future__ import annotations

import pytest

import kachery_feeds as kf
from kachery_node.protocol import feed_bucket
from kachery_node.protocol.bucket_layout import (
    SEGMENT_SIZE,
    file_path,
    pathify,
    subfeed_head_path,
    subfeed_segment_path,
    task_result_path,
)


def test_layout():
    sha1 = "0123456789abcdef0123456789abcdef01234567"
    assert pathify(sha1) == f"01/23/45/{sha1}"
    assert file_path("lab", sha1) == f"lab/sha1/01/23/45/{sha1}"
    feed, sub = "ab" * 32, "cd" * 20
    assert subfeed_head_path("lab", feed, sub) == f"lab/feeds/ab/ab/ab/{feed}/subfeeds/cd/cd/cd/{sub}/head"
    assert subfeed_segment_path("lab", feed, sub, 3).endswith(f"{sub}/segments/3")
    assert task_result_path("lab", sha1).startswith("lab/task_results/01/23/45/")
    for bad in ["", "AB12345", "../../x", "12"]:
        with pytest.raises(ValueError):
            pathify(bad)


@pytest.fixture
def source(tmp_path):
    sf = kf.open_store(tmp_path / "a.db").create_feed().load_subfeed("log")
    # One batch that straddles the first segment boundary (only its last message is signed).
    sf.append_messages([{"i": i} for i in range(990)])
    sf.append_messages([{"i": i} for i in range(990, 2050)])
    sf.append_message({"i": 2050})
    return sf


def test_head_and_segments_round_trip(tmp_path, source):
    count, head_bytes = feed_bucket.head_for(source)
    head = feed_bucket.parse_head(head_bytes)
    assert count == head.count == 2051 and head.full_segments == 2 and len(head.tail) == 51
    bucket = {i: feed_bucket.segment_for(source, i) for i in feed_bucket.segments_to_upload(count, 0)}
    assert list(bucket) == [0, 1]
    assert all(len(kf.decode_segment(seg)) == SEGMENT_SIZE for seg in bucket.values())
    replica = kf.open_store(tmp_path / "b.db").load_subfeed(source.uri)
    importer = feed_bucket.SegmentImporter(replica)
    for i in feed_bucket.segments_to_download(0, head):
        importer.add_segment(bucket[i])
    importer.add_lines(head.tail)
    assert importer.finish() == 2051
    assert replica.get_messages() == source.get_messages()
    # A reader already at 1500 needs only segment 1 and the tail.
    assert list(feed_bucket.segments_to_download(1500, head)) == [1]
    assert list(feed_bucket.segments_to_upload(2051, 1000)) == [1]


def test_tampered_segment_is_rejected(tmp_path, source):
    _count, head_bytes = feed_bucket.head_for(source)
    head = feed_bucket.parse_head(head_bytes)
    seg = feed_bucket.segment_for(source, 0).replace(b'"i":5}', b'"i":6}', 1)
    replica = kf.open_store(tmp_path / "b.db").load_subfeed(source.uri)
    importer = feed_bucket.SegmentImporter(replica)
    with pytest.raises(kf.VerificationError):
        importer.add_segment(seg)
        importer.add_segment(feed_bucket.segment_for(source, 1))
        importer.add_lines(head.tail)
        importer.finish()
    assert replica.get_num_local_messages() == 0


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"{}",
        b"[]",
        b'{"v":1,"count":5,"segmentSize":1000,"tail":[]}',
        b'{"v":2,"count":0,"segmentSize":1000,"tail":[]}',
        b'{"v":1,"count":0,"segmentSize":7,"tail":[]}',
    ],
)
def test_malformed_heads(bad):
    with pytest.raises(feed_bucket.HeadError):
        feed_bucket.parse_head(bad)

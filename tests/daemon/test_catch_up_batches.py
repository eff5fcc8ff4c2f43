"""A catch-up from the bucket imports each segment as soon as it is there, together with the
segments after it that were downloaded meanwhile (one transaction; a long one is verified mostly
in the store's import helper, on the other core), never more than it downloads ahead.

The segments are real (a real store's, built as a provider builds them), imported into a real
store; the bucket is the in-memory channel's (tests/daemon/memory_link.py), whose downloads of
every segment but the first wait until the first one was imported.
"""

from __future__ import annotations

import anyio
import anyio.from_thread
import pytest

import kachery_feeds as kf
from kachery_node.daemon.feed_follower_driver import SEGMENT_DOWNLOADS_AHEAD, _download_and_import
from kachery_node.identity import Keypair
from kachery_node.protocol import feed_bucket
from kachery_node.protocol.feed_messages import SubfeedOnChannel
from tests.daemon.memory_link import MemoryChannel, MemoryLink

SEGMENTS = 20


class _FirstSegmentFirst(MemoryLink):
    """Segment 0 downloads at once; the others once ``later`` is set."""

    later: anyio.Event
    first_path: str

    async def bucket_download(self, path, dest, progress=None):
        if path != self.first_path:
            await self.later.wait()
        return await super().bucket_download(path, dest, progress)


@pytest.mark.trio
async def test_the_first_segment_goes_in_alone_and_those_downloaded_meanwhile_together(tmp_path):
    source = kf.open_store(tmp_path / "a.db").create_feed().load_subfeed("log")
    for start in range(0, SEGMENTS * 1000, 1000):
        source.append_messages([{"i": i} for i in range(start, start + 1000)])
    channel = MemoryChannel("lab")
    link = _FirstSegmentFirst(channel, Keypair.generate(), frozenset({"request-feeds"}), None)
    where = SubfeedOnChannel("lab", source.feed_id, source.subfeed_hash)
    for i in range(SEGMENTS):
        channel.bucket[where.segment_path(i)] = feed_bucket.segment_for(source, i)
    link.first_path, link.later = where.segment_path(0), anyio.Event()

    replica = kf.open_store(tmp_path / "b.db").load_subfeed(source.uri)
    batches: list[int] = []

    class Recording(feed_bucket.SegmentImporter):
        def add_segments(self, segments: list[bytes]) -> None:
            batches.append(len(segments))
            super().add_segments(segments)
            if len(batches) == 1:  # (a worker thread) the others may come now
                anyio.from_thread.run_sync(link.later.set)

    importer = Recording(replica)
    with anyio.fail_after(20):
        await _download_and_import(link, where, range(SEGMENTS), importer)
    assert importer.finish() == SEGMENTS * 1000
    assert replica.get_messages() == source.get_messages()
    assert batches[0] == 1  # the first messages did not wait for any other segment
    assert max(batches[1:]) > 1  # what came meanwhile went in together...
    assert max(batches) <= SEGMENT_DOWNLOADS_AHEAD  # ...never more than is downloaded ahead
    assert sum(batches) == SEGMENTS


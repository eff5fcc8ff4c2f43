"""Which subfeeds of a feed a channel's bucket knows (spec/bucket.md §3.1), as a fork-safe
restore asks (kachery_node/daemon/feed_catch_up.py)."""

from __future__ import annotations

from kachery_node.daemon.feed_catch_up import subfeed_hashes_from_keys, subfeed_list_prefix
from kachery_node.protocol.bucket_layout import subfeed_head_path, subfeed_segment_path

FEED = "ab" * 32
S1, S2 = "12" * 20, "cd" * 20


def test_only_head_keys_of_that_feed_name_subfeeds():
    prefix = subfeed_list_prefix("lab", FEED)
    keys = [
        subfeed_head_path("lab", FEED, S1),
        subfeed_segment_path("lab", FEED, S1, 0),
        subfeed_segment_path("lab", FEED, S2, 3),  # segments without a head: nothing to go by
        subfeed_head_path("lab", FEED, S2),
        subfeed_head_path("lab", FEED, S1),  # listed twice
        prefix + "12/12/12/1212/head",  # p(h) that is not the hash's own prefix
        prefix + "zz/zz/zz/" + "z" * 40 + "/head",
        subfeed_head_path("other", FEED, S1),  # another channel
        subfeed_head_path("lab", "cd" * 32, S1),  # another feed
    ]
    assert subfeed_hashes_from_keys("lab", FEED, keys) == [S1, S2]

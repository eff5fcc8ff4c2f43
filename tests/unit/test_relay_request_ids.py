"""The relay client's request ids stay u32 and never 0 (0 asks for no reply): after the largest
u32 they start again from 1. The first version of pub-sub v2 went from 2^32-1 to 2^32+1, which a
publish record cannot hold."""

from __future__ import annotations

import itertools

from kachery_node.protocol import relay_frames
from kachery_node.transport.pubsub.relay_client import _request_ids


def test_request_ids_wrap_to_one_after_the_largest_u32():
    top = relay_frames.MAX_ID
    ids = list(itertools.islice(_request_ids(top - 1), 4))
    assert ids == [top - 1, top, 1, 2]
    for i in ids:  # each fits a publish record
        relay_frames.encode_publish(i, "lab-requestFiles", b"m")


def test_request_ids_start_at_one():
    assert list(itertools.islice(_request_ids(), 3)) == [1, 2, 3]

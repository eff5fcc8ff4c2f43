"""spec/vectors/protocol-v1.json checked against the implementation: every valid vector is
accepted and every invalid one refused (envelopes, hub requests, task results, heads, keys)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from kachery_node.protocol import bucket_layout
from kachery_node.protocol.channel_errors import MalformedRequestError
from kachery_node.protocol.feed_bucket import HeadError, parse_head
from kachery_node.protocol.hub_requests import verify_request
from kachery_node.protocol.node_messages import EnvelopeError, open_envelope
from kachery_node.protocol.task_messages import (
    InvalidTaskResultError,
    decode_result_object,
    task_hash,
    verify_result,
)

PATH = Path(__file__).parents[2] / "spec/vectors/protocol-v1.json"
V = json.loads(PATH.read_text())
ENV, HUB, RES, HEADS = V["envelopes"], V["hub_requests"], V["task_results"], V["heads"]


@pytest.mark.parametrize("case", ENV["valid"], ids=lambda c: c["why"])
def test_valid_envelopes(case):
    env = open_envelope(case["line"].encode(), channel=ENV["channel"], band=ENV["band"], now_ms=ENV["now_ms"])
    assert env.sender == case["sender"] and env.body == case["body"]


@pytest.mark.parametrize("case", ENV["invalid"], ids=lambda c: c["why"])
def test_invalid_envelopes(case):
    with pytest.raises(EnvelopeError):
        open_envelope(case["line"].encode(), channel=case.get("channel", ENV["channel"]),
                      band=case.get("band", ENV["band"]), now_ms=ENV["now_ms"])


@pytest.mark.parametrize("case", HUB["valid"], ids=lambda c: c["why"])
def test_valid_hub_requests(case):
    signer, body = verify_request(case["kind"], case["body"].encode(), case["headers"],
                                  hub_id=HUB["hub_id"], now=HUB["now_ms"])
    assert signer == case["signer"] and body == json.loads(case["body"])


@pytest.mark.parametrize("case", HUB["invalid"], ids=lambda c: c["why"])
def test_invalid_hub_requests(case):
    from kachery_node.protocol.channel_errors import BadSignatureError, StaleRequestError

    with pytest.raises((MalformedRequestError, BadSignatureError, StaleRequestError)):
        verify_request(case["kind"], case["body"].encode(), case["headers"],
                       hub_id=HUB["hub_id"], now=HUB["now_ms"])


def test_task_hash_of_the_result_vectors():
    assert task_hash(RES["function_id"], RES["kwargs"]) == RES["task_hash"]


@pytest.mark.parametrize("case", RES["valid"], ids=lambda c: c["why"])
def test_valid_task_results(case):
    res = verify_result(decode_result_object(case["object"].encode()), task_hash=RES["task_hash"],
                        function_id=RES["function_id"])
    assert (res.provider, res.result, res.time_ms) == (case["provider"], case["result"], case["time_ms"])


@pytest.mark.parametrize("case", RES["invalid"], ids=lambda c: c["why"])
def test_invalid_task_results(case):
    with pytest.raises(InvalidTaskResultError):
        verify_result(decode_result_object(case["object"].encode()), task_hash=RES["task_hash"],
                      function_id=RES["function_id"])


@pytest.mark.parametrize("case", HEADS["valid"], ids=lambda c: c["why"])
def test_valid_heads(case):
    head = parse_head(case["head"].encode())
    assert head.count == case["count"] and len(head.tail) == case["tail_length"]


@pytest.mark.parametrize("case", HEADS["invalid"], ids=lambda c: c["why"])
def test_invalid_heads(case):
    with pytest.raises(HeadError):
        parse_head(case["head"].encode())


def test_bucket_keys():
    k = V["bucket_keys"]
    c, f, s = k["channel"], k["feed_id"], k["subfeed_hash"]
    assert bucket_layout.subfeed_head_path(c, f, s) == k["head"]
    assert bucket_layout.subfeed_segment_path(c, f, s, 12) == k["segment_12"]
    assert bucket_layout.file_path(c, k["sha1"]) == k["file"]
    assert bucket_layout.task_result_path(c, k["task_hash"]) == k["task_result"]


def test_the_committed_vectors_are_what_the_generator_writes(capsys):
    # Run in this process (a unit test starts no processes): the script prints the vectors.
    runpy.run_path(str(PATH.parent / "generate_protocol_vectors.py"), run_name="__main__")
    assert json.loads(capsys.readouterr().out) == V

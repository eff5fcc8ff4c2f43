"""spec/vectors/witness-v1.json checked against the implementation, and against its generator
(so a format change shows up here rather than as silently regenerated vectors)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

import kachery_feeds as kf
from kachery_feeds.checkpoints import (
    CheckpointError,
    checkpoint_from_last,
    cosigned_message,
    key_id,
    parse_checkpoint,
    parse_cosignature_line,
    parse_witnessed_checkpoint,
    verify_cosignature,
)

SPEC = Path(__file__).parents[2] / "spec/vectors"
V = json.loads((SPEC / "witness-v1.json").read_text())
FEED, SUB = V["feed_id"], V["subfeed_hash"]
CP, COS, WC = V["checkpoints"], V["cosignatures"], V["witnessed_checkpoints"]


def test_the_committed_vectors_are_what_the_generator_makes():
    made = runpy.run_path(str(SPEC / "generate_witness_vectors.py"))["main"]()
    assert json.loads(json.dumps(made, ensure_ascii=False)) == V


def test_the_messages_form_a_valid_chain(tmp_path):
    sf = kf.open_store(tmp_path / "s.db").load_feed(FEED).load_subfeed("~" + SUB)
    assert sf.add_signed_messages([m.encode() for m in V["messages"]]) == 3


@pytest.mark.parametrize("case", CP["valid"], ids=lambda c: c["why"])
def test_valid_checkpoints(case):
    cp = checkpoint_from_last(FEED, SUB, case["last"].encode())
    assert cp.text().decode() == case["text"] and parse_checkpoint(case["text"]) == cp
    assert (cp.size, cp.last_hash.hex()) == (case["size"], case["hash"])


@pytest.mark.parametrize("case", CP["invalid_text"], ids=lambda c: c["why"])
def test_invalid_checkpoint_texts(case):
    with pytest.raises(CheckpointError):
        parse_checkpoint(case["text"])


@pytest.mark.parametrize("case", CP["invalid_last"], ids=lambda c: c["why"])
def test_invalid_last_messages(case):
    with pytest.raises(CheckpointError):
        checkpoint_from_last(FEED, SUB, case["last"].encode())


@pytest.mark.parametrize("case", COS["valid"], ids=lambda c: c["why"])
def test_valid_cosignatures(case):
    cp = parse_checkpoint(case["checkpoint"])
    c = parse_cosignature_line(case["line"])
    assert c.witness == COS["witness_public_key"] and c.timestamp == case["time"]
    assert key_id(c.witness).hex() == case["key_id_hex"]
    assert cosigned_message(cp, c.timestamp).decode() == case["signed_message"]
    assert verify_cosignature(cp, c)


@pytest.mark.parametrize("case", COS["invalid"], ids=lambda c: c["why"])
def test_cosignatures_that_do_not_verify(case):
    assert not verify_cosignature(parse_checkpoint(case["checkpoint"]), parse_cosignature_line(case["line"]))


@pytest.mark.parametrize("case", COS["malformed"], ids=lambda c: c["why"])
def test_malformed_cosignature_lines(case):
    with pytest.raises(CheckpointError):
        parse_cosignature_line(case["line"])


@pytest.mark.parametrize("case", WC["valid"], ids=lambda c: c["why"])
def test_valid_witnessed_checkpoints(case):
    assert parse_witnessed_checkpoint(case["object"].encode()).witnesses() == case["witnesses"]


@pytest.mark.parametrize("case", WC["invalid"], ids=lambda c: c["why"])
def test_invalid_witnessed_checkpoints(case):
    with pytest.raises(CheckpointError):
        parse_witnessed_checkpoint(case["object"].encode())


@pytest.mark.parametrize("case", V["fork_notices"]["valid"], ids=lambda c: c["why"])
def test_fork_notices(case):
    assert kf.verify_fork_proof(case["proof"].encode()).position == case["position"]

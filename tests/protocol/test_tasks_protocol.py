"""Task hashes, canonical JSON and signed results (spec/tasks.md), against the committed vectors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import kachery_node as kn
from kachery_node.identity import Keypair
from kachery_node.protocol.task_messages import (
    InvalidTaskResultError,
    TaskArgumentError,
    canonical_json,
    format_number,
    sign_result,
    task_hash,
    verify_result,
)

VECTORS_PATH = Path(__file__).parents[2] / "spec/vectors/tasks-v1.json"
VECTORS = json.loads(VECTORS_PATH.read_text())


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["description"])
def test_vectors(case):
    kwargs = json.loads(case["kwargs_json"])
    text = canonical_json({"function_id": case["function_id"], "kwargs": kwargs}).decode()
    assert text == case["canonical"]
    assert task_hash(case["function_id"], kwargs) == case["task_hash"]


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda c: c["description"])
def test_invalid_vectors_are_refused(case):
    with pytest.raises(TaskArgumentError):
        task_hash(case["function_id"], json.loads(case["kwargs_json"]))


def test_numbers_follow_ecmascript():
    assert [format_number(x) for x in (1.0, -0.0, 1e-7, 1e15, 0.1, 5e-324, 123e-20, 2.0**53 - 1)] == [
        "1", "0", "1e-7", "1000000000000000", "0.1", "5e-324", "1.23e-18", "9007199254740991"]
    # Any number of magnitude above 2^53-1 is refused, integer or float (spec/tasks.md §2).
    for bad in (math.nan, math.inf, 2**53, -(2**53), True, 2.0**53, 1e21, -1e300):
        with pytest.raises(TaskArgumentError):
            format_number(bad)


def test_numpy_arguments_hash_like_lists():
    a = np.array([[1.0, 2.5], [3.0, -0.5]])
    plain = {"m": [[1, 2.5], [3, -0.5]], "n": 3}
    assert task_hash("f.1", {"m": a, "n": np.int64(3)}) == task_hash("f.1", plain)


def test_bad_arguments_get_a_typed_error():
    for kwargs in ({1: 2}, {"x": object()}, {"x": "\ud800"}, {"x": np.array(["a"])}):
        with pytest.raises(TaskArgumentError):
            task_hash("f.1", kwargs)
    assert issubclass(TaskArgumentError, kn.KacheryError)


def test_results_verify_and_tampering_is_caught():
    key = Keypair.generate()
    h = task_hash("f.1", {"x": 1})
    obj = sign_result(key, task_hash=h, function_id="f.1", result={"y": [1, 2]}, now_ms=1_700_000_000_000)
    res = verify_result(obj, task_hash=h, function_id="f.1")
    assert res.result == {"y": [1, 2]} and res.provider == key.public_hex
    tampered = {**obj, "body": obj["body"].replace("[1,2]", "[1,3]")}
    with pytest.raises(InvalidTaskResultError, match="bad signature"):
        verify_result(tampered, task_hash=h, function_id="f.1")
    with pytest.raises(InvalidTaskResultError, match="another task"):
        verify_result(obj, task_hash=task_hash("f.1", {"x": 2}), function_id="f.1")
    other = Keypair.generate()  # a forger re-signing the body under its own key, claiming key's name
    forged_body = obj["body"]
    forged = {"body": forged_body, "signature": other.sign(b"x" * 10).hex()}
    with pytest.raises(InvalidTaskResultError):
        verify_result(forged, task_hash=h, function_id="f.1")
    with pytest.raises(InvalidTaskResultError):
        verify_result({"body": 1}, task_hash=h, function_id="f.1")

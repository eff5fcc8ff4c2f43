"""Writing to someone else's feed: signed submissions appended by the owner with attribution."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

import kachery_feeds as kf
from kachery_node.apps.feed_submissions import (
    SUBMISSION_CONTEXT,
    SubmissionError,
    parse_submission,
    verify_submission,
)
from kachery_node.identity import Keypair
from tests.network.conftest import ALL_ROLES

ROOT = Path(__file__).parents[2]


def _run(node, code: str, timeout: float = 60) -> str:
    out = subprocess.run([sys.executable, "-c", code], env=node.env, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr + node.log()[-2000:]
    return out.stdout.strip()


SUBMIT = """
import kachery_node as kn
try:
    print("ok", kn.submit_message({uri!r}, {payload!r}, channel="lab", timeout=20))
except kn.KacheryError as e:
    print(type(e).__name__ + ":", e)
"""


@pytest.mark.slow
def test_submissions_are_appended_with_attribution_and_refused_from_others(lab, tmp_path):
    alice = lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ["request-tasks", "request-feeds"])
    dave = lab.add_node("dave", ["request-tasks"])
    eve = lab.add_node("eve", ["request-feeds"])
    store = kf.open_store(alice.storage_dir / "feeds.db")
    sf = store.create_feed().load_subfeed("curation")
    # Before the owner's backend runs: the error says the owner is not accepting, not just that
    # some function with a hashed name has no provider.
    out = _run(bob, SUBMIT.format(uri=sf.uri, payload={"early": True}))
    assert out.startswith("NoProviderError:") and "not accepting submissions" in out, out
    owner = subprocess.Popen([sys.executable, "-c", f"""
import kachery_node as kn
sf = kn.load_subfeed({sf.uri!r})
kn.run_task_backend(channels=["lab"], functions=[kn.accept_submissions(sf, allowed=[{bob.node_id!r}])])
"""], env=alice.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not any(f.startswith("kachery.submit_message.")
                      for b in alice.client.status()["task_backends"] for f in b["functions"]):
            assert time.monotonic() < deadline and owner.poll() is None, "the backend did not register"
            time.sleep(0.05)
        assert _run(bob, SUBMIT.format(uri=sf.uri, payload={"action": "label", "unit": 7})) == "ok 0"
        out = _run(dave, SUBMIT.format(uri=sf.uri, payload={"action": "delete everything"}))
        assert out.startswith("TaskError:") and "may not submit" in out, out
        out = _run(eve, SUBMIT.format(uri=sf.uri, payload={"action": "x"}))
        assert out.startswith("NoProviderError:") and "request-tasks" in out, out
    finally:
        owner.terminate()
        owner.wait(timeout=10)
    records = sf.get_records()
    assert [r.payload for r in records] == [{"action": "label", "unit": 7}]
    meta = records[0].metadata
    assert meta["submitted_by"] == bob.node_id and len(meta["signature"]) == 128
    sub = verify_submission(records[0])
    assert sub.submitter == bob.node_id and sub.subfeed_uri.endswith(sf.subfeed_hash)


def test_replayers_can_reverify_and_catch_a_forged_attribution():
    key = Keypair.generate()
    text = orjson.dumps({"subfeed_uri": "feed://x/~y", "payload": {"a": 1}, "submitter": key.public_hex,
                         "time_ms": 1, "nonce": "n" * 12}, option=orjson.OPT_SORT_KEYS).decode()
    sig = key.sign(SUBMISSION_CONTEXT + hashlib.sha256(text.encode()).digest()).hex()
    assert parse_submission(text, sig).payload == {"a": 1}
    meta = {"submitted_by": key.public_hex, "submission": text, "signature": sig}
    ok = kf.MessageRecord(0, 0, {"a": 1}, meta)
    assert verify_submission(ok).submitter == key.public_hex
    with pytest.raises(SubmissionError, match="differs"):
        verify_submission(kf.MessageRecord(0, 0, {"a": 2}, ok.metadata))
    with pytest.raises(SubmissionError, match="bad signature"):
        parse_submission(text.replace('"a":1', '"a":3'), sig)
    with pytest.raises(SubmissionError, match="submitted_by"):
        verify_submission(kf.MessageRecord(0, 0, {"a": 1}, {**ok.metadata, "submitted_by": "ab" * 32}))


@pytest.mark.slow
def test_lab_notebook_example():
    out = subprocess.run([sys.executable, str(ROOT / "examples/lab_notebook.py"), "demo"],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("submitted") == 4 and out.stdout.count("replayed and verified") == 3
    assert "every member rebuilt the same state" in out.stdout


def _signed(key: Keypair, uri: str, payload, *, time_ms: int | None = None) -> dict:
    text = orjson.dumps({"subfeed_uri": uri, "payload": payload, "submitter": key.public_hex,
                         "time_ms": int(time.time() * 1000) if time_ms is None else time_ms,
                         "nonce": "ab" * 12}, option=orjson.OPT_SORT_KEYS).decode()
    sig = key.sign(SUBMISSION_CONTEXT + hashlib.sha256(text.encode()).digest()).hex()
    return {"submission": text, "signature": sig}


def test_the_owners_checks_without_a_network(tmp_path):
    import kachery_node.apps.tasks as kt
    from kachery_node.apps.feed_submissions import accept_submissions

    sf = kf.open_store(tmp_path / "feeds.db").create_feed().load_subfeed("curation")
    uri = f"feed://{sf.feed_id}/~{sf.subfeed_hash}"
    member, stranger = Keypair.generate(), Keypair.generate()
    accept = accept_submissions(sf, allowed={member.public_hex})
    assert accept.function_type == "action" and accept.function_id.endswith(sf.subfeed_hash)
    ok = _signed(member, uri, {"a": 1})
    assert accept(**ok)["message_number"] == 0
    with pytest.raises(SubmissionError, match="appended before"):
        accept(**ok)
    with pytest.raises(SubmissionError, match="may not submit"):
        accept(**_signed(stranger, uri, {"a": 2}))
    with pytest.raises(SubmissionError, match="stale"):
        accept(**_signed(member, uri, {"a": 3}, time_ms=1))
    with pytest.raises(SubmissionError, match="not feed://"):
        accept(**_signed(member, "feed://" + "cd" * 32 + "/~" + "ef" * 20, {"a": 4}))
    kt._current.task = kt.TaskContext(accept.function_id, "lab", "r" * 12, "0" * 64, stranger.public_hex)
    try:
        with pytest.raises(SubmissionError, match="relayed"):
            accept(**_signed(member, uri, {"a": 5}))
    finally:
        kt._current.task = None
    assert len(sf.get_records()) == 1
    with pytest.raises(kf.NotWriteableError):
        accept_submissions(kf.open_store(tmp_path / "other.db").load_subfeed(sf.uri))

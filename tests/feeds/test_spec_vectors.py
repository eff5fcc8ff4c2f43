"""spec/vectors/feeds-v1.json checked against the implementation (format v1 is frozen)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nacl.bindings
import orjson
import pytest

import kachery_feeds as kf
from kachery_feeds.messages import SIGNATURE_CONTEXT, build_body, message_hash, sign_hash

VECTORS = json.loads((Path(__file__).parents[2] / "spec/vectors/feeds-v1.json").read_text())


def test_feed_id_is_the_public_key_of_the_seed():
    pk, _sk = nacl.bindings.crypto_sign_seed_keypair(bytes.fromhex(VECTORS["seed_hex"]))
    assert pk.hex() == VECTORS["feed_id"]
    assert SIGNATURE_CONTEXT.hex() == VECTORS["signature_context_hex"]


@pytest.mark.parametrize("m", VECTORS["messages"], ids=lambda m: f"message{m['number']}")
def test_message_vector(m):
    feed_id, sh = VECTORS["feed_id"], VECTORS["subfeed_hash"]
    prev = None if m["number"] == 0 else bytes.fromhex(VECTORS["messages"][m["number"] - 1]["sha256"])
    meta = None if m["metadata"] is None else orjson.dumps(m["metadata"], option=orjson.OPT_SORT_KEYS)
    payload = orjson.dumps(m["payload"], option=orjson.OPT_SORT_KEYS)
    body = build_body(feed_id, sh, m["number"], prev, m["timestamp_ms"], payload, meta)
    assert body.decode() == m["body"]
    # The fast concatenation equals a plain sorted-key serialization of the same body.
    as_dict = {"feed": feed_id, "n": m["number"], "payload": m["payload"],
               "prev": None if prev is None else prev.hex(), "subfeed": sh, "ts": m["timestamp_ms"], "v": 1}
    if m["metadata"] is not None:
        as_dict["meta"] = m["metadata"]
    assert orjson.dumps(as_dict, option=orjson.OPT_SORT_KEYS) == body
    assert hashlib.sha256(body).hexdigest() == m["sha256"]
    assert (SIGNATURE_CONTEXT + message_hash(body)).hex() == m["signing_input_hex"]
    if m["signature"]:
        _pk, sk = nacl.bindings.crypto_sign_seed_keypair(bytes.fromhex(VECTORS["seed_hex"]))
        assert sign_hash(sk, message_hash(body)).hex() == m["signature"]
    parsed = kf.parse_message(m["wire"].encode(), feed_id, sh)
    assert parsed.payload == m["payload"] and parsed.metadata == m["metadata"]
    assert parsed.number == m["number"] and parsed.timestamp_ms == m["timestamp_ms"]


def test_vector_segment_imports_into_a_store(tmp_path):
    store = kf.open_store(tmp_path / "s.db")
    sf = store.load_subfeed(f"feed://{VECTORS['feed_id']}/{VECTORS['subfeed_name']}")
    lines = kf.decode_segment(VECTORS["segment"].encode())
    assert sf.add_signed_messages(lines) == 3
    assert sf.get_messages() == [m["payload"] for m in VECTORS["messages"]]
    assert sf.get_signed_messages() == [m["wire"].encode() for m in VECTORS["messages"]]
    assert kf.encode_segment(sf.get_signed_messages()).decode() == VECTORS["segment"]


@pytest.mark.parametrize("case", VECTORS["invalid_ranges"], ids=lambda c: c["why"])
def test_invalid_vectors_are_refused_and_change_nothing(tmp_path, case):
    store = kf.open_store(tmp_path / "s.db")
    feed_id = case.get("feed_id", VECTORS["feed_id"])
    sf = store.load_subfeed(f"feed://{feed_id}/{VECTORS['subfeed_name']}")
    with pytest.raises(kf.VerificationError):
        sf.add_signed_messages(_wire(case))
    assert sf.get_num_local_messages() == 0


@pytest.mark.parametrize("v", VECTORS["subfeed_hash_vectors"], ids=lambda v: json.dumps(v["name"]))
def test_subfeed_hash_vectors(v):
    assert kf.subfeed_hash(v["name"]) == v["hash"]


def _wire(case) -> list[bytes]:
    if "wire_hex" in case:
        return [bytes.fromhex(w) for w in case["wire_hex"]]
    return [w.encode("utf-8") for w in case["wire"]]


@pytest.mark.parametrize("case", VECTORS["valid_ranges"], ids=lambda c: c["why"])
def test_valid_ranges_import(tmp_path, case):
    store = kf.open_store(tmp_path / "s.db")
    sf = store.load_subfeed(f"feed://{VECTORS['feed_id']}/~{VECTORS['subfeed_hash']}")
    assert sf.add_signed_messages(_wire(case)) == len(case["wire"])
    assert sf.get_messages() == case["payloads"]


@pytest.mark.parametrize("case", VECTORS["invalid_ranges"], ids=lambda c: c["why"])
def test_every_invalid_range_is_refused_by_the_parser_too(case):
    """Each line is refused alone (parse or signature), or the range fails check_chain."""
    from kachery_feeds.messages import check_chain, parse_range, parse_wire

    feed_id = case.get("feed_id", VECTORS["feed_id"])
    with pytest.raises(kf.VerificationError):
        msgs = [parse_wire(line, feed_id, VECTORS["subfeed_hash"]) for line in _wire(case)]
        check_chain(msgs, bytes.fromhex(feed_id))
    if _wire(case):  # and by the import path's one-pass parser
        with pytest.raises(kf.VerificationError):
            parse_range(_wire(case), feed_id, VECTORS["subfeed_hash"], bytes.fromhex(feed_id))



@pytest.mark.parametrize("case", VECTORS["invalid_segments"], ids=lambda c: c["why"])
def test_invalid_segments_are_refused(tmp_path, case):
    store = kf.open_store(tmp_path / "s.db")
    sf = store.load_subfeed(f"feed://{VECTORS['feed_id']}/~{VECTORS['subfeed_hash']}")
    with pytest.raises(kf.VerificationError):
        sf.add_signed_messages(kf.decode_segment(case["segment"].encode()))
    assert sf.get_num_local_messages() == 0


@pytest.mark.parametrize("case", VECTORS["ed25519"], ids=lambda c: c["why"][:60])
def test_ed25519_rules_are_libsodiums(case):
    """The spec pins libsodium's crypto_sign_verify_detached; the feed verifier is that call."""
    from kachery_feeds.messages import signature_is_valid

    pk, sig = bytes.fromhex(case["public_key"]), bytes.fromhex(case["signature"])
    msg = bytes.fromhex(case["message_hex"])
    try:
        nacl.bindings.crypto_sign_open(sig + msg, pk)
        ok = True
    except Exception:
        ok = False
    assert ok == case["valid"]
    from kachery_node.identity import verify_signature

    assert verify_signature(case["public_key"], msg, sig) == case["valid"]
    # The feed's own check prefixes a context; run it on a context-free message by construction:
    if msg.startswith(SIGNATURE_CONTEXT) and len(msg) == len(SIGNATURE_CONTEXT) + 32:
        assert signature_is_valid(pk, msg[len(SIGNATURE_CONTEXT):], sig) == case["valid"]


@pytest.mark.parametrize("case", VECTORS["fork_proofs"], ids=lambda c: str(c["position"]))
def test_fork_proof_vectors_verify(case):
    info = kf.verify_fork_proof(case["proof"].encode())
    assert (info.feed_id, info.subfeed_hash, info.position) == (
        case["feed_id"], case["subfeed_hash"], case["position"])


@pytest.mark.parametrize("case", VECTORS["invalid_fork_proofs"], ids=lambda c: c["why"])
def test_invalid_fork_proofs_are_refused(case):
    with pytest.raises(kf.VerificationError):
        kf.verify_fork_proof(case["proof"].encode())


@pytest.mark.parametrize("case", VECTORS["invalid_subfeed_names_json"], ids=lambda c: c["why"])
def test_invalid_subfeed_names_are_refused(case):
    with pytest.raises(kf.InvalidUriError):
        kf.subfeed_hash(json.loads(case["name_json"]))


def test_object_names_hash_pythons_json_dumps_text():
    for v in VECTORS["subfeed_hash_vectors"]:
        if "json" in v:
            assert hashlib.sha1(v["json"].encode()).hexdigest() == v["hash"]


@pytest.mark.parametrize("case", VECTORS["uri_vectors"], ids=lambda c: c["uri"][70:] or "feed")
def test_uri_vectors(case):
    parsed = kf.parse_feed_uri(case["uri"])
    assert parsed.feed_id == case["feed_id"]
    assert parsed.subfeed_hash == case["subfeed_hash"]


@pytest.mark.parametrize("case", VECTORS["invalid_uris"], ids=lambda c: c["why"])
def test_invalid_uris_are_refused(case):
    with pytest.raises(kf.InvalidUriError):
        kf.parse_feed_uri(case["uri"])


@pytest.mark.parametrize("case", VECTORS["uri_writer_vectors"], ids=lambda c: c["uri"][72:])
def test_uri_writer_vectors(case):
    assert kf.subfeed_uri(VECTORS["feed_id"], case["name"]) == case["uri"]


def test_the_committed_vectors_are_what_the_generator_writes():
    import subprocess
    import sys

    script = Path(__file__).parents[2] / "spec/vectors/generate_feeds_vectors.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=120, check=True)
    assert json.loads(out.stdout) == VECTORS

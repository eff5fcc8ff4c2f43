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
    sf = store.load_subfeed(f"feed://{VECTORS['feed_id']}/{VECTORS['subfeed_name']}")
    with pytest.raises(kf.VerificationError):
        sf.add_signed_messages([w.encode() for w in case["wire"]])
    assert sf.get_num_local_messages() == 0


@pytest.mark.parametrize("v", VECTORS["subfeed_hash_vectors"], ids=lambda v: json.dumps(v["name"]))
def test_subfeed_hash_vectors(v):
    assert kf.subfeed_hash(v["name"]) == v["hash"]

"""spec/vectors/succession-v1.json against the implementation (spec/feeds.md §9)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nacl.bindings
import pytest

import kachery_feeds as kf
from kachery_feeds.succession import KeyChain

ROOT = Path(__file__).parents[2]
VECTORS = json.loads((ROOT / "spec/vectors/succession-v1.json").read_text())
FEED, SUB = VECTORS["feed"], VECTORS["subfeed"]


def _lines(xs: list[str]) -> list[bytes]:
    return [x.encode("utf-8") for x in xs]


def test_the_feed_id_is_the_first_key_and_the_chain_verifies():
    assert nacl.bindings.crypto_sign_seed_keypair(bytes.fromhex(VECTORS["seeds"]["K0"]))[0].hex() == FEED
    chain = KeyChain.verify(FEED, _lines(VECTORS["records"]))
    assert [r.body_hash.hex() for r in chain.records] == VECTORS["record_hashes"]
    k2 = nacl.bindings.crypto_sign_seed_keypair(bytes.fromhex(VECTORS["seeds"]["K2"]))[0]
    assert chain.current_key == k2 and chain.current_recovery is None
    for case in VECTORS["key_for"]:
        assert chain.key_for(SUB, case["position"]).hex() == case["key"]


def test_the_messages_import_into_a_fresh_store(tmp_path):
    store = kf.open_store(tmp_path / "s.db")
    sf = store.load_feed(FEED).load_subfeed(VECTORS["subfeed_name"])
    assert sf.add_signed_messages(_lines(VECTORS["messages"])) == 5
    assert sf.get_messages() == ["zero", "one", "two", "three", "four"]
    assert store.key_succession(FEED) == _lines(VECTORS["records"])
    assert store.verify().ok


@pytest.mark.parametrize("case", VECTORS["invalid_chains"], ids=lambda c: c["why"][:50])
def test_invalid_chains_are_refused(case):
    with pytest.raises(kf.VerificationError):
        KeyChain.verify(FEED, _lines(case["records"]))


@pytest.mark.parametrize("case", VECTORS["violations"], ids=lambda c: c["why"][:50])
def test_violations_are_refused_as_forks_with_the_vector_proof(tmp_path, case):
    store = kf.open_store(tmp_path / "s.db")
    sf = store.load_feed(FEED).load_subfeed("~" + SUB)
    assert kf.verify_fork_proof(case["proof"].encode()) == (FEED, SUB, case["position"])
    sf.add_signed_messages(_lines(case["range"]))
    with pytest.raises(kf.ForkError) as info:
        sf.add_signed_messages(_lines(case["then"]))
    assert info.value.position == case["position"]
    assert info.value.proof == case["proof"].encode()


def test_the_committed_vectors_are_what_the_generator_writes():
    script = ROOT / "spec/vectors/generate_succession_vectors.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=120, check=True)
    assert json.loads(out.stdout) == VECTORS

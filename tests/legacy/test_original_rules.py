"""The original's JSON and signature rules, pinned by original-protocol.md's test vectors and by
JavaScript itself (node), which the original daemon ran (spec/legacy.md §1)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kachery_node.legacy.canonical_json import NotCanonicalizableError, canonical_json, js_number
from kachery_node.legacy.original_messages import (
    OriginalMessageError,
    sign_body,
    signature_scheme,
    verify_chain,
)

SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
PUBLIC = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
VECTOR = {"type": "getChannelConfig", "channelName": "test-channel"}
SIGNATURE = ("52e7f2c8f73e9aad2bbc9adde5223fdb1f3b1ba05ad05ad402fcffe7639aaa01"
             "d5c495675bdcdbc0d98320be91fdce497675abe9dc6c5d0eda6ee9c7f88fb008")
LEGACY_SIGNATURE = ("ad10a598eec24ab16702bbf294c1c221fe5e427aca37ae5b3a759c070b7fb281"
                    "8f48d3704422c34d7ab5fc0c4516f8f013b039e2ba15a6d734f8a432d09e0804")


def test_protocol_document_vectors() -> None:
    assert canonical_json(VECTOR) == '{"channelName":"test-channel","type":"getChannelConfig"}'
    assert sign_body(SEED, VECTOR) == SIGNATURE
    assert signature_scheme(PUBLIC, VECTOR, SIGNATURE) == "sha1"
    assert signature_scheme(PUBLIC, VECTOR, LEGACY_SIGNATURE) == "legacy"
    assert signature_scheme(PUBLIC, {**VECTOR, "x": 1}, SIGNATURE) is None


@pytest.mark.parametrize(("value", "text"), [
    (1.0, "1"), (-0.0, "0"), (1e-7, "1e-7"), (1e21, "1e+21"), (1e20, "100000000000000000000"),
    (0.1, "0.1"), (1e-6, "0.000001"), (2**60, "1152921504606847000"), (5e-324, "5e-324"),
    (-1.5e300, "-1.5e+300"), (123456789.125, "123456789.125"),
])
def test_numbers_as_javascript_writes_them(value, text) -> None:
    assert js_number(value) == text


def test_what_has_no_json_is_refused() -> None:
    for bad in (float("nan"), float("inf"), {1: 2}, object()):
        with pytest.raises(NotCanonicalizableError):
            canonical_json(bad)


def _chain(payloads: list) -> list[dict]:
    out, previous = [], None
    for i, p in enumerate(payloads):
        body = {"message": p, "messageNumber": i, "timestamp": 1000 + i}
        if previous:
            body["previousSignature"] = previous
        previous = sign_body(SEED, body)
        out.append({"body": body, "signature": previous})
    return out


def test_chain_rules() -> None:
    good = _chain([{"a": 1}, {"b": 2.5}, [1, 2]])
    assert [m.payload for m in verify_chain(PUBLIC, good)] == [{"a": 1}, {"b": 2.5}, [1, 2]]
    cases = {
        "says it is message": lambda c: c[1]["body"].__setitem__("messageNumber", 5),
        "does not link": lambda c: c[2]["body"].__setitem__("previousSignature", c[0]["signature"]),
        "does not verify": lambda c: c[1]["body"].__setitem__("message", {"b": 3}),
        "unexpected keys": lambda c: c[0]["body"].__setitem__("extra", 1),
        "has a previousSignature": lambda c: c[0]["body"].__setitem__("previousSignature", "ab" * 64),
        "128 hex": lambda c: c[1]["body"].__setitem__("previousSignature", None),
    }
    for reason, damage in cases.items():
        chain = json.loads(json.dumps(good))
        damage(chain)
        with pytest.raises(OriginalMessageError, match=reason):
            verify_chain(PUBLIC, chain)
    with pytest.raises(OriginalMessageError, match="does not verify"):
        verify_chain("ab" * 32, good)  # another feed's key


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20)

# The original daemon's JSONStringifyDeterministic (original-protocol.md §1.2), verbatim in spirit:
# collect every key at any depth, sort with Array.prototype.sort, stringify with that key list.
_NODE = r"""
const lines = require('fs').readFileSync(0, 'utf8').split('\n').filter(Boolean);
const out = lines.map(line => {
  const x = JSON.parse(line);
  const keys = [];
  JSON.stringify(x, (k, v) => { keys.push(k); return v; });
  keys.sort();
  return JSON.stringify(x, keys);
});
process.stdout.write(JSON.stringify(out));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
@settings(max_examples=40, deadline=None)
@given(st.lists(_json_values, min_size=1, max_size=25))
def test_canonical_json_is_javascripts(values) -> None:
    # Python's json writes floats and escapes (lone surrogates too) that JavaScript reads as
    # the same values; node then writes what the original daemon wrote.
    lines = "\n".join(json.dumps(v) for v in values) + "\n"
    r = subprocess.run(["node", "-e", _NODE], input=lines, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert [canonical_json(v) for v in values] == json.loads(r.stdout)


_STORE_JSON = """
import json, sys, simplejson
values = [simplejson.loads(line) for line in sys.stdin.read().splitlines()]
# kachery-client 1.2.0's _store_json, exactly:
print(json.dumps([simplejson.dumps(v, separators=(",", ":"), indent=None, allow_nan=False) for v in values]))
"""


@settings(max_examples=25, deadline=None)
@given(values=st.lists(_json_values, min_size=1, max_size=20))
def test_store_json_bytes_are_kachery_clients(original_python, values) -> None:
    """store_json writes what kachery-client 1.2.0's store_json wrote, so URIs match."""
    from kachery_node.storage.data_objects import encode_json

    lines = "\n".join(json.dumps(v) for v in values) + "\n"
    r = subprocess.run([str(original_python), "-c", _STORE_JSON], input=lines,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert [encode_json(v).decode() for v in values] == json.loads(r.stdout)

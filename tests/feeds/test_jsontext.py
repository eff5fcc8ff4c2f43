"""kachery_feeds.jsontext: the fast path (orjson round trip) and the exact path agree."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kachery_feeds.jsontext import MAX_DEPTH, JsonTextError, check_exactly, loads

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_every_spelling_of_a_valid_value_is_accepted_with_the_same_value(value):
    compact = orjson.dumps(value)
    spaced = json.dumps(value, indent=1, ensure_ascii=True).encode()  # the slow path
    assert loads(compact) == loads(spaced) == orjson.loads(compact)
    check_exactly(compact)  # the exact path accepts what the fast path accepts


@pytest.mark.parametrize("text", [
    b'{"a":1,"a":1}', b'{"a":{"b":1,"b":2}}', b'[-0]', b'{"x":-0}', b'18446744073709551616',
    b'[-9223372036854775809]', b'1e400', b'"\\ud800"', b'\xef\xbb\xbf{}', b'[1,]', b'NaN',
    b'{"a":1} {"b":2}', b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1),
    b" " + b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1),
])
def test_refused(text):
    with pytest.raises(JsonTextError):
        loads(text)


def test_depth_limit_is_exact_on_both_paths():
    ok = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH  # orjson cannot write this: the exact path decides
    assert loads(ok) is not None and loads(b" " + ok) is not None
    assert loads(b"[-0.0, 18446744073709551615, -9223372036854775808]") == [-0.0, 2**64 - 1, -(2**63)]

"""The node's decoders of stored content raise kachery_node's errors (KacheryError) on any input:
``sha1://`` URIs, manifests (they come from the network), and load_json / load_npy / load_pkl /
load_text of arbitrary bytes (issue 11, defect 12).

Bounded examples (CI runs them in seconds); ``KACHERY_FUZZ_EXAMPLES=5000`` for a longer hunt.
Inputs that once raised an untyped error are kept as ``@example``s, or as plain tests where
hypothesis cannot print them (100k-deep nesting).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import kachery_node as kn
from kachery_node.storage.manifest import CHUNK_SIZE, parse_manifest

FUZZ = settings(max_examples=int(os.environ.get("KACHERY_FUZZ_EXAMPLES", "200")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
HEX = "0123456789abcdef"
SHA1 = "ab" * 20

_STORAGE: kn.Storage | None = None


def storage() -> kn.Storage:
    """One storage for the whole module (hypothesis does not mix with per-test fixtures)."""
    global _STORAGE
    if _STORAGE is None:
        _STORAGE = kn.Storage(Path(tempfile.mkdtemp(prefix="kn-fuzz-")) / "storage")
    return _STORAGE


def mutate(raw: bytes, data: st.DataObject) -> bytes:
    """Flip a byte, cut the tail or insert bytes somewhere in ``raw``."""
    if not raw:
        return data.draw(st.binary(max_size=20))
    action = data.draw(st.sampled_from(["flip", "cut", "insert", "replace"]))
    i = data.draw(st.integers(0, len(raw) - 1))
    if action == "flip":
        return raw[:i] + bytes([raw[i] ^ data.draw(st.integers(1, 255))]) + raw[i + 1 :]
    if action == "cut":
        return raw[:i]
    if action == "insert":
        return raw[:i] + data.draw(st.binary(min_size=1, max_size=8)) + raw[i:]
    j = data.draw(st.integers(i, min(len(raw), i + 8)))
    return raw[:i] + data.draw(st.sampled_from([b"Infinity", b"NaN", b"-1", b"1e999", b"[", b"{}",
                                                b'"', b"\\ud800", b"9" * 30, b"null"])) + raw[j:]


# ----------------------------------------------------------------------------- URIs
uri_text = st.one_of(
    st.text(),
    st.text(HEX + "ABCDEFxyz/?&=~", max_size=60).map(lambda t: "sha1://" + t),
    st.tuples(st.text(HEX, min_size=40, max_size=40), st.text(max_size=20),
              st.text(HEX, min_size=38, max_size=42), st.text(max_size=25), st.text(max_size=25))
    .map(lambda t: f"sha1://{t[0]}/{t[1]}?manifest={t[2]}&chunkOf={t[2]}~{t[3]}~{t[4]}"),
)


@FUZZ
@given(st.one_of(uri_text, st.binary(), st.integers(), st.none()))
@example(f"sha1://{SHA1}?chunkOf={SHA1}~\u00b2~3")  # str.isdigit() accepted "²": ValueError
@example(f"sha1://{SHA1}?chunkOf={SHA1}~\u0663~4")
@example(f"sha1://{SHA1}?chunkOf={SHA1}~0~{'9' * 30}")
@example(f"sha1://{SHA1}/\ud800?manifest={SHA1}")
def test_parse_uri(uri) -> None:
    try:
        parsed = kn.parse_uri(uri)
    except kn.KacheryError:
        return
    assert len(parsed.sha1) == 40
    if parsed.chunk_of is not None:
        assert 0 <= parsed.chunk_of.start <= parsed.chunk_of.end < 2**63


# ----------------------------------------------------------------------------- manifests
def _valid_manifest(size: int) -> bytes:
    chunks = [{"start": s, "end": min(s + CHUNK_SIZE, size), "sha1": SHA1}
              for s in range(0, size, CHUNK_SIZE)]
    return orjson.dumps({"size": size, "sha1": SHA1, "chunks": chunks})


@FUZZ
@given(st.data())
def test_parse_manifest(data) -> None:
    kind = data.draw(st.sampled_from(["mutated", "arbitrary", "fields"]))
    if kind == "mutated":
        raw = mutate(_valid_manifest(data.draw(st.integers(CHUNK_SIZE + 1, 5 * CHUNK_SIZE))), data)
    elif kind == "arbitrary":
        raw = data.draw(st.binary(max_size=300))
    else:
        value = st.one_of(st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=5),
                          st.none(), st.booleans(), st.lists(st.integers(), max_size=2))
        chunk = st.fixed_dictionaries({}, optional={"start": value, "end": value, "sha1": value})
        doc = st.fixed_dictionaries({}, optional={
            "size": value, "sha1": st.one_of(value, st.just(SHA1)),
            "chunks": st.one_of(value, st.lists(st.one_of(chunk, value), max_size=3))})
        # Python's json writes Infinity and NaN, as a hostile node could.
        raw = json.dumps(data.draw(doc)).encode()
    try:
        m = parse_manifest(raw)
    except kn.KacheryError:
        return
    assert m.chunks[-1].end == m.size and all(type(c.start) is int for c in m.chunks)


def test_manifest_regressions() -> None:
    """Manifests come from other nodes: each of these raised an untyped error."""
    inf = (b'{"size":45000123,"sha1":"' + SHA1.encode() + b'","chunks":[{"start":Infinity,'
           b'"end":20000000,"sha1":"' + SHA1.encode() + b'"}]}')
    for raw in (inf, b"[" * 50_000 + b"]" * 50_000, b'{"size":' + b"[" * 50_000):
        with pytest.raises(kn.CorruptedFileError):
            parse_manifest(raw)
    # Numbers that are not integers are not silently truncated either.
    fractional = _valid_manifest(CHUNK_SIZE + 5).replace(b'"start":0,', b'"start":0.5,')
    with pytest.raises(kn.CorruptedFileError):
        parse_manifest(fractional)
    assert parse_manifest(_valid_manifest(CHUNK_SIZE + 5)).size == CHUNK_SIZE + 5


# ----------------------------------------------------------------------------- data objects
def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


VALID_NPY = [_npy(np.arange(12, dtype="<i8").reshape(3, 4)), _npy(np.array([1.5, -2.0])),
             _npy(np.zeros((2, 2), dtype=[("a", "<i4"), ("b", "<f8")])), _npy(np.array("text"))]
npy_header_text = st.one_of(
    st.text(max_size=80),
    st.builds(lambda d, s, f: f"{{'descr': {d!r}, 'fortran_order': {f}, 'shape': {s}, }}",
              st.one_of(st.sampled_from(["<i8", "|O", "<f8", "V0", "<U5", "|S0", ">c16", "<m8[s]"]),
                        st.text(max_size=8)),
              st.one_of(st.tuples(st.integers(-3, 2**64)), st.tuples(st.integers(0, 10**6),
                        st.integers(0, 10**6)), st.text("(),0123456789-", max_size=12)),
              st.sampled_from(["False", "True", "1", "None", "'x'"])),
)


def _npy_with_header(header: str, version: int, tail: bytes) -> bytes:
    text = header.encode("latin1", "replace") + b"\n"
    if version == 1:
        return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + tail
    return b"\x93NUMPY" + bytes([version, 0]) + len(text).to_bytes(4, "little") + text + tail


@FUZZ
@given(st.data())
def test_load_npy(data) -> None:
    kind = data.draw(st.sampled_from(["mutated", "header", "arbitrary"]))
    if kind == "mutated":
        raw = mutate(data.draw(st.sampled_from(VALID_NPY)), data)
    elif kind == "header":
        raw = _npy_with_header(data.draw(npy_header_text), data.draw(st.sampled_from([1, 2, 3, 4])),
                               data.draw(st.binary(max_size=64)))
    else:
        raw = data.draw(st.binary(max_size=200))
    s = storage()
    try:
        s.load_npy(s.store_bytes(raw))
    except kn.KacheryError:
        pass


@pytest.mark.parametrize("raw", [
    b"",  # EOFError
    VALID_NPY[0][:9],  # truncated magic + version: EOFError
    VALID_NPY[0][:40],  # truncated header: tokenize.TokenError or SyntaxError
    _npy_with_header("{'descr': '<i8', 'fortran_order': False, 'shape': (3,", 1, b""),
    _npy_with_header("{'descr': '<i8', 'fortran_order': False, 'shape': (2**64,), }", 1, b""),
    _npy_with_header("{'descr': '<i8', 'fortran_order': False, 'shape': (-1,), }", 1, b""),
    _npy_with_header("{'descr': 'V0', 'fortran_order': False, 'shape': (2**62,), }", 1, b""),
    _npy_with_header("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", 1, b"x"),
    pickle.dumps([1, 2]),  # a pickle is not an .npy file (np.load would consider unpickling it)
    b"PK\x03\x04" + bytes(26),  # nor is a zip (np.load would return an NpzFile)
])
def test_load_npy_regressions(raw: bytes) -> None:
    s = storage()
    with pytest.raises(kn.InvalidDataError):
        s.load_npy(s.store_bytes(raw))


def test_load_npy_of_valid_files() -> None:
    s = storage()
    for raw in VALID_NPY:
        assert isinstance(s.load_npy(s.store_bytes(raw)), np.ndarray)


VALID_JSON = [b'{"a":[1,2.5,"x",null,true]}', b"[]", b'"text"', b"12"]


@FUZZ
@given(st.data())
def test_load_json_and_text(data) -> None:
    raw = data.draw(st.one_of(st.binary(max_size=200),
                              st.builds(mutate, st.sampled_from(VALID_JSON), st.just(data))))
    s = storage()
    uri = s.store_bytes(raw)
    for load in (s.load_json, s.load_text):
        try:
            load(uri)
        except kn.KacheryError:
            pass


@pytest.mark.parametrize("raw", [
    b"[" * 50_000 + b"]" * 50_000,  # RecursionError
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b"9" * 5000,  # int() digit limit: ValueError, typed already; kept as a guard
    b"\xff\xfe",
])
def test_load_json_regressions(raw: bytes) -> None:
    s = storage()
    with pytest.raises(kn.InvalidDataError):
        s.load_json(s.store_bytes(raw))


VALID_PICKLES = [pickle.dumps(obj, protocol=p) for p in (0, 2, 4, 5) for obj in (
    {"a": [1, 2.5, "x", None], "b": (1, 2), "c": {3, 4}, "d": b"bytes", "e": bytearray(b"x")},
    np.arange(6, dtype=np.int32).reshape(2, 3), [np.float64(1.5), frozenset([1]), 1 + 2j],
    np.zeros(2, dtype=[("a", "<i4"), ("b", ">f8", (2,))]), np.array([1, "x", None], dtype=object),
    np.asfortranarray(np.ones((2, 3))), np.dtype(("f8", (2, 2))), np.array(["ab"], dtype="<U2"))]


def _mutated_pickle(data: st.DataObject) -> bytes:
    raw = data.draw(st.sampled_from(VALID_PICKLES))
    for _ in range(data.draw(st.integers(1, 3))):
        raw = mutate(raw, data)
    return raw


@FUZZ
@given(st.data())
def test_load_pkl(data) -> None:
    """Arbitrary and mutated pickles: typed errors only, and never a crash of numpy."""
    raw = data.draw(st.one_of(st.binary(max_size=200), st.builds(_mutated_pickle, st.just(data))))
    s = storage()
    try:
        s.load_pkl(s.store_bytes(raw))
    except kn.KacheryError:
        pass


def test_valid_pickles_load() -> None:
    s = storage()
    for raw in VALID_PICKLES:
        s.load_pkl(s.store_bytes(raw))

"""Pickle bombs: tiny pickles that name only allowed globals but would build hundreds of MB
(issue 11, defect 11). load_pkl refuses each with PickleTooLargeError (an UnsafePickleError),
quickly and without the memory growth; real data still loads.

Each attack runs in a child process so that its peak memory is measured on its own (and so
that, against code without the limits, the machine is protected by an address-space cap).
"""

from __future__ import annotations

import json
import pickle
import struct
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import kachery_node as kn
from kachery_node.storage import safe_pickle


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _int(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)  # BININT


def _su(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw  # SHORT_BINUNICODE


def _call1(func: bytes, arg: bytes) -> bytes:
    """func(arg) as REDUCE."""
    return func + arg + b"\x85R"  # TUPLE1, REDUCE


def _swapped_arrays(copies: int, nbytes: int) -> bytes:
    """``copies`` arrays whose state all point at one memoized ``nbytes`` buffer, with a
    byte-swapped dtype so that numpy copies it each time: ~nbytes of pickle, copies*nbytes of RAM."""
    out = [b"\x80\x04", _global("numpy._core.multiarray", "_reconstruct"), b"\x94",
           _global("numpy", "ndarray"), b"\x94", _global("numpy", "dtype"), b"\x94",
           b"\x8e" + struct.pack("<Q", nbytes) + b"\x00" * nbytes + b"\x94", b"](" ]
    for _ in range(copies):
        out.append(b"h\x00h\x01K\x00\x85C\x01b\x87R")  # _reconstruct(ndarray, (0,), b"b")
        out.append(b"(K\x01" + _int(nbytes // 4) + b"\x85h\x02" + _su(">i4") + b"\x89\x88\x87R"
                   b"\x89h\x03tb")  # BUILD (1, (n,), dtype(">i4"), False, <the buffer>)
    out.append(b"e.")
    return b"".join(out)


def _quadratic_list_copies(items: int, copies: int) -> bytes:
    """One list of ``items`` memo references, then ``copies`` calls of list() on it."""
    return (b"\x80\x04" + _global("builtins", "list") + b"\x94" + b"](" + b"N" * items + b"e\x94"
            + b"(" + b"h\x00h\x01\x85R" * copies + b"l.")


ATTACKS = {
    # issue 11's four: a few dozen bytes each
    "bytearray(600_000_000)": b"\x80\x04" + _call1(_global("builtins", "bytearray"),
                                                  _int(600_000_000)) + b".",
    "list(range(20M))": b"\x80\x04" + _call1(_global("builtins", "list"), _call1(
        _global("builtins", "range"), _int(20_000_000))) + b".",
    "set(range(8M))": b"\x80\x04" + _call1(_global("builtins", "set"), _call1(
        _global("builtins", "range"), _int(8_000_000))) + b".",
    "tuple(range(10M))": b"\x80\x04" + _call1(_global("builtins", "tuple"), _call1(
        _global("builtins", "range"), _int(10_000_000))) + b".",
    # the same through other doors
    "bytes(600M)": b"\x80\x04" + _call1(_global("builtins", "bytes"), _int(600_000_000)) + b".",
    "bytes.__new__(bytes, 600M) (NEWOBJ)": b"\x80\x04" + _global("builtins", "bytes")
    + _int(600_000_000) + b"\x85\x81.",
    "str() of a list holding one 1 MB string 300 times": b"\x80\x04" + _call1(
        _global("builtins", "str"), b"](X" + struct.pack("<I", 1_000_000) + b"x" * 1_000_000
        + b"\x94" + b"h\x00" * 299 + b"e") + b".",
    "frozenset(range(8M)) via INST": b"(" + _call1(_global("builtins", "range"), _int(8_000_000))
    + b"ibuiltins\nfrozenset\n.",
    "ndarray((600M,), uint8)": b"\x80\x04" + _global("numpy", "ndarray") + b"(" + _int(600_000_000)
    + b"\x85" + _su("u1") + b"tR.",
    "_reconstruct(ndarray, (600M,), b'b')": b"\x80\x04" + _global("numpy._core.multiarray",
                                                                 "_reconstruct")
    + _global("numpy", "ndarray") + _int(600_000_000) + b"\x85C\x01b\x87R.",
    "LONG_BINPUT at index 100M (the C unpickler's memo grows to 1.5 GB)":
        b"\x80\x04N" + b"r" + struct.pack("<I", 100_000_000) + b".",
    # pure-Python unpickling allocates a BYTEARRAY8 before reading it: 600 MB of zeros
    "BYTEARRAY8 announcing 600 MB in 12 bytes": b"\x80\x05\x96" + struct.pack("<Q", 600_000_000)
    + b".",
    "byte-swapped array state shared 400 times (1 MB pickle, 400 MB of copies)":
        _swapped_arrays(400, 1_000_000),
    "list() of a 200k-item list, 400 times (quadratic)": _quadratic_list_copies(200_000, 400),
}

REFUSED_OUTRIGHT = {
    "str() of a list holding one 1 MB string 300 times": "converts a list to text",  # a repr
    "BYTEARRAY8 announcing 600 MB in 12 bytes": "holds only",
}

CHILD = r"""
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # protect the machine from old code
import numpy
import kachery_node as kn
from kachery_node.storage import safe_pickle
data = open(sys.argv[1], "rb").read()
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.monotonic()
try:
    safe_pickle.loads(data)
    error = None
except BaseException as exc:
    error = [type(exc).__name__, isinstance(exc, getattr(kn, "PickleTooLargeError", ())),
             isinstance(exc, kn.UnsafePickleError), str(exc)[:300]]
print(json.dumps({"error": error, "seconds": time.monotonic() - t0,
                  "rss_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024}))
"""


@pytest.mark.parametrize("name", list(ATTACKS))
def test_pickle_bombs_are_refused_quickly_without_memory(name: str, tmp_path: Path) -> None:
    path = tmp_path / "bomb.pkl"
    path.write_bytes(ATTACKS[name])
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True,
                          timeout=120, env={"OPENBLAS_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if name.startswith("LONG_BINPUT"):  # harmless now (the memo is a dict): loads or is refused
        assert result["error"] is None or result["error"][2], result
        assert result["seconds"] < 5 and result["rss_growth_mb"] < 80, result
        return
    assert result["error"] is not None, f"{name} loaded: {result}"
    kind, too_large, unsafe, message = result["error"]
    if name in REFUSED_OUTRIGHT:  # refused for what they are, before any budget matters
        assert unsafe and REFUSED_OUTRIGHT[name] in message, f"{name}: {kind}: {message}"
    else:
        assert unsafe and too_large, f"{name}: {kind}: {message}"
        assert "max_bytes" in message  # says how to load it anyway
    assert result["seconds"] < 5, result
    assert result["rss_growth_mb"] < 80, result  # the default allowance is 64 MiB


def test_attack_sizes() -> None:
    """The issue's attacks really are tiny."""
    assert len(ATTACKS["bytearray(600_000_000)"]) < 50
    assert max(len(ATTACKS[k]) for k in ("list(range(20M))", "set(range(8M))",
                                         "tuple(range(10M))")) < 80
    assert len(ATTACKS["LONG_BINPUT at index 100M (the C unpickler's memo grows to 1.5 GB)"]) == 9


def test_the_budget_is_configurable(storage: kn.Storage) -> None:
    uri = storage.store_bytes(ATTACKS["bytearray(600_000_000)"].replace(
        struct.pack("<i", 600_000_000), struct.pack("<i", 100_000_000)))
    with pytest.raises(kn.PickleTooLargeError) as info:
        storage.load_pkl(uri)
    assert info.value.limit == safe_pickle.default_budget(len(ATTACKS["bytearray(600_000_000)"]))
    assert len(storage.load_pkl(uri, max_bytes=200_000_000)) == 100_000_000
    with pytest.raises(kn.PickleTooLargeError):
        storage.load_pkl(storage.store_pkl({"a": 1}), max_bytes=10)


def test_real_data_still_loads(storage: kn.Storage) -> None:
    rng = np.random.default_rng(0)
    big = rng.standard_normal((2000, 3000))  # 48 MB of real data
    for proto in (4, 5):
        out = storage.load_pkl(storage.store_bytes(pickle.dumps({"big": big}, protocol=proto)))
        assert np.array_equal(out["big"], big) and out["big"].dtype == big.dtype
    obj = {
        "fortran": np.asfortranarray(big[:100, :50]), "big_endian": np.arange(10_000, dtype=">i4"),
        "structured": np.zeros(10, dtype=[("a", "<i4"), ("b", "<f8", (3,))]),
        "objects": np.array([1, "two", None], dtype=object), "scalar": np.float32(2.5),
        "set": set(range(10_000)), "frozenset": frozenset("abc"),
        "dict": {f"k{i}": [i, float(i), "s"] for i in range(10_000)}, "od": OrderedDict(a=1),
        "bytes": b"\x00" * 1000, "bytearray": bytearray(b"xyz"), "complex": 1 + 2j,
        "range": range(10), "slice": slice(1, 5, 2), "big_int": 2**200,
        "datetimes": np.array(["2020-01-01T00:00:01"], dtype="M8[s]"),
        "dtypes": [np.dtype("m8[ns]"), np.dtype([(("title", "a"), "<i4")]), np.dtype("U5"),
                   np.dtype([("a", "u1"), ("b", "<f8")], align=True), np.dtype(("<f8", (2, 3))),
                   np.dtype("V8"), np.dtype("<f8", metadata={"unit": "mV"}), np.dtype("O")],
    }
    for proto in (0, 1, 2, 3, 4, 5):
        out = storage.load_pkl(storage.store_bytes(pickle.dumps(obj, protocol=proto)))
        assert np.array_equal(out["fortran"], obj["fortran"]) and out["fortran"].flags.f_contiguous
        assert np.array_equal(out["big_endian"], obj["big_endian"])
        assert out["structured"].dtype == obj["structured"].dtype
        assert list(out["objects"]) == [1, "two", None]
        assert np.array_equal(out["datetimes"], obj["datetimes"])
        assert out["dtypes"] == obj["dtypes"]
        assert out["dtypes"][3].isalignedstruct and out["dtypes"][6].metadata == {"unit": "mV"}
        for key in ("scalar", "set", "frozenset", "dict", "od", "bytes", "bytearray", "complex",
                    "range", "slice", "big_int"):
            assert out[key] == obj[key], (proto, key)
    # The README's example, through the module API.
    assert kn.load_pkl(kn.store_pkl({"spikes": np.arange(3), "labels": {"noise"}}))["labels"] == {
        "noise"}


def test_many_small_containers_fit_the_default_budget(storage: kn.Storage) -> None:
    """Opcode-built data is charged too, but ordinary structures stay far below the budget."""
    rows = [{"id": i, "tags": ["a", "b"], "pos": (i, i + 1)} for i in range(50_000)]
    assert storage.load_pkl(storage.store_pkl(rows))[-1]["id"] == 49_999
    # Each empty set is charged its 216 bytes although it is ~2 bytes of pickle.
    empties = storage.store_bytes(pickle.dumps([set() for _ in range(50_000)], protocol=4))
    assert len(storage.load_pkl(empties)) == 50_000
    with pytest.raises(kn.PickleTooLargeError):
        storage.load_pkl(empties, max_bytes=5_000_000)


# -- numpy state: applied only when numpy itself could have written it --------------------------
# Found by tests/node/test_fuzz_decoders.py::test_load_pkl: numpy segfaulted on these states
# (a 7-tuple and a 6-tuple dtype state; object flags on a datetime dtype).
CRASHERS = {
    "7-tuple dtype state": (
        b"\x80\x04\x95\xa3\x00\x00\x00\x00\x00\x00\x00\x8c\x16numpy._core.multiarray\x94\x8c\x0c"
        b"_reconstruct\x94\x93\x94\x8c\x05numpy\x94\x8c\x07ndarray\x94\x93\x94K\x00\x85\x94C\x01b"
        b"\x94\x87\x94R\x94(K\x01K\x02K\x03\x86\x94h\x03\x8c\x05dtype\x94\x93\x94\x8c\x02i4\x94"
        b"\x89\x88\x87\x94R\x94(K\x03\x8c\x01<\x94NN0J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t\x94b"
        b"\x89C\x18\x00\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00\x03\x00\x00\x00\x04\x00\x00\x00"
        b"\x05\x00\x00\x00\x94t\x94b."),
    "6-tuple dtype state": (
        b"\x80\x02]q\x00(cnumpy._core.multiarray\nscalar\nq\x01cnumpy\ndtype\nq\x02X\x02\x00\x00"
        b"\x00f8q\x03\x89\x88\x87q\x04Rq\x05(K\x03X\x01\x00\x00\x00[NJ\xff\xff\xff\xffJ\xff\xff\xff"
        b"\xffK\x00tq\x07bc_codecs\nencode\nq\x08X\t\x00\x00\x00\x00\x00\x00\x00\x00\x00\xc3\xb8?q"
        b"\tX\x06\x00\x00\x00latin1q\n\x86q\x0bRq\x0c\x86q\rRq\x0ec__builtin__\nfrozenset\nq\x0f]"
        b"q\x10K\x01a\x85q\x11Rq\x12e."),
    "object flags on a datetime dtype": (
        b"\x80\x05\x95\x91\x00\x00\x00\x00\x00\x00\x00\x8c\x16numpy._core.multiarray\x94\x8c\x0c"
        b"_reconstruct\x94\x93\x94\x8c\x05numpy\x94\x8c\x07ndarray\x94\x93\x94K\x00\x85\x94C\x01b"
        b"\x94\x87\x94R\x94(K\x01K\x03\x85\x94h\x03\x8c\x05dtype\x94\x93\x94\x8c\x02M8\x94\x89\x88"
        b"\x87\x94R\x94(K\x03\x8c\x01|\x94NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK?t\x94b\x89]\x94(K"
        b"\x01\x8c\x01x\x94Net\x94b."),
}


def _dtype_then_build(spec: str, copy: bool, state: bytes) -> bytes:
    """numpy.dtype(spec, False, copy) followed by BUILD with ``state`` (pickle opcodes)."""
    return (b"\x80\x04" + _global("numpy", "dtype") + _su(spec) + b"\x89"
            + (b"\x88" if copy else b"\x89") + b"\x87R" + state + b"b.")


def _state(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


NONE, MINUS1 = b"N", b"J\xff\xff\xff\xff"


@pytest.mark.parametrize("name", list(CRASHERS))
def test_numpy_crashers_get_a_typed_error(name: str, tmp_path: Path) -> None:
    path = tmp_path / "crash.pkl"
    path.write_bytes(CRASHERS[name])
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True,
                          timeout=120, env={"OPENBLAS_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, f"the interpreter died ({proc.returncode}): {proc.stderr[-500:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["error"] and result["error"][2], result


def test_a_pickle_cannot_change_numpys_shared_dtypes(storage: kn.Storage) -> None:
    """dtype("f8", copy=False) is numpy's own float64: restoring a state onto it made every
    float64 in the process big-endian."""
    big_endian = _state(b"K\x03", _su(">"), NONE, NONE, NONE, MINUS1, MINUS1, b"K\x00")
    out = storage.load_pkl(storage.store_bytes(_dtype_then_build("f8", False, big_endian)))
    assert out == np.dtype(">f8")
    assert np.dtype("f8").byteorder == "=" and np.arange(3.0).dtype.byteorder == "="


@pytest.mark.parametrize("state", [
    # a field at offset 100 of an 8-byte structure: numpy accepted it (out-of-bounds access)
    _state(b"K\x03", _su("|"), NONE, _su("a") + b"\x85", b"}" + _su("a")
           + _global("numpy", "dtype") + _su("i4") + b"\x89\x88\x87R" + b"Kd\x86s", b"K\x08",
           b"K\x01", b"K\x10"),
    # object flags on float64: numpy would read the floats as object pointers
    _state(b"K\x03", _su("<"), NONE, NONE, NONE, MINUS1, MINUS1, b"K?"),
    _state(b"K\x07", _su("<"), NONE, NONE, NONE, MINUS1, MINUS1, b"K\x00"),  # unknown version
])
def test_inconsistent_dtype_states_are_refused(storage: kn.Storage, state: bytes) -> None:
    spec = "V8" if b"}" in state else "f8"
    with pytest.raises(kn.UnsafePickleError, match="dtype"):
        storage.load_pkl(storage.store_bytes(_dtype_then_build(spec, True, state)))


def test_state_cannot_change_after_use(storage: kn.Storage) -> None:
    """A dtype (or array) whose state is set after an array was made with it: refused."""
    d = _global("numpy", "dtype") + _su("V8") + b"\x89\x88\x87R\x94"  # memo 0: a fresh V8 dtype
    array = (_global("numpy._core.multiarray", "_reconstruct") + _global("numpy", "ndarray")
             + b"K\x01\x85h\x00\x87R")  # an array of one V8 item, using the dtype
    late_state = _state(b"K\x03", _su("|"), NONE, NONE, NONE, b"J" + struct.pack("<i", 1 << 20),
                        b"K\x01", b"K\x00")  # the dtype grows to 1 MiB under the array
    data = b"\x80\x04" + d + b"(" + array + b"h\x00" + late_state + b"b" + b"l."
    with pytest.raises(kn.UnsafePickleError, match="already in use"):
        storage.load_pkl(storage.store_bytes(data))

"""store_/load_ text, json, npy, pkl; hostile pickles never run code; mutables."""

from __future__ import annotations

import builtins
import io
import os
import pickle
import subprocess
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import kachery_node as kn


def test_text_roundtrip(storage_dir: Path) -> None:
    uri = kn.store_text("naïve ✓ text")
    assert uri.endswith("/file.txt")
    assert kn.load_text(uri) == "naïve ✓ text"
    assert kn.store_text("x", basename="notes.md").endswith("/notes.md")
    with pytest.raises(kn.InvalidDataError):
        kn.store_text(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(kn.InvalidDataError, match="UTF-8"):
        kn.load_text(kn.store_pkl(b"\xff\xfe"))


def test_json_with_numpy(storage_dir: Path) -> None:
    obj = {"a": np.arange(3), "m": np.eye(2, dtype=np.float32), "i": np.int64(7),
           "f": np.float64(0.5), "b": np.bool_(True), "s": "ü", "nested": [np.uint8(3), None]}
    uri = kn.store_json(obj)
    assert uri.endswith("/file.json")
    assert kn.load_json(uri) == {"a": [0, 1, 2], "m": [[1.0, 0.0], [0.0, 1.0]], "i": 7,
                                 "f": 0.5, "b": True, "s": "ü", "nested": [3, None]}
    # Compact, keys in the caller's order, non-ASCII escaped: the original's bytes (simplejson's
    # defaults), so the URI is the one kachery-client 1.2.0 gives (tests/legacy checks that).
    assert Path(kn.load_file(kn.store_json({"b": 1, "a": "é"}))).read_bytes() == (
        b'{"b":1,"a":"\\u00e9"}')


@pytest.mark.parametrize("bad", [float("nan"), [1.0, float("inf")], np.array([1.0, np.nan]),
                                 np.float32("-inf")])
def test_json_refuses_nan(storage_dir: Path, bad) -> None:
    with pytest.raises(kn.InvalidDataError, match="NaN or Infinity"):
        kn.store_json({"x": bad})


def test_json_refuses_other_objects(storage_dir: Path) -> None:
    with pytest.raises(kn.InvalidDataError, match="not JSON serializable"):
        kn.store_json({"x": object()})


def test_npy_roundtrip(storage_dir: Path) -> None:
    for arr in [np.arange(10, dtype=np.int16), np.random.default_rng(0).random((3, 4)),
                np.array([(1, 2.5)], dtype=[("a", "i4"), ("b", "f8")]), np.array("str")]:
        uri = kn.store_npy(arr)
        assert uri.endswith("/file.npy")
        out = kn.load_npy(uri)
        assert out.dtype == arr.dtype and np.array_equal(out, arr)
    with pytest.raises(kn.InvalidDataError, match="object arrays"):
        kn.store_npy(np.array([1, "a", None], dtype=object))


def test_big_npy_gets_manifest(storage_dir: Path) -> None:
    arr = np.arange(3_000_000, dtype=np.float64)  # 24 MB: streamed, chunked, manifest
    uri = kn.store_npy(arr)
    assert "?manifest=" in uri
    assert np.array_equal(kn.load_npy(uri), arr)


def test_pkl_roundtrip(storage_dir: Path) -> None:
    obj = {"arr": np.arange(4.0), "obj_arr": np.array([1, "two", None], dtype=object),
           "scalar": np.float32(2.5), "int": np.int8(-3), "set": {1, 2}, "fs": frozenset("ab"),
           "t": (1, 2.0, 3j), "b": b"\x00\xff", "ba": bytearray(b"x"), "none": None,
           "od": OrderedDict(z=1, a=2), "rec": np.zeros(2, dtype=[("x", "i4")]),
           "big": 10**30, "sl": slice(1, 5)}
    out = kn.load_pkl(kn.store_pkl(obj))
    assert out.keys() == obj.keys()
    assert np.array_equal(out["arr"], obj["arr"])
    assert list(out["obj_arr"]) == [1, "two", None]
    assert out["scalar"] == np.float32(2.5) and type(out["scalar"]) is np.float32
    assert (out["set"], out["fs"], out["t"], out["b"], out["od"], out["big"], out["sl"]) == (
        obj["set"], obj["fs"], obj["t"], obj["b"], obj["od"], obj["big"], obj["sl"])


def test_pkl_protocol_2_and_5_pickles_load(storage: kn.Storage) -> None:
    # Written by other tools with other protocols (Python 2 era, out-of-band buffers).
    obj = {"a": np.arange(3), "b": b"bytes", "c": {1}}
    for proto in (2, 3, 5):
        out = storage.load_pkl(storage.store_bytes(pickle.dumps(obj, protocol=proto)))
        assert np.array_equal(out["a"], obj["a"]) and out["b"] == b"bytes" and out["c"] == {1}


class _Plain:
    pass


def test_store_pkl_refuses_what_load_pkl_would_refuse(storage_dir: Path) -> None:
    with pytest.raises(kn.UnsafePickleError, match="_Plain"):
        kn.store_pkl({"x": _Plain()})


# -- hostile pickles ------------------------------------------------------------------------------
def _reducer(func, args):
    class Evil:
        def __reduce__(self):
            return (func, args)
    return Evil()


def _reducer_with_state(func, args, state):
    class Evil:
        def __reduce__(self):
            return (func, args, state)
    return Evil()


np_reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else (
    np.core.multiarray._reconstruct)
np_frombuffer = np._core.numeric._frombuffer if hasattr(np, "_core") else (
    np.core.numeric._frombuffer)


def _hostile_pickles(marker: Path) -> dict[str, bytes]:
    cmd = f"touch {marker}"
    code = f"open({str(marker)!r}, 'w').close()"
    evil_array = np.empty(1, dtype=object)
    evil_array[0] = _reducer(os.system, (cmd,))
    return {
        "os.system": pickle.dumps(_reducer(os.system, (cmd,))),
        "eval": pickle.dumps(_reducer(builtins.eval, (code,))),
        "exec": pickle.dumps(_reducer(builtins.exec, (code,))),
        "subprocess": pickle.dumps(_reducer(subprocess.check_call, (["touch", str(marker)],))),
        "nested in dict and list": pickle.dumps({"ok": [1, 2, {"deep": _reducer(os.system, (cmd,))}]}),
        "numpy object array": pickle.dumps({"a": evil_array}),
        "__import__": pickle.dumps(_reducer(builtins.__import__, ("os",))),
        "getattr": pickle.dumps(_reducer(builtins.getattr, ("abc", "upper"))),
        "numpy.load": pickle.dumps(_reducer(np.load, (str(marker),))),
        "protocol 0 text": f"cos\nsystem\n(S'{cmd}'\ntR.".encode(),
        "posix.system protocol 0": f"cposix\nsystem\n(S'{cmd}'\ntR.".encode(),
        "plain class instance": pickle.dumps(_Plain()),
        "_codecs with zlib": b"c_codecs\nencode\n(Vx\nVzlib\ntR.",
        # An object array whose state is raw bytes would be read as pointers if numpy
        # accepted it; numpy refuses, and so do we (no crash, no code).
        "bogus object array state": pickle.dumps(_reducer_with_state(
            np_reconstruct, (np.ndarray, (0,), b"b"),
            (1, (1,), np.dtype("O"), False, b"A" * 8))),
        "object dtype from buffer": pickle.dumps(_reducer(
            np_frombuffer, (b"A" * 8, np.dtype("O"), (1,), "C"))),
        "persistent id": b"\x80\x04P0\n.",
    }


def test_hostile_pickles_are_refused_and_run_nothing(storage: kn.Storage, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for name, data in _hostile_pickles(marker).items():
        uri = storage.store_bytes(data, "evil.pkl")
        with pytest.raises(kn.UnsafePickleError) as info:
            storage.load_pkl(uri)
        assert not marker.exists(), f"{name}: code ran"
        if name in ("os.system", "posix.system protocol 0"):
            assert info.value.global_name in ("posix.system", "os.system")
            assert "refusing" in str(info.value)
        if name == "eval":
            assert info.value.global_name == "builtins.eval"


def test_hostile_pickle_through_module_api(storage_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_reducer(os.system, (f"touch {marker}",))))
    uri = kn.store_file(path)
    with pytest.raises(kn.UnsafePickleError, match="system"):
        kn.load_pkl(uri)
    assert not marker.exists()


def test_bogus_pickle_bytes(storage: kn.Storage) -> None:
    with pytest.raises(kn.UnsafePickleError, match="not a loadable pickle"):
        storage.load_pkl(storage.store_bytes(b"not a pickle"))


# -- mutables -------------------------------------------------------------------------------------
def test_mutables(storage_dir: Path) -> None:
    assert kn.set("k", {"v": [1, 2]}) is True
    assert kn.get("k") == {"v": [1, 2]}
    assert kn.set("k", "new") is True
    assert kn.get("k") == "new"
    assert kn.set("k", "ignored", overwrite=False) is False
    assert kn.get("k") == "new"
    # JSON keys: the same object in any key order names the same entry.
    kn.set({"type": "cfg", "id": 1}, np.arange(2))
    assert kn.get({"id": 1, "type": "cfg"}) == [0, 1]
    assert kn.delete("k") is True
    assert kn.delete("k") is False
    with pytest.raises(kn.NotFoundError, match="no mutable"):
        kn.get("k")
    assert kn.get("k", None) is None
    assert kn.get("k", 5) == 5
    with pytest.raises(kn.InvalidDataError):
        kn.set("x", float("nan"))
    # Visible from another process (stored in <storage>/mutables.db).
    assert (storage_dir / "mutables.db").exists()


def test_mutables_shared_between_processes(storage_dir: Path) -> None:
    import sys

    kn.set("from-parent", 1)
    code = ("import kachery_node as kn; assert kn.get('from-parent') == 1; "
            "kn.set('from-child', {'x': 2})")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert kn.get("from-child") == {"x": 2}


def test_json_loads_into_plain_python(storage_dir: Path) -> None:
    buf = io.BytesIO()
    np.save(buf, np.arange(3))
    # load_json of a non-JSON file says so.
    with pytest.raises(kn.InvalidDataError, match="not valid JSON"):
        kn.load_json(kn.store_text("{broken"))

"""Encoding and decoding of the data objects behind store_text/json/npy/pkl and load_*.

* text: UTF-8.
* JSON: the original kachery's bytes (its ``simplejson.dumps(obj, separators=(',', ':'))``):
  compact, keys in the caller's order, non-ASCII characters escaped (``\u00e9``), so the same
  value gets the same ``sha1://`` URI in both. numpy arrays become nested lists, numpy scalars
  become Python numbers and bools. NaN and ±Infinity are refused (:class:`InvalidDataError`):
  JSON has no such values and silently writing ``NaN`` or ``null`` produces files other tools
  misread. Loading returns plain Python objects (lists, not arrays).
* npy: ``numpy.save`` with ``allow_pickle=False``; object arrays are refused (use store_pkl).
* pkl: pickle protocol 4, loaded with the restricted unpickler of :mod:`.safe_pickle`.

numpy is imported only when needed so that the ``kachery`` command starts fast.
"""

from __future__ import annotations

import json
import math
import os
import tokenize
from pathlib import Path
from typing import Any

from ..errors import InvalidDataError
from . import safe_pickle

DEFAULT_BASENAMES = {"text": "file.txt", "json": "file.json", "npy": "file.npy",
                     "pkl": "file.pkl"}


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.ndarray):
        return obj.tolist()  # elements tolist leaves as numpy objects come back through here
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.str_):
        return str(obj)
    raise TypeError(f"objects of type {type(obj).__name__} are not JSON serializable")


def encode_json(obj: Any) -> bytes:
    try:
        # ensure_ascii, as the original's simplejson: equal values, equal bytes, equal URIs.
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False,
                          default=_json_default).encode()
    except ValueError as exc:
        if "Out of range float" in str(exc):
            raise InvalidDataError(
                "cannot store NaN or Infinity as JSON (JSON has no such values); replace them "
                "(for example with None) or store the array with store_npy"
            ) from exc
        raise InvalidDataError(f"cannot store as JSON: {exc}") from exc
    except (TypeError, RecursionError) as exc:
        raise InvalidDataError(f"cannot store as JSON: {exc}") from exc


def decode_json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise InvalidDataError(f"the file is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # e.g. 50,000 nested arrays
        raise InvalidDataError("the file is not loadable JSON: it is nested too deeply") from exc


def encode_text(text: str) -> bytes:
    if not isinstance(text, str):
        raise InvalidDataError(f"store_text takes a str, got {type(text).__name__}")
    return text.encode()


def decode_text(data: bytes) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise InvalidDataError(f"the file is not UTF-8 text: {exc}") from exc


def write_npy(array: Any, sink: Any) -> None:
    """Write ``array`` in .npy format to a file-like ``sink`` (streams; no copy in memory)."""
    import numpy as np

    array = np.asanyarray(array)
    if array.dtype.hasobject:
        raise InvalidDataError(
            "store_npy cannot store object arrays (they would need pickle); use store_pkl"
        )
    np.save(sink, array, allow_pickle=False)


# What numpy raises on a malformed .npy file: bad magic or header (ValueError), a file that
# ends early (EOFError), a header that is not a Python literal (SyntaxError, and
# tokenize.TokenError from numpy's Python 2 header fallback), odd dtype descriptors (TypeError).
_NPY_ERRORS = (ValueError, EOFError, SyntaxError, tokenize.TokenError, TypeError, OverflowError,
               RecursionError)


def read_npy(path: Path) -> Any:
    """Load an .npy file (format 1.0, 2.0 or 3.0) without pickles; raise
    :class:`InvalidDataError` for anything else (including .npz archives and pickles, which
    ``numpy.load`` would also accept). The header must not promise more data than the file
    holds, so a 100-byte file cannot make numpy allocate gigabytes."""
    from numpy.lib import format as npy_format

    try:
        with open(path, "rb") as f:
            if f.read(len(npy_format.MAGIC_PREFIX)) != npy_format.MAGIC_PREFIX:
                raise InvalidDataError(f"{path} is not an .npy file (it lacks the .npy magic)")
            f.seek(0)
            version = npy_format.read_magic(f)
            if version == (1, 0):
                shape, _fortran, dtype = npy_format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                # 3.0 only differs in UTF-8 field names, which do not change sizes.
                shape, _fortran, dtype = npy_format.read_array_header_2_0(f)
            else:
                raise InvalidDataError(f"{path} has unsupported .npy format version {version}")
            if any(n < 0 for n in shape):
                raise InvalidDataError(f"{path} declares a negative array dimension: {shape}")
            needed = math.prod(shape) * dtype.itemsize
            available = os.fstat(f.fileno()).st_size - f.tell()
            if needed > available:
                raise InvalidDataError(
                    f"{path} is truncated: its header promises {needed} bytes of data, it holds "
                    f"{available}")
            f.seek(0)
            return npy_format.read_array(f, allow_pickle=False)
    except _NPY_ERRORS as exc:
        raise InvalidDataError(
            f"{path} is not a loadable .npy file: {type(exc).__name__}: {exc}") from exc


def encode_pkl(obj: Any) -> bytes:
    return safe_pickle.dumps(obj)


def decode_pkl(data: bytes, max_bytes: int | None = None) -> Any:
    return safe_pickle.loads(data, max_bytes=max_bytes)

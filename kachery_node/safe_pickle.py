"""Pickles that cannot run code: a restricted unpickler for plain data and numpy arrays.

Unpickling calls whatever ``module.name`` the pickle names (``os.system``, ``eval``, ...), so a
pickle from someone else is a program. :func:`loads` admits only the globals in
:data:`ALLOWED_GLOBALS` (numpy array, dtype and scalar reconstruction; a few builtin containers
and numbers); anything else raises :class:`UnsafePickleError` naming the refused global, before
it is called. Dicts, lists, tuples, sets, str, bytes, int, float, bool and None need no global:
pickle builds them with opcodes.

Object arrays are fine when their elements are plain data: numpy rebuilds them from a list
that goes through the same check.
"""

from __future__ import annotations

import collections
import importlib
import io
import pickle
from typing import Any

from .errors import UnsafePickleError

PICKLE_PROTOCOL = 4  # in-band buffers, readable by every numpy and Python 3.8+

# numpy moved its internals from numpy.core to numpy._core in 2.0; pickles name either.
_NUMPY_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}
_BUILTIN_NAMES = {
    "complex", "set", "frozenset", "bytearray", "bytes", "str", "int", "float", "bool",
    "list", "dict", "tuple", "slice", "range",
}
ALLOWED_GLOBALS = (
    _NUMPY_GLOBALS
    | {("builtins", n) for n in _BUILTIN_NAMES}
    | {("__builtin__", n) for n in _BUILTIN_NAMES}  # protocol 2 pickles from Python 2 days
    | {("collections", "OrderedDict"), ("_codecs", "encode")}
)


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Protocol <3 pickles spell bytes as _codecs.encode(str, "latin1"). Other codecs could
    # decompress bombs (zlib, bz2), so only the ones pickle itself uses are admitted.
    if encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise UnsafePickleError(f"refusing _codecs.encode with codec {encoding!r}",
                                global_name="_codecs.encode")
    return obj.encode(encoding, errors)


def _resolve(module: str, name: str) -> Any:
    if (module, name) == ("_codecs", "encode"):
        return _latin1_encode
    if (module, name) == ("collections", "OrderedDict"):
        return collections.OrderedDict
    if module in ("builtins", "__builtin__"):
        import builtins

        return getattr(builtins, name)
    if module.startswith("numpy.core.") or module.startswith("numpy._core."):
        # Import whichever spelling this numpy has, without numpy 2's deprecation shim.
        tail = module.split(".", 2)[2]
        for base in ("numpy._core.", "numpy.core."):
            try:
                return getattr(importlib.import_module(base + tail), name)
            except (ImportError, AttributeError):
                continue
    return getattr(importlib.import_module(module), name)


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global outside :data:`ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"refusing to load a pickle that refers to {module}.{name}: load_pkl admits only "
                "plain data (dict, list, tuple, set, str, bytes, numbers, None) and numpy arrays. "
                "If you trust its author, use pickle.load yourself; better, store the data with "
                "store_json or store_npy.",
                global_name=f"{module}.{name}",
            )
        return _resolve(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing a pickle with persistent ids", global_name=None)


def loads(data: bytes) -> Any:
    """Unpickle ``data`` admitting only plain data and numpy arrays."""
    try:
        return SafeUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError:
        raise
    except Exception as exc:
        # Malformed input or numpy refusing a bogus array state: still no code ran.
        raise UnsafePickleError(f"not a loadable pickle: {type(exc).__name__}: {exc}") from exc


def dumps(obj: Any) -> bytes:
    """Pickle ``obj``, refusing (with :class:`UnsafePickleError`) what :func:`loads` would refuse,
    so that nobody stores a pickle that cannot be loaded back."""
    data = pickle.dumps(obj, protocol=PICKLE_PROTOCOL)
    loads(data)
    return data

"""Pickles that cannot run code or exhaust memory: a restricted unpickler for plain data and
numpy arrays.

Theory of operation
-------------------
Unpickling calls whatever ``module.name`` the pickle names (``os.system``, ``eval``, ...), so a
pickle from someone else is a program. :func:`loads` admits only the globals in
:data:`ALLOWED_GLOBALS` (numpy array, dtype and scalar reconstruction; a few builtin containers
and numbers); anything else raises :class:`UnsafePickleError` naming the refused global, before
it is called. Dicts, lists, tuples, sets, str, bytes, int, float, bool and None need no global:
pickle builds them with opcodes. Object arrays are fine when their elements are plain data:
numpy rebuilds them from a list that goes through the same check.

Even allowed globals are a program that allocates: ``bytearray(600_000_000)`` is a 46-byte
pickle, ``list(range(20_000_000))`` not much more. So every allocation the pickle asks for is
charged, *before* it is made, against a budget (:func:`default_budget`: 64 MiB plus 16 times
the pickle's size, or the caller's ``max_bytes``), and going over raises
:class:`PickleTooLargeError`:

* calls of allowed constructors, by the size of their result: ``bytes(n)`` is ``n``,
  ``list(x)``/``set(x)``/... are 64 bytes per item of ``x``, numpy arrays are
  ``prod(shape) * itemsize``, whether made by ``_reconstruct``, ``ndarray(...)`` or restored
  from their state (where numpy may copy a shared buffer);
* containers the opcodes create (an empty set is 216 bytes for one byte of pickle).

Data held in the pickle itself (strings, bytes, numbers, references) costs at most a few dozen
bytes per byte of pickle, which the size-proportional part of the budget covers.

numpy applies the state a pickle gives an array or dtype (BUILD) without checking it, and some
states make it read out of bounds or crash. So a state is applied only to an array or dtype the
pickle has just made (``dtype`` always with ``copy=True``: never numpy's shared float64 & co.),
once, before anything uses it, and only if it has the form numpy writes and agrees with what
numpy's public constructors make from the same description.

This is the pure-Python unpickler of :mod:`pickle` with those hooks, not the C one: the C
unpickler cannot be hooked where an array's state is restored, and it grows its memo table to
whatever index a pickle names (a 9-byte pickle made it allocate and clear 1.5 GB). It is about
3x slower on pickles of many small objects, and as fast on arrays.
"""

from __future__ import annotations

import collections
import importlib
import io
import math
import pickle
import struct
from collections.abc import Callable
from typing import Any, ClassVar

from ..errors import PickleTooLargeError, UnsafePickleError

PICKLE_PROTOCOL = 4  # in-band buffers, readable by every numpy and Python 3.8+

#: What any pickle may allocate, and how much more per byte of pickle (see :func:`default_budget`).
BUDGET_ALLOWANCE = 64 * 1024 * 1024
BUDGET_PER_PICKLE_BYTE = 16

_PER_ITEM = 64  # list/tuple/set/dict built from an iterable: pointer, table slot, new int objects
_EMPTY_COST = {"list": 56, "dict": 64, "set": 216, "frozenset": 216}

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
# Protocols 0-2 spell builtins the Python 2 way (Python 3 writes range as __builtin__.xrange).
_PY2_NAMES = {"xrange": "range", "unicode": "str", "long": "int"}
ALLOWED_GLOBALS = (
    _NUMPY_GLOBALS
    | {("builtins", n) for n in _BUILTIN_NAMES}
    | {("__builtin__", n) for n in _BUILTIN_NAMES | set(_PY2_NAMES)}
    | {("collections", "OrderedDict"), ("_codecs", "encode")}
)


def default_budget(pickle_size: int) -> int:
    """The allocation budget of a pickle of ``pickle_size`` bytes when the caller gives none."""
    return BUDGET_ALLOWANCE + BUDGET_PER_PICKLE_BYTE * pickle_size


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

        return getattr(builtins, _PY2_NAMES.get(name, name))
    if module.startswith("numpy.core.") or module.startswith("numpy._core."):
        # Import whichever spelling this numpy has, without numpy 2's deprecation shim.
        tail = module.split(".", 2)[2]
        for base in ("numpy._core.", "numpy.core."):
            try:
                return getattr(importlib.import_module(base + tail), name)
            except (ImportError, AttributeError):
                continue
    return getattr(importlib.import_module(module), name)


# ----------------------------------------------------------------------------- what a call costs
def _length(value: Any) -> int:
    try:
        return len(value)
    except OverflowError:  # range(10**30)
        return 1 << 62
    except TypeError:
        raise UnsafePickleError(
            f"refusing a pickle that passes a {type(value).__name__} where a sized value is "
            "expected") from None


def _bytes_cost(args: tuple, kwargs: dict) -> int:
    """bytes(x) / bytearray(x [, encoding, errors])."""
    source = args[0] if args else kwargs.get("source")
    if source is None:
        return 0
    if isinstance(source, int):
        return max(int(source), 0)
    if isinstance(source, str):
        return 4 * len(source)
    try:
        return memoryview(source).nbytes
    except TypeError:
        return _length(source)  # an iterable of ints: one byte each


def _items_cost(args: tuple, kwargs: dict) -> int:
    """list/tuple/set/frozenset/dict/OrderedDict(iterable)."""
    return (_PER_ITEM * _length(args[0]) if args else 0) + _PER_ITEM * len(kwargs)


def _text_cost(args: tuple, kwargs: dict) -> int:
    """str(x [, encoding, errors]), int(x [, base]), float(x), complex(x), _codecs.encode(x)."""
    if not args:
        return 0
    value = args[0]
    if isinstance(value, str | bytes | bytearray):
        return 4 * len(value)
    if value is None or isinstance(value, int | float | complex):
        return 64
    # str() of a container is its repr: a list holding one big string many times is huge.
    raise UnsafePickleError(
        f"refusing a pickle that converts a {type(value).__name__} to text or a number")


def _free(args: tuple, kwargs: dict) -> int:
    return 0


def _array_bytes(shape: Any, dtype: Any) -> int:
    import numpy as np

    dims = (shape,) if isinstance(shape, int) else tuple(shape)
    if not all(isinstance(n, int) for n in dims):
        raise UnsafePickleError(f"refusing an array shape that is not integers: {dims!r:.100}")
    count = math.prod(max(n, 0) for n in dims)
    itemsize = np.dtype(dtype).itemsize if dtype is not None else 8  # ndarray's default: float64
    return count * max(itemsize, 1)


def _reconstruct_cost(args: tuple, kwargs: dict) -> int:
    """numpy's _reconstruct(subtype, shape, dtype)."""
    return _array_bytes(args[1], args[2]) if len(args) >= 3 else 0


def _ndarray_cost(args: tuple, kwargs: dict) -> int:
    """numpy.ndarray(shape, dtype=float, buffer=None, ...), also as ndarray.__new__."""
    shape = args[0] if args else kwargs.get("shape", ())
    dtype = args[1] if len(args) > 1 else kwargs.get("dtype")
    return _array_bytes(shape, dtype)


def _scalar_cost(args: tuple, kwargs: dict) -> int:
    """numpy's scalar(dtype, bytes): one item of the dtype."""
    import numpy as np

    return np.dtype(args[0]).itemsize if args else 0


def _dtype_cost(args: tuple, kwargs: dict) -> int:
    """numpy.dtype(spec, ...): a structured spec's fields each cost a few hundred bytes."""
    spec = args[0] if args else kwargs.get("dtype")
    return 4 * _PER_ITEM * _length(spec) if isinstance(spec, list | tuple | dict) else 0


_COST_BY_NAME: dict[str, Callable[[tuple, dict], int]] = {
    "bytes": _bytes_cost, "bytearray": _bytes_cost,
    "list": _items_cost, "tuple": _items_cost, "set": _items_cost, "frozenset": _items_cost,
    "dict": _items_cost, "OrderedDict": _items_cost,
    "str": _text_cost, "int": _text_cost, "float": _text_cost, "complex": _text_cost,
    "encode": _text_cost, "bool": _free, "slice": _free, "range": _free,
    "ndarray": _ndarray_cost, "dtype": _dtype_cost, "_reconstruct": _reconstruct_cost,
    "scalar": _scalar_cost, "_frombuffer": _free,  # a view of bytes already in the pickle
}
_COSTS: dict[int, Callable[[tuple, dict], int]] = {}  # id(callable) -> cost function


def _cost_of(func: Any) -> Callable[[tuple, dict], int]:
    if not _COSTS:
        for module, name in ALLOWED_GLOBALS:
            _COSTS[id(_resolve(module, name))] = _COST_BY_NAME[_PY2_NAMES.get(name, name)]
    cost = _COSTS.get(id(func))
    if cost is None:  # only globals from find_class are callable here; be sure anyway
        raise UnsafePickleError(f"refusing to call {func!r:.100} while unpickling")
    return cost


# Calls whose result numpy lets a pickle fill in afterwards (BUILD): see load_build.
_STATEFUL_RESULTS = {"dtype", "_reconstruct", "ndarray"}


def _is_numpy_dtype_class(func: Any) -> bool:
    return getattr(func, "__name__", None) == "dtype" and getattr(func, "__module__", "") == "numpy"


def _dtype_copy_args(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Arguments for ``numpy.dtype`` with ``copy=True``: without it numpy returns its shared
    dtype (float64, int32...) and the pickle's state would change it for the whole process."""
    extra = set(kwargs) - {"dtype", "align", "copy", "metadata"}
    if extra or len(args) > 3:
        raise UnsafePickleError(f"unexpected arguments to numpy.dtype in pickle: {sorted(extra)}")
    spec = args[0] if args else kwargs.get("dtype")
    align = args[1] if len(args) > 1 else kwargs.get("align", False)
    metadata = {"metadata": kwargs["metadata"]} if "metadata" in kwargs else {}
    return (spec, align, True), metadata


def _check_array_state(state: Any) -> tuple[tuple, Any]:
    """``(shape, dtype)`` of an array state numpy writes: ``(1, shape, dtype, is_fortran,
    data)`` (or without the version), with data of exactly the right size."""
    import numpy as np

    fields = state[1:] if isinstance(state, tuple) and len(state) == 5 else state
    if not (isinstance(fields, tuple) and len(fields) == 4) or (len(state) == 5 and state[0] != 1):
        raise UnsafePickleError("malformed numpy array state in pickle")
    shape, dtype, is_fortran, data = fields
    if (not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape)
            or not isinstance(dtype, np.dtype) or not isinstance(is_fortran, bool | int)):
        raise UnsafePickleError("malformed numpy array state in pickle (shape, dtype or order)")
    count = math.prod(shape)
    if dtype.hasobject:
        if not isinstance(data, list) or len(data) != count:
            raise UnsafePickleError("malformed numpy object array state in pickle")
    elif not isinstance(data, bytes | bytearray | str) or len(data) != count * dtype.itemsize:
        raise UnsafePickleError("numpy array state in pickle does not hold the array's bytes")
    return shape, dtype


_STRUCT_ALIGNED = 0x80  # NPY_ALIGNED_STRUCT: not kept by descr round trips, and harmless


def _check_dtype_state(dtype: Any, state: Any) -> None:
    """Refuse a dtype state unless it is one numpy (>= 1.7) writes: ``(3, endian, subarray,
    names, fields, elsize, alignment, flags)`` or version 4 with metadata, whose size and flags
    are those of the dtype numpy's public constructor makes from the same description. numpy
    applies others as given, and crashes on some of them (a 7-tuple; object flags on a
    datetime)."""
    import numpy as np

    if not (isinstance(state, tuple) and ((len(state) == 8 and state[0] == 3)
                                         or (len(state) == 9 and state[0] == 4))):
        raise UnsafePickleError("malformed numpy dtype state in pickle (not version 3 or 4)")
    _version, endian, subarray, names, fields, elsize, _alignment, flags = state[:8]
    metadata = state[8] if len(state) == 9 else None
    if endian not in ("<", ">", "|", "=") or not all(type(x) is int for x in state[5:8]):
        raise UnsafePickleError("malformed numpy dtype state in pickle (byte order or sizes)")
    datetime_units = (isinstance(metadata, tuple) and len(metadata) == 2
                      and isinstance(metadata[1], tuple) and len(metadata[1]) == 4
                      and isinstance(metadata[1][0], bytes | str)
                      and all(type(x) is int for x in metadata[1][1:]))
    if not (metadata is None or isinstance(metadata, dict)
            or (dtype.kind in "Mm" and datetime_units)):
        raise UnsafePickleError("malformed numpy dtype metadata in pickle")
    try:
        if names is not None or fields is not None:
            if dtype.kind != "V" or not isinstance(names, tuple) or not isinstance(fields, dict):
                raise ValueError("fields on a dtype that is not a structure")
            entries = [fields[n] for n in names]
            if not all(isinstance(e, tuple) and len(e) in (2, 3) for e in entries):
                raise ValueError("malformed field")
            reference = np.dtype({
                "names": list(names), "formats": [e[0] for e in entries],
                "offsets": [e[1] for e in entries], "itemsize": elsize,
                "titles": [e[2] if len(e) == 3 else None for e in entries]},
                align=bool(flags & _STRUCT_ALIGNED))
        elif subarray is not None:
            if dtype.kind != "V" or not (isinstance(subarray, tuple) and len(subarray) == 2):
                raise ValueError("malformed subarray")
            reference = np.dtype((subarray[0], subarray[1]))
        elif dtype.itemsize == 0:  # an unsized flexible type: the state gives the size
            reference = np.dtype((dtype.type, elsize // 4 if dtype.kind == "U" else elsize))
        else:
            reference = dtype
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise UnsafePickleError(f"malformed numpy dtype state in pickle: {exc}") from None
    sized = names is not None or subarray is not None or dtype.itemsize == 0 or elsize != -1
    if ((sized and elsize != reference.itemsize)
            or flags & ~_STRUCT_ALIGNED != reference.flags & ~_STRUCT_ALIGNED):
        raise UnsafePickleError(
            f"refusing an inconsistent numpy dtype state in pickle (size {elsize}, flags "
            f"{flags}; numpy makes size {reference.itemsize}, flags {reference.flags})")


def _check_dtype(dtype: Any) -> None:
    """Refuse a dtype whose restored state is not one numpy could have built itself: it must
    survive a round trip through its description with the same size, fields and flags."""
    import warnings

    import numpy as np
    from numpy.lib import format as npy_format

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "metadata is not saved": not our concern here
            if dtype.subdtype is not None:
                base, shape = dtype.subdtype
                rebuilt = np.dtype((npy_format.descr_to_dtype(npy_format.dtype_to_descr(base)),
                                    shape))
            else:
                rebuilt = npy_format.descr_to_dtype(npy_format.dtype_to_descr(dtype))
        consistent = (rebuilt == dtype and rebuilt.itemsize == dtype.itemsize
                      and rebuilt.flags & ~_STRUCT_ALIGNED == dtype.flags & ~_STRUCT_ALIGNED)
    except Exception as exc:  # a state numpy cannot even describe
        raise UnsafePickleError(f"refusing an inconsistent numpy dtype in pickle: {exc}") from exc
    if not consistent:
        raise UnsafePickleError(
            f"refusing an inconsistent numpy dtype in pickle (size {dtype.itemsize}, flags "
            f"{dtype.flags}; numpy itself would make size {rebuilt.itemsize}, flags {rebuilt.flags})")


# ----------------------------------------------------------------------------- the unpickler
class SafeUnpickler(pickle._Unpickler):
    """An unpickler that refuses every global outside :data:`ALLOWED_GLOBALS` and every
    allocation beyond ``max_bytes`` (see the module docstring)."""

    dispatch: ClassVar[dict] = dict(pickle._Unpickler.dispatch)  # ours: the base is not touched

    def __init__(self, data: bytes, *, max_bytes: int) -> None:
        super().__init__(io.BytesIO(data))
        self.size = len(data)
        self.max_bytes = max_bytes
        self.charged = 0
        # Arrays and dtypes made by this pickle whose state may still be set (see load_build).
        self._fresh: dict[int, Any] = {}

    def charge(self, nbytes: int, what: str) -> None:
        """Count ``nbytes`` about to be allocated for ``what``; raise if over the budget."""
        self.charged += nbytes
        if self.charged > self.max_bytes:
            raise PickleTooLargeError(
                f"refusing a pickle that would allocate more than {self.max_bytes:,} bytes "
                f"({what} asks for {nbytes:,}). If you trust its author, load it with a "
                f"larger budget: load_pkl(uri, max_bytes=...)",
                limit=self.max_bytes, requested=self.charged)

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

    def _call(self, func: Any, args: Any, kwargs: Any = None, *, new: bool = False) -> Any:
        """``func(*args, **kwargs)`` (or ``func.__new__(func, ...)``), charged first."""
        if not isinstance(args, tuple) or not isinstance(kwargs or {}, dict):
            raise UnsafePickleError("malformed call in pickle: arguments are not a tuple")
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "a constructor")
        self.charge(_cost_of(func)(args, kwargs), f"{name}()")
        self._seal_found_in((args, kwargs))
        if _is_numpy_dtype_class(func):
            args, kwargs = _dtype_copy_args(args, kwargs)
        if new:
            if not isinstance(func, type):
                raise UnsafePickleError(f"NEWOBJ on {name}, which is not a class")
            result = func.__new__(func, *args, **kwargs)
        else:
            result = func(*args, **kwargs)
        if name in _STATEFUL_RESULTS:
            self._fresh[id(result)] = result
        return result

    def _seal_found_in(self, value: Any) -> None:
        """Arrays and dtypes that ``value`` contains are in use now: their state is final."""
        if not self._fresh:
            return
        todo, seen = [value], set()
        while todo:
            item = todo.pop()
            self._fresh.pop(id(item), None)
            if isinstance(item, list | tuple | set | frozenset | dict) and id(item) not in seen:
                seen.add(id(item))
                if isinstance(item, dict):  # keys and values, no temporary pairs (ids are reused)
                    todo.extend(item.keys())
                    todo.extend(item.values())
                else:
                    todo.extend(item)

    def load_bytearray8(self) -> None:
        # pickle's own version allocates the announced length (zero-filled) before reading it.
        (length,) = struct.unpack("<Q", self.read(8))
        if length > self.size:
            raise UnsafePickleError(
                f"pickle announces a {length:,}-byte bytearray but holds only {self.size:,} bytes")
        self.charge(length, "a bytearray")
        buf = bytearray(length)
        if self.readinto(buf) != length or len(buf) != length:
            raise UnsafePickleError("pickle data was truncated inside a bytearray")
        self.append(buf)

    # Every opcode that calls something goes through _call.
    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._call(cls, args, new=True))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._call(cls, args, kwargs, new=True))

    def _instantiate(self, klass: Any, args: list) -> None:  # INST and OBJ (protocols 0 and 1)
        self.append(self._call(klass, tuple(args)))

    def load_build(self) -> None:
        """Restoring state: only numpy arrays and dtypes have any, once, right after they were
        made and before anything uses them. numpy trusts the state it is given: a dtype
        changed after an array was made with it, or a field placed past the end of its dtype,
        makes numpy read and write out of bounds."""
        import numpy as np

        state = self.stack.pop()
        inst = self.stack[-1]
        if not isinstance(inst, np.ndarray | np.dtype):
            raise UnsafePickleError(
                f"refusing a pickle that sets the state of a {type(inst).__name__}")
        if self._fresh.pop(id(inst), None) is None:
            raise UnsafePickleError(
                "refusing a pickle that sets the state of a numpy object already in use")
        self._seal_found_in(state)
        if isinstance(inst, np.ndarray):
            shape, dtype = _check_array_state(state)
            self.charge(_array_bytes(shape, dtype), "a numpy array's state")
            inst.__setstate__(state)
        else:
            _check_dtype_state(inst, state)
            inst.__setstate__(state)
            _check_dtype(inst)

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8
    # INST and OBJ (protocols 0 and 1) call _instantiate above.


def _charged(kind: str, load: Callable[[SafeUnpickler], None]) -> Callable[[SafeUnpickler], None]:
    """An opcode handler that charges for the new ``kind`` container, then builds it."""
    def handler(self: SafeUnpickler) -> None:
        self.charge(_EMPTY_COST[kind], f"a new {kind}")
        load(self)
    return handler


for _op, _kind, _load in (
    (pickle.EMPTY_LIST, "list", pickle._Unpickler.load_empty_list),
    (pickle.LIST, "list", pickle._Unpickler.load_list),
    (pickle.EMPTY_DICT, "dict", pickle._Unpickler.load_empty_dictionary),
    (pickle.DICT, "dict", pickle._Unpickler.load_dict),
    (pickle.EMPTY_SET, "set", pickle._Unpickler.load_empty_set),
    (pickle.FROZENSET, "frozenset", pickle._Unpickler.load_frozenset),
):
    SafeUnpickler.dispatch[_op[0]] = _charged(_kind, _load)


def loads(data: bytes, *, max_bytes: int | None = None) -> Any:
    """Unpickle ``data`` admitting only plain data and numpy arrays, and allocating at most
    ``max_bytes`` (default :func:`default_budget`) through constructors and containers.

    Raises :class:`UnsafePickleError` for anything else; :class:`PickleTooLargeError` (a
    subclass) when the budget would be exceeded.
    """
    limit = default_budget(len(data)) if max_bytes is None else max_bytes
    try:
        return SafeUnpickler(data, max_bytes=limit).load()
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

"""The module-level API (``kn.store_file(...)``, ``kn.load_json(...)``, ...) for scripts.

Every function works on the default storage, ``$KACHERY_STORAGE_DIR`` (or
``~/kachery-storage``), read when the function is called. To work on another storage, use a
:class:`~kachery_node.storage.Storage` (``kn.open_storage(path)``): it has the same methods.

All loads go through :func:`_locally_or_fetched`: today it only looks in local storage; the daemon
issue makes it ask the running node to fetch missing content from its channels, then retry. Keep
every load path going through it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from . import data_objects
from .config import default_storage_dir
from .storage import Storage

if TYPE_CHECKING:
    import kachery_feeds

T = TypeVar("T")

_storages: dict[Path, Storage] = {}
_storages_lock = threading.Lock()


def open_storage(directory: str | os.PathLike | None = None) -> Storage:
    """The :class:`Storage` for ``directory`` (default: ``$KACHERY_STORAGE_DIR``), shared
    within this process."""
    path = Path(directory or default_storage_dir()).expanduser().absolute()
    with _storages_lock:
        storage = _storages.get(path)
        if storage is None:
            storage = _storages[path] = Storage(path)
        return storage


def default_storage() -> Storage:
    """The storage of ``$KACHERY_STORAGE_DIR`` as it is set now."""
    return open_storage(None)


def _locally_or_fetched(uri: str, load: Callable[[Storage], T]) -> T:
    """Run a load against the default storage.

    The one place where loading will fall back to the network: on NotFoundError the daemon
    path will ask the node to fetch ``uri`` into the storage and then call ``load`` again.
    """
    return load(default_storage())


# -- files --------------------------------------------------------------------------------------
def store_file(path: str | os.PathLike, basename: str | None = None) -> str:
    """Copy a file into local storage; return ``sha1://<sha1>/<basename>`` (plus
    ``?manifest=<sha1>`` above 20,000,000 bytes). Storing unchanged content again is cheap."""
    return default_storage().store_file(path, basename)


def link_file(path: str | os.PathLike, basename: str | None = None) -> str:
    """Register a file in place (no copy); it is refused later if it changes."""
    return default_storage().link_file(path, basename)


def load_file(uri: str, dest: str | os.PathLike | None = None) -> str:
    """Local path of the content of ``uri`` (or a copy at ``dest``); raises
    :class:`~kachery_node.NotFoundError` when it is not available."""
    return _locally_or_fetched(uri, lambda s: s.load_file(uri, dest=dest))


def load_bytes(uri: str, start: int = 0, end: int | None = None) -> bytes:
    """Bytes ``[start, end)`` of the content of ``uri``."""
    return _locally_or_fetched(uri, lambda s: s.load_bytes(uri, start, end))


# -- data objects -------------------------------------------------------------------------------
def store_text(text: str, basename: str | None = None) -> str:
    """Store a string; return its URI (default basename ``file.txt``)."""
    return default_storage().store_text(text, basename)


def store_json(obj: Any, basename: str | None = None) -> str:
    """Store a JSON value; numpy arrays become lists, numpy scalars numbers. NaN is refused."""
    return default_storage().store_json(obj, basename)


def store_npy(array: Any, basename: str | None = None) -> str:
    """Store a numpy array as .npy (no pickles inside)."""
    return default_storage().store_npy(array, basename)


def store_pkl(obj: Any, basename: str | None = None) -> str:
    """Store a pickle of plain data and numpy arrays."""
    return default_storage().store_pkl(obj, basename)


def load_text(uri: str) -> str:
    return data_objects.decode_text(Path(load_file(uri)).read_bytes())


def load_json(uri: str) -> Any:
    return data_objects.decode_json(Path(load_file(uri)).read_bytes())


def load_npy(uri: str) -> Any:
    return data_objects.read_npy(Path(load_file(uri)))


def load_pkl(uri: str) -> Any:
    """Unpickle without running code: anything but plain data and numpy arrays raises
    :class:`~kachery_node.UnsafePickleError`."""
    return data_objects.decode_pkl(Path(load_file(uri)).read_bytes())


# -- mutables -----------------------------------------------------------------------------------
def set(key: Any, value: Any, *, overwrite: bool = True) -> bool:
    """Set a local mutable (JSON key and value). Returns True if written."""
    return default_storage().mutables.set(key, value, overwrite=overwrite)


def get(key: Any, *default: Any) -> Any:
    """The value of a mutable; ``get(key, default)`` returns ``default`` if absent, ``get(key)``
    raises :class:`~kachery_node.NotFoundError`."""
    return default_storage().mutables.get(key, *default)


def delete(key: Any) -> bool:
    """Delete a mutable; True if it existed."""
    return default_storage().mutables.delete(key)


# -- feeds --------------------------------------------------------------------------------------
def create_feed() -> kachery_feeds.Feed:
    """A new writeable feed in ``<storage>/feeds.db``."""
    return default_storage().create_feed()


def load_feed(uri: str) -> kachery_feeds.Feed:
    """A feed by ``feed://<id>`` or id."""
    return default_storage().load_feed(uri)


def load_subfeed(uri: str) -> kachery_feeds.Subfeed:
    """A subfeed by ``feed://<id>/<name>``."""
    return default_storage().load_subfeed(uri)

"""kachery_node: a kachery node's local storage and the Python API for scripts.

>>> import kachery_node as kn
>>> uri = kn.store_text("hello")            # in $KACHERY_STORAGE_DIR (default ~/kachery-storage)
>>> kn.load_text(uri)
'hello'

Files, data objects, mutables and feeds; see README.md and spec/storage.md.
"""

from .api import (
    create_feed,
    default_storage,
    delete,
    get,
    link_file,
    load_bytes,
    load_feed,
    load_file,
    load_json,
    load_npy,
    load_pkl,
    load_subfeed,
    load_text,
    open_storage,
    set,
    store_file,
    store_json,
    store_npy,
    store_pkl,
    store_text,
    upload_file,
)
from .config import NodeConfig, init_node, load_node_config
from .daemon.errors import DaemonConnectionLostError, DaemonError, DaemonNotRunningError
from .errors import (
    ConfigError,
    CorruptedFileError,
    InvalidDataError,
    InvalidUriError,
    KacheryError,
    LinkedFileChangedError,
    NetworkFileSystemError,
    NotFoundError,
    NotInitializedError,
    PickleTooLargeError,
    UnsafePickleError,
)
from .storage.file_uris import FileUri, build_uri, parse_uri
from .storage.node_storage import Storage

__all__ = [
    "ConfigError",
    "CorruptedFileError",
    "DaemonConnectionLostError",
    "DaemonError",
    "DaemonNotRunningError",
    "FileUri",
    "InvalidDataError",
    "InvalidUriError",
    "KacheryError",
    "LinkedFileChangedError",
    "NetworkFileSystemError",
    "NodeConfig",
    "NotFoundError",
    "NotInitializedError",
    "PickleTooLargeError",
    "Storage",
    "UnsafePickleError",
    "build_uri",
    "create_feed",
    "default_storage",
    "delete",
    "get",
    "init_node",
    "link_file",
    "load_bytes",
    "load_feed",
    "load_file",
    "load_json",
    "load_node_config",
    "load_npy",
    "load_pkl",
    "load_subfeed",
    "load_text",
    "open_storage",
    "parse_uri",
    "set",
    "store_file",
    "store_json",
    "store_npy",
    "store_pkl",
    "store_text",
    "upload_file",
]

# Tasks (kachery_node/apps/tasks.py, feed_submissions.py): kn.request_task, kn.taskfunction, ...
# They load httpx and the daemon client, so they are imported on first use (`kachery` starts fast).
_LAZY = {name: "kachery_node.apps.tasks" for name in (
    "NoProviderError", "TaskError", "TaskHandle", "TaskTimeoutError", "report_progress",
    "request_task", "run_task_backend", "task_hash", "taskfunction")}
_LAZY.update({"submit_message": "kachery_node.apps.feed_submissions",
              "accept_submissions": "kachery_node.apps.feed_submissions"})


def __dir__() -> list[str]:
    """Module attributes plus the lazily imported names, so that completion (Jupyter, IDEs)
    offers ``kn.request_task`` and friends before their first use."""
    return sorted({*globals(), *_LAZY})


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kachery_node' has no attribute {name!r}")

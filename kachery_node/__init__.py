"""kachery_node: a kachery node's local storage and the Python API for scripts.

>>> import kachery_node as kn
>>> uri = kn.store_text("hello")            # in $KACHERY_STORAGE_DIR (default ~/kachery-storage)
>>> kn.load_text(uri)
'hello'

Files, data objects, mutables and feeds; see README.md and spec/storage.md.
"""

# Every public name is imported on first use (PEP 562 ``__getattr__`` below): the package
# alone costs ~1 ms, so ``kachery --help`` and scripts that use one corner of it start fast
# (the API pulls in kachery_feeds, libsodium and the storage: ~60 ms).
_LAZY: dict[str, str] = {}
for _module, _names in {
    "kachery_node.api": (
        "LOCAL_ONLY", "create_feed", "default_storage", "delete", "delete_feed", "follow", "get",
        "get_feed_id", "get_node_id", "link_file", "list_published", "load_bytes", "load_feed",
        "load_file", "load_json", "load_npy", "load_pkl", "load_subfeed", "load_text",
        "open_storage", "publish", "set", "store_file", "store_json", "store_npy", "store_pkl",
        "store_text", "unfollow", "unpublish", "upload_file", "upload_json", "upload_npy",
        "upload_pkl", "upload_text", "watch_for_new_messages",
    ),
    "kachery_node.config": (
        "NodeConfig", "init_node", "load_node_config",
    ),
    "kachery_node.errors": (
        "BadSignatureError", "BucketDataRejectedError", "CapabilityError", "ChannelNotJoinedError",
        "ChannelProtocolError", "ConfigError", "ConflictError", "CorruptedFileError",
        "DaemonConnectionLostError", "DaemonError", "DaemonNotRunningError", "ExpiredError",
        "HashMismatchError", "HubRequestError", "InternalError", "InvalidChannelNameError",
        "InvalidDataError", "InvalidPathError", "InvalidTokenError", "InvalidUriError",
        "KacheryError", "LinkedFileChangedError", "LocalProtocolError", "MalformedRequestError",
        "NetworkFileSystemError", "NotAllowedError", "NotFoundError", "NotInitializedError",
        "PickleTooLargeError", "QuotaExceededError", "RateLimitedError", "RemoteProtocolError",
        "ReplayedRequestError", "RestoreNotCaughtUpError", "StaleRequestError",
        "SubfeedNotFoundError", "TamperedDataError", "TooLargeError", "UnknownChannelError",
        "UnknownNodeError", "UnsafePickleError", "UnsupportedVersionError", "UsageError",
        "WitnessRefusedError",
    ),
    "kachery_node.legacy.storage_dir": (
        "OriginalFeedsDatabaseError", "OriginalStorageError",
    ),
    "kachery_node.storage.file_uris": (
        "FileUri", "build_uri", "parse_uri",
    ),
    "kachery_node.storage.node_storage": (
        "Storage",
    ),
}.items():
    _LAZY.update(dict.fromkeys(_names, _module))
del _module, _names

#: The distribution (``pip install kachery-node``) that ships kachery_node and kachery_feeds.
#: Not ``kachery``: that name on PyPI belongs to the successor line (2.0.x), another program.
DISTRIBUTION = "kachery-node"


# Tasks (kachery_node/apps/tasks.py, feed_submissions.py): kn.request_task, kn.taskfunction, ...
# They load the daemon client and more, so they are imported on first use (`kachery` starts fast).
_LAZY.update({name: "kachery_node.apps.tasks" for name in (
    "NoProviderError", "TaskArgumentError", "TaskError", "TaskHandle", "TaskTimeoutError", "report_progress",
    "request_task", "run_task_backend", "task_hash", "taskfunction")})
_LAZY.update({"submit_message": "kachery_node.apps.feed_submissions",
              "accept_submissions": "kachery_node.apps.feed_submissions"})
# The async API (kachery_node/async_api.py): it loads anyio, so it too is imported on first use.
_LAZY.update({name: "kachery_node.async_api" for name in (
    "aload_bytes", "aload_file", "aload_json", "aload_npy", "aload_pkl", "aload_text", "arequest_task")})
# All listed, so that `from kachery_node import *` and completion (Jupyter, IDEs) offer them.
__all__ = ["DISTRIBUTION", *sorted(_LAZY)]


def __dir__() -> list[str]:
    """Module attributes plus the lazily imported names, so that completion (Jupyter, IDEs)
    offers ``kn.load_file``, ``kn.request_task`` and the rest before their first use."""
    return sorted({*globals(), *_LAZY})


def __getattr__(name: str):
    if name == "__version__":  # importlib.metadata costs ~10 ms: only when asked
        from importlib.metadata import version

        return version(DISTRIBUTION)
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # found directly from now on
        return value
    raise AttributeError(f"module 'kachery_node' has no attribute {name!r}")

"""kachery_feeds: signed, append-only feeds in SQLite, with live following and replication.

>>> import kachery_feeds as kf
>>> store = kf.open_store("/tmp/demo/feeds.db")           # doctest: +SKIP
>>> sf = store.create_feed().load_subfeed("primes")       # doctest: +SKIP
>>> sf.append_message({"p": 2})                           # doctest: +SKIP
0

The format is specified in ``spec/feeds.md``. Nothing here touches the network: a node carries
:meth:`Subfeed.get_signed_messages` output to another store's :meth:`Subfeed.add_signed_messages`.
"""

# Every public name is imported on first use (PEP 562 ``__getattr__`` below), as in
# kachery_node: the package alone costs well under a millisecond, so a program that imports it
# and uses one corner (its errors, its URIs) does not pay for the store, SQLite and libsodium
# (~35 ms of imports, ~50-80 ms of a process's start on this machine class).
_LAZY: dict[str, str] = {}
for _module, _names in {
    "audit": ("Problem", "StoreReport"),
    "errors": (
        "FeedError", "FeedRestoringError", "ForkError", "InvalidPayloadError", "InvalidUriError",
        "MissingMessagesError", "NotAStoreError", "NotWriteableError", "RestoreIncompleteError",
        "StoreBusyError", "StoreFullError", "StoreVersionError", "UnknownFeedError",
        "VerificationError",
    ),
    "filesystems": ("NetworkFileSystemError",),
    "forks": ("ForkProofInfo", "is_succession_violation", "verify_fork_proof"),
    "messages": (
        "FORMAT_VERSION", "SIGNATURE_CONTEXT", "ParsedMessage", "decode_segment", "encode_segment",
        "parse_message",
    ),
    "payloads": ("MAX_MESSAGE_BYTES",),
    "store": ("Store", "open_store"),
    "subfeed": ("Feed", "MessageRecord", "Subfeed"),
    "uris": ("FeedUri", "normalize_feed_id", "parse_feed_uri", "subfeed_hash", "subfeed_uri"),
}.items():
    _LAZY.update(dict.fromkeys(_names, f"{__name__}.{_module}"))
del _module, _names
#: The package's modules, which ``kachery_feeds.<module>`` also loads on first use (an eager
#: package init used to import them all).
_SUBMODULES = frozenset({
    "audit", "checkpoints", "errors", "filesystems", "forks", "jsontext", "key_backup", "messages",
    "payloads", "range_verifier", "schema", "store", "store_succession", "subfeed", "succession",
    "uris", "wal_checkpoints", "watch",
})

__all__ = [
    "FORMAT_VERSION",
    "MAX_MESSAGE_BYTES",
    "SIGNATURE_CONTEXT",
    "Feed",
    "FeedError",
    "FeedRestoringError",
    "FeedUri",
    "ForkError",
    "ForkProofInfo",
    "InvalidPayloadError",
    "InvalidUriError",
    "MessageRecord",
    "MissingMessagesError",
    "NetworkFileSystemError",
    "NotAStoreError",
    "NotWriteableError",
    "ParsedMessage",
    "Problem",
    "RestoreIncompleteError",
    "Store",
    "StoreBusyError",
    "StoreFullError",
    "StoreReport",
    "StoreVersionError",
    "Subfeed",
    "UnknownFeedError",
    "VerificationError",
    "decode_segment",
    "encode_segment",
    "is_succession_violation",
    "normalize_feed_id",
    "open_store",
    "parse_feed_uri",
    "parse_message",
    "subfeed_hash",
    "subfeed_uri",
    "verify_fork_proof",
]


def __dir__() -> list[str]:
    """Module attributes plus the lazily imported names (completion offers them before use)."""
    return sorted({*globals(), *_LAZY})


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # found directly from now on
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

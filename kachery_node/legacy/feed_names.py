"""Local feed names, as this node and the original kachery-client 1.2.0 both give them.

kachery-client had its daemon create an unnamed feed and then set the mutable
``{"type": "feed_id_for_name", "feed_name": NAME}`` to its ID; this node names feeds in its store
(``kachery_feeds.Store.create_feed(name)``). Both kinds of name lead to the same feed, whichever
program asks (``kn.get_feed_id`` and the original daemon's ``/mutable/get`` that kachery-client's
``get_feed_id`` calls), so one rule decides (spec/legacy.md §3, "Feed names"):

1. the client's name, when the feed it names is here; an original feed that
   ``kachery feed import-legacy`` imported is followed to the feed it became (the mutable itself
   is left as the original wrote it, so the original's programs still read their own value);
2. else the feed of this store with that name.

The client's name comes first because kachery-client re-creating a name replaced the feed it
named; this node's ``kn.create_feed(name)`` refuses a name either kind already gives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..storage.node_storage import Storage

#: The mutable key type kachery-client 1.2.0 names feeds with.
ORIGINAL_NAME_TYPE = "feed_id_for_name"


def original_name_key(name: str) -> dict[str, str]:
    """The mutable key under which kachery-client kept the ID of the feed named ``name``."""
    return {"type": ORIGINAL_NAME_TYPE, "feed_name": name}


def name_in_original_key(key: Any) -> str | None:
    """The feed name if ``key`` is exactly kachery-client's name key, else None."""
    if (isinstance(key, dict) and set(key) == {"type", "feed_name"}
            and key["type"] == ORIGINAL_NAME_TYPE and isinstance(key["feed_name"], str)):
        return key["feed_name"]
    return None


def feed_id_for_name(storage: Storage, name: str) -> str | None:
    """The ID of the local feed named ``name`` by either kind of name (see the module
    docstring), or None when neither names a feed here. A name that is a feed ID names nothing."""
    import kachery_feeds

    from .feeds_import import IMPORT_RECORD_TYPE

    store = storage.feeds
    named = storage.mutables.get(original_name_key(name), None)
    if isinstance(named, str):
        for candidate in (storage.mutables.get({"type": IMPORT_RECORD_TYPE, "feed_id": named}, None),
                          named):
            if isinstance(candidate, str) and _is_here(store, candidate, kachery_feeds):
                return kachery_feeds.normalize_feed_id(candidate)
    try:
        kachery_feeds.normalize_feed_id(name)
        return None  # a feed ID is not a name (load_feed would take it as the ID)
    except kachery_feeds.InvalidUriError:
        pass
    try:
        return store.load_feed(name).feed_id
    except (kachery_feeds.UnknownFeedError, kachery_feeds.InvalidUriError):
        return None


def _is_here(store: Any, feed_id: str, kachery_feeds: Any) -> bool:
    try:
        store.load_feed(feed_id)
        return True
    except (kachery_feeds.UnknownFeedError, kachery_feeds.InvalidUriError):
        return False

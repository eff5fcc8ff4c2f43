"""The module-level API (``kn.store_file(...)``, ``kn.load_json(...)``, ...) for scripts.

Every function works on the default storage, ``$KACHERY_STORAGE_DIR`` (or
``~/kachery-storage``), read when the function is called. To work on another storage, use a
:class:`~kachery_node.storage.node_storage.Storage` (``kn.open_storage(path)``): it has the same methods.

All loads go through :func:`_locally_or_fetched`: it looks in the local storage and, when the
content is not there, asks the node's running daemon to fetch it from its channels, or, with no
daemon, reads the channels' buckets itself (verified, then stored). Keep every load path going
through it.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .config import default_storage_dir
from .errors import NotFoundError
from .storage import data_objects
from .storage.file_uris import FileUri, build_uri, parse_uri
from .storage.manifest import Manifest, check_range, parse_manifest
from .storage.node_storage import Storage

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


def _locally_or_fetched(uri: str, load: Callable[[Storage], T], channel: str | None = None, *,
                        fetched: Callable[[str], T] | None = None,
                        progress: Callable[[int, int], None] | None = None) -> T:
    """Run a load against the default storage. If the content is not here: a daemon serving
    this storage fetches it from its channels; with no daemon, the channels' buckets are read
    directly (:mod:`.bucket_file_reads`). Then load again, or, with ``fetched``, call it with the
    path of the copy just verified and stored (no second look-up in the storage). The
    NotFoundError says what was tried: the local storage, the daemon or its absence, and each
    channel."""
    storage = default_storage()
    try:
        return load(storage)
    except NotFoundError as exc:
        local = str(exc)
    from . import remote_reads as remote

    if remote.daemon_for(storage.directory) is not None:
        try:
            path = remote.fetch_file(storage.directory, uri, channel=channel, progress=progress)
        except NotFoundError as exc:
            raise NotFoundError(f"{local}; the daemon running for {storage.directory} asked its "
                                f"channels: {exc}", uri=uri) from None
    else:
        from .bucket_file_reads import fetch_from_buckets

        try:
            path = fetch_from_buckets(storage, uri, channel, progress=progress)
        except NotFoundError as exc:
            raise NotFoundError(f"{local}; no daemon is running for {storage.directory} (so no "
                                f"node was asked; `kachery node start` runs one), and the channels' "
                                f"buckets were read: {exc}",
                                uri=uri) from None
    return load(storage) if fetched is None else fetched(path)


# -- files --------------------------------------------------------------------------------------
def store_file(path: str | os.PathLike, basename: str | None = None) -> str:
    """Copy a file into local storage; return ``sha1://<sha1>/<basename>`` (plus
    ``?manifest=<sha1>`` above 20,000,000 bytes). Storing unchanged content again is cheap."""
    return default_storage().store_file(path, basename)


def link_file(path: str | os.PathLike, basename: str | None = None) -> str:
    """Register a file in place (no copy); it is refused later if it changes."""
    return default_storage().link_file(path, basename)


def load_file(uri: str, dest: str | os.PathLike | None = None, *, channel: str | None = None,
              progress: Callable[[int, int], None] | None = None) -> str:
    """Local path of the content of ``uri`` (or a copy at ``dest``). Content not here is fetched
    from the node's channels (all joined in turn, or ``channel``): through the daemon if one runs
    for this storage, else straight from the channels' buckets (no daemon needed); either way it
    is verified, then stored. Raises :class:`~kachery_node.NotFoundError` when it is not
    available (saying what was tried), :class:`~kachery_node.TamperedDataError` when only copies
    that do not match the hash were found (nothing is stored),
    :class:`~kachery_node.ChannelNotJoinedError` for a ``channel`` this node has not joined.
    ``progress(done, total)`` follows a download in bytes."""

    def fetched(path: str) -> str:
        if dest is None:
            return path
        shutil.copyfile(path, dest)
        return str(dest)

    return _locally_or_fetched(uri, lambda s: s.load_file(uri, dest=dest), channel, fetched=fetched,
                               progress=progress)


def load_bytes(uri: str, start: int = 0, end: int | None = None, *, channel: str | None = None) -> bytes:
    """Bytes ``[start, end)`` of the content of ``uri`` (``end=None``: to its end), fetched like
    :func:`load_file` if it is not here. Of a large file (``?manifest=``) only the 20 MB chunks
    covering the range are fetched, each verified by its hash, and kept as a partial copy that
    later reads (and a later :func:`load_file`) reuse."""
    storage = default_storage()
    try:
        return storage.load_bytes(uri, start, end)
    except NotFoundError as exc:
        local = str(exc)
    key = parse_uri(uri)
    manifest = _stored_manifest(storage, key)
    if manifest is None and key.manifest_sha1 is not None:
        # The manifest first (a small file), to know which chunks cover the range.
        _locally_or_fetched(build_uri(key.manifest_sha1), lambda s: s.load_file(build_uri(key.manifest_sha1)),
                            channel)
        manifest = _stored_manifest(storage, key)
    if manifest is None or (start == 0 and end in (None, manifest.size)):
        return _locally_or_fetched(uri, lambda s: s.load_bytes(uri, start, end), channel)
    from .bucket_file_reads import fetch_range_from_buckets
    from .storage.partial_files import read_partial_range

    stop = check_range(manifest, start, end)
    if stop == start:
        return b""
    data = read_partial_range(storage.directory, manifest, start, stop)
    if data is not None:
        return data
    from . import remote_reads as remote

    if remote.daemon_for(storage.directory) is not None:
        try:
            remote.fetch_file(storage.directory, uri, channel=channel, start=start, end=stop)
        except NotFoundError as exc:
            raise NotFoundError(f"{local}; the daemon running for {storage.directory} asked its "
                                f"channels: {exc}", uri=uri) from None
        data = read_partial_range(storage.directory, manifest, start, stop)
        return data if data is not None else storage.load_bytes(uri, start, stop)
    try:
        return fetch_range_from_buckets(storage, uri, start, stop, channel)
    except NotFoundError as exc:
        raise NotFoundError(f"{local}; no daemon is running for {storage.directory} (so no node "
                            f"was asked; `kachery node start` runs one), and the channels' buckets "
                            f"were read: {exc}", uri=uri) from None


def _stored_manifest(storage: Storage, key: FileUri) -> Manifest | None:
    """The manifest of ``key``'s file if it is stored here (verified), else None."""
    if key.manifest_sha1 is None or key.chunk_of is not None:
        return None
    try:
        data = Path(storage.load_file(build_uri(key.manifest_sha1))).read_bytes()
    except NotFoundError:
        return None
    return parse_manifest(data, expected_sha1=key.sha1)


def upload_file(path_or_uri: str | os.PathLike, *, channel: str) -> str:
    """Store a file (or take stored content by URI) and push it to ``channel``'s bucket through
    the daemon, so other nodes can load it without asking this one. Returns the URI."""
    from . import remote_reads as remote

    text = os.fspath(path_or_uri)
    uri = text if text.startswith("sha1://") else store_file(text)
    remote.upload_file(default_storage().directory, uri, channel)
    return uri


def upload_text(text: str, *, channel: str, basename: str | None = None) -> str:
    """:func:`store_text`, then :func:`upload_file` to ``channel`` (the original's name)."""
    return upload_file(store_text(text, basename), channel=channel)


def upload_json(obj: Any, *, channel: str, basename: str | None = None) -> str:
    """:func:`store_json`, then :func:`upload_file` to ``channel`` (the original's name)."""
    return upload_file(store_json(obj, basename), channel=channel)


def upload_npy(array: Any, *, channel: str, basename: str | None = None) -> str:
    """:func:`store_npy`, then :func:`upload_file` to ``channel`` (the original's name)."""
    return upload_file(store_npy(array, basename), channel=channel)


def upload_pkl(obj: Any, *, channel: str, basename: str | None = None) -> str:
    """:func:`store_pkl`, then :func:`upload_file` to ``channel`` (the original's name)."""
    return upload_file(store_pkl(obj, basename), channel=channel)


# -- data objects -------------------------------------------------------------------------------
def store_text(text: str, basename: str | None = None) -> str:
    """Store a string; return its URI (default basename ``file.txt``)."""
    return default_storage().store_text(text, basename)


def store_json(obj: Any, basename: str | None = None) -> str:
    """Store a JSON value; numpy arrays become lists, numpy scalars numbers. NaN is refused.
    The bytes are the original kachery's (compact, keys in the caller's order, non-ASCII
    escaped), so the same value has the same URI in both."""
    return default_storage().store_json(obj, basename)


def store_npy(array: Any, basename: str | None = None) -> str:
    """Store a numpy array as .npy (no pickles inside)."""
    return default_storage().store_npy(array, basename)


def store_pkl(obj: Any, basename: str | None = None) -> str:
    """Store a pickle of plain data and numpy arrays."""
    return default_storage().store_pkl(obj, basename)


def load_text(uri: str, *, channel: str | None = None) -> str:
    return data_objects.decode_text(Path(load_file(uri, channel=channel)).read_bytes())


def load_json(uri: str, *, channel: str | None = None) -> Any:
    return data_objects.decode_json(Path(load_file(uri, channel=channel)).read_bytes())


def load_npy(uri: str, *, channel: str | None = None) -> Any:
    return data_objects.read_npy(Path(load_file(uri, channel=channel)))


def load_pkl(uri: str, *, channel: str | None = None, max_bytes: int | None = None) -> Any:
    """Unpickle without running code: anything but plain data and numpy arrays raises
    :class:`~kachery_node.UnsafePickleError`; a pickle that would allocate more than
    ``max_bytes`` (default: 64 MiB plus 16 times its size) raises
    :class:`~kachery_node.PickleTooLargeError`."""
    return data_objects.decode_pkl(Path(load_file(uri, channel=channel)).read_bytes(), max_bytes)


# -- mutables -----------------------------------------------------------------------------------
def set(key: Any, value: Any, *, overwrite: bool = True, update: bool | None = None) -> bool:
    """Set a local mutable (JSON key and value). Returns True if written; with
    ``overwrite=False`` (the original's ``update=False``) an existing value is kept."""
    if update is not None:
        overwrite = update
    return default_storage().mutables.set(key, value, overwrite=overwrite)


def get(key: Any, *default: Any) -> Any:
    """The value of a mutable; ``get(key, default)`` returns ``default`` if absent, ``get(key)``
    raises :class:`~kachery_node.NotFoundError`."""
    return default_storage().mutables.get(key, *default)


def delete(key: Any) -> bool:
    """Delete a mutable; True if it existed."""
    return default_storage().mutables.delete(key)


# -- feeds --------------------------------------------------------------------------------------
#: ``channel`` value meaning "this node's store only; do not ask the daemon" (the original's).
LOCAL_ONLY = "*local*"


def create_feed(name: str | None = None) -> kachery_feeds.Feed:
    """A new writeable feed in ``<storage>/feeds.db``, optionally with a local ``name`` (1-100
    characters, unique on this node) to load it by later: ``load_feed(name)``."""
    storage = default_storage()
    if name is not None:
        _refuse_taken_name(storage, name)
    return storage.feeds.create_feed(name)


def _refuse_taken_name(storage: Storage, name: str) -> None:
    import kachery_feeds

    from .legacy.feed_names import feed_id_for_name

    if isinstance(name, str) and feed_id_for_name(storage, name) is not None:
        raise kachery_feeds.InvalidUriError(f"a feed named {name!r} already exists on this node")


def get_feed_id(name: str, *, create: bool = False) -> str:
    """The ID of the local feed named ``name``; with ``create=True`` a new feed of that name
    is created if there is none. Raises :class:`kachery_feeds.UnknownFeedError` otherwise (never
    returns None). Names given with kachery-client 1.2.0 on this node are found too, and lead
    to the feed ``kachery feed import-legacy`` made of the original's (spec/legacy.md §3)."""
    import kachery_feeds

    from .legacy.feed_names import feed_id_for_name

    storage = default_storage()
    if not isinstance(name, str) or name.startswith("feed://"):
        raise kachery_feeds.InvalidUriError(f"get_feed_id takes a feed's local name, not {name!r}")
    _as_name(name)
    feed_id = feed_id_for_name(storage, name)
    if feed_id is not None:
        return feed_id
    if create:
        return storage.feeds.create_feed(name).feed_id
    raise kachery_feeds.UnknownFeedError(f"no feed named {name!r} on this node")


def _as_name(name: str) -> str:
    """A name that load_feed cannot mistake for a feed ID (a 64-hex name would be one)."""
    import kachery_feeds

    try:
        kachery_feeds.normalize_feed_id(name)
    except kachery_feeds.InvalidUriError:
        return name
    raise kachery_feeds.InvalidUriError(f"{name!r} is a feed ID, not a name")


def load_feed(uri_or_name: str, *, create: bool = False) -> kachery_feeds.Feed:
    """A feed by ``feed://<id>``, id, or local name (``create=True``: create the named feed if
    there is none, as the original did; only with a name)."""
    import kachery_feeds

    if isinstance(uri_or_name, str) and not uri_or_name.startswith("feed://"):
        try:
            kachery_feeds.normalize_feed_id(uri_or_name)
        except kachery_feeds.InvalidUriError:
            return default_storage().load_feed(get_feed_id(uri_or_name, create=create))
    if create:
        raise kachery_feeds.InvalidUriError("create=True needs a feed name, not a feed URI or ID")
    return default_storage().load_feed(uri_or_name)


def delete_feed(uri_or_name: str) -> None:
    """Delete a feed (by ``feed://`` URI, ID or local name) with its key and messages from this
    node. Raises :class:`kachery_feeds.UnknownFeedError` if there is no such feed here."""
    storage = default_storage()
    feed = load_feed(uri_or_name)
    storage.feeds.delete_feed(feed.feed_id)
    if isinstance(uri_or_name, str) and not uri_or_name.startswith("feed://"):
        from .legacy.feed_names import original_name_key

        storage.mutables.delete(original_name_key(uri_or_name))


def get_node_id() -> str:
    """This node's ID (the public half of ``<storage>/node.key``); raises
    :class:`~kachery_node.NotInitializedError` before ``kachery init``."""
    from .config import load_node_config

    return load_node_config(default_storage().directory).node_id


def load_subfeed(uri: str, *, channel: str | None = None, position: int = 0,
                 live: bool = False) -> kachery_feeds.Subfeed:
    """A subfeed by ``feed://<id>/<name>``, its cursor at ``position``.

    For a feed this node does not own, the channels (``channel``, or every joined one in turn;
    ``"*local*"``: none, this node's copy only) are asked, in this order
    (kachery_node/remote_subfeeds.py): with a daemon running for this storage, it follows the
    subfeed (catches up from the buckets, subscribes, and the owner's new messages arrive live);
    without one, each channel's bucket is read directly over HTTP, verified, and
    :meth:`~kachery_feeds.Subfeed.follow` keeps polling the buckets for new messages.

    Raises :class:`~kachery_node.SubfeedNotFoundError` (a :class:`~kachery_node.NotFoundError`)
    when no message is found anywhere, saying what was tried, and
    :class:`~kachery_node.BucketDataRejectedError` when a bucket's copy fails verification,
    unless ``live=True``: then it returns the subfeed even if it is still empty, for a caller
    who waits for messages (``follow()``).
    """
    from . import remote_subfeeds

    storage = default_storage()
    subfeed = storage.load_subfeed(uri)
    subfeed.set_position(position)
    if not subfeed.is_writeable and channel != LOCAL_ONLY:
        remote_subfeeds.reach(storage, subfeed, channel, live=live)
    return subfeed


def follow(uris: str | list[str], *, channel: str | None = None) -> list[str]:
    """Have this node's daemon follow other nodes' subfeeds (``feed://<id>/<name>``, one URI or
    a list of them, sent in one request: following 10,000 costs one call), on ``channel`` or
    every joined channel; returns the channels used. They catch up from the buckets and stay
    followed live, also after restarts, until :func:`unfollow` (or nobody reads one for
    ``[daemon.feeds] unfollow_idle``). The node's own subfeeds among them are skipped. Every URI
    is checked before any is followed: one bad URI raises :class:`~kachery_node.DaemonError`
    and follows none. Raises :class:`~kachery_node.DaemonNotRunningError` without a daemon."""
    from .daemon_client import DaemonClient

    body: dict[str, Any] = {"uris": [uris] if isinstance(uris, str) else list(uris)}
    if channel is not None:
        body["channel"] = channel
    client = DaemonClient(default_storage().directory)
    return client.request("POST", "/api/feeds/follow", json_body=body, timeout=600)["following"]


def unfollow(uri: str) -> bool:
    """Stop following another node's subfeed (``feed://<id>/<name>``) on every channel: the
    daemon no longer subscribes to it; the messages already here stay readable. Returns False if
    it was not followed. (A followed subfeed nobody reads is unfollowed by itself after
    ``[daemon.feeds] unfollow_idle`` seconds, config.toml; default 7 days.)"""
    from . import remote_subfeeds

    return remote_subfeeds.unfollow(default_storage(), uri)


def publish(uri: str, *, channel: str) -> str:
    """Keep a feed of this node (``feed://<id>``: every subfeed, also ones created later) or one
    of its subfeeds (``feed://<id>/<name>``) current in ``channel``'s bucket, whether or not
    anyone follows it, so readers catch up while this node is offline. Remembered in
    ``<storage>/published-feeds.json``; the daemon (now, if it runs; else when it starts)
    uploads what the bucket lacks and then every new message. Returns the URI published.

    >>> sf = kn.create_feed().load_subfeed("readings")
    >>> kn.publish(sf.uri, channel="lab")                      # doctest: +SKIP
    """
    from .feed_publications import parse_publication, update_publications
    from .joined_channels import load_memberships

    storage = default_storage()
    pub = parse_publication(uri, channel)
    if not storage.feeds.has_private_key(pub.feed_id):
        raise NotFoundError(f"cannot publish {uri}: this node does not own feed {pub.feed_id} "
                            "(only a feed's owner publishes it)", uri=uri)
    joined = load_memberships(storage.directory)
    if channel not in joined:
        from .errors import UsageError

        raise UsageError(f"cannot publish to {channel!r}: this node has not joined it (joined: "
                         f"{', '.join(joined) or 'none'}); run `kachery node join {channel}`")
    if "provide-feeds" not in joined[channel].get("roles", []):
        from .errors import UsageError

        raise UsageError(f"cannot publish to {channel!r}: this node did not ask for the provide-feeds "
                         f"role there, which uploading to its bucket needs; run `kachery node join "
                         f"{channel} --add-roles provide-feeds` (and have the channel's owner grant it)")
    update_publications(storage.directory, lambda pubs: pubs if pub in pubs else [*pubs, pub])
    _tell_daemon_publications_changed(storage)
    return pub.uri


def unpublish(uri: str, *, channel: str | None = None) -> int:
    """Stop keeping ``uri`` (as given to :func:`publish`) current in ``channel``'s bucket (every
    channel, if None). What is already in the bucket stays. Returns how many publications
    were removed (0: it was not published)."""
    from .feed_publications import Publication, parse_publication, update_publications

    storage = default_storage()
    target = parse_publication(uri, channel or "")

    def matches(p: Publication) -> bool:
        same = (p.feed_id, p.subfeed_hash) == (target.feed_id, target.subfeed_hash)
        return same and channel in (None, p.channel)

    before = update_publications(storage.directory, lambda pubs: [p for p in pubs if not matches(p)])
    removed = sum(1 for p in before if matches(p))
    if removed:
        _tell_daemon_publications_changed(storage)
    return removed


def list_published() -> list[dict[str, str]]:
    """What this node publishes: ``{"uri", "channel"}`` per publication (:func:`publish`)."""
    from .feed_publications import load_publications

    return [{"uri": p.uri, "channel": p.channel} for p in load_publications(default_storage().directory)]


def _tell_daemon_publications_changed(storage: Storage) -> None:
    """A running daemon takes up the change now, not at its next look at the file (2 s)."""
    from . import remote_reads as remote

    daemon = remote.daemon_for(storage.directory)
    if daemon is not None:
        daemon.request("POST", "/api/feeds/published")


def watch_for_new_messages(subfeed_watches: dict[str, Any], *, wait_msec: float = 0,
                           channel: str | None = None, signed: bool = False,
                           max_num_messages: int = 0) -> dict[str, list[Any]]:
    """New messages of several subfeeds in one call (the original's function).

    ``subfeed_watches`` maps names to ``{"feedId", "subfeedName" or "subfeedHash", "position"}``
    (the original's form), to ``{"uri": "feed://…/…", "position"}``, or to a Subfeed (at its
    cursor). Returns at once if any has messages at or after its position, else as soon as one
    gets some, else after ``wait_msec``: ``{name: [payloads]}`` for every name (``[]`` without
    news). Cursors are not moved. Feeds of other nodes are followed as by :func:`load_subfeed`.
    """
    import kachery_feeds

    if not isinstance(subfeed_watches, dict):
        raise kachery_feeds.InvalidUriError("subfeed_watches maps names to watches (a dict)")
    watches: dict[str, tuple[kachery_feeds.Subfeed, int]] = {}
    for name, watch in subfeed_watches.items():
        if isinstance(watch, kachery_feeds.Subfeed):
            watches[name] = (watch, watch.position)
            continue
        if not isinstance(watch, dict):
            raise kachery_feeds.InvalidUriError(f"watch {name!r}: expected a dict or a Subfeed")
        if "uri" in watch:
            uri = watch["uri"]
        elif "feedId" in watch and ("subfeedHash" in watch or "subfeedName" in watch):
            feed_id = kachery_feeds.normalize_feed_id(watch["feedId"])
            sub = "~" + str(watch["subfeedHash"]) if "subfeedHash" in watch else watch["subfeedName"]
            uri = kachery_feeds.subfeed_uri(feed_id, sub)
        else:
            raise kachery_feeds.InvalidUriError(
                f"watch {name!r}: needs 'uri', or 'feedId' with 'subfeedName' or 'subfeedHash'")
        watches[name] = (load_subfeed(uri, channel=channel, live=True), watch.get("position", 0))
    return default_storage().feeds.watch_for_new_messages(
        watches, wait_msec, max_num_messages=max_num_messages, signed=signed)

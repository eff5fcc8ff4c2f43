"""Where each joined channel's bucket can be read, for a process with no daemon.

A channel's bucket is publicly readable over HTTP(S) (spec/bucket.md §5), and everything in it
is verified by its reader, so a script needs no daemon, no token and no hub round trip per
object to read it: only the bucket's read URL. That comes from the node's record of its
channels, ``<storage>/channels.json`` (:mod:`kachery_node.joined_channels`):

1. the entry's ``bucket``: the bucket spec of the hub's ``channel_info``
   (``{"backend": "embedded" | "gcs" | "s3", "read_url": ..., ...}``, never a secret), saved by
   ``kachery node join``;
2. else (an entry written before the spec was saved) the hub is asked, with a request signed by
   the node key (``<storage>/node.key``), and the answer is saved in the entry for next time;
3. else, if the hub cannot be reached, the entry's ``bucket_url`` (every backend reads objects at
   ``<bucket_url>/<key>``).

The spec is also cached in the process. When the channel's owner moves it to another bucket
(``kachery channel configure``), pass ``refresh=True`` (or ``kachery node join`` again).

Reads are synchronous, with bounded timeouts (``connect_timeout``, and ``read_timeout`` between
bytes: a stalled bucket fails, a long download does not), over the same direct socket as the
daemon's bucket downloads (:mod:`.transport.bucket.blocking_reads`) with httpx as the fallback; TLS
as every other connection of a node (:func:`~kachery_node.transport.tls.ssl_context`: the
system's store, plus ``--ca-file`` / ``$KACHERY_CA_FILE``). Example::

    for bucket in channel_bucket_readers(storage_dir):          # every joined channel in turn
        try:
            head = bucket.get(subfeed_head_path(bucket.channel, feed_id, subfeed_hash))
        except NotFoundError:
            continue
    bucket, = channel_bucket_readers(storage_dir, "lab")        # one channel
    bucket.download(file_path("lab", sha1), "/tmp/x.part", start=0, end=100)

Keys are full object keys, ``<channel>/<path>`` (:mod:`kachery_node.protocol.bucket_layout`).
Nothing returned here is verified: that is the caller's job.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from .errors import ChannelNotJoinedError, ConfigError, HubRequestError, InvalidDataError, NotFoundError
from .joined_channels import load_memberships, save_membership
from .transport.bucket.blocking_reads import CONNECT_TIMEOUT, READ_TIMEOUT, BlockingBucketReader, Write
from .transport.bucket.bucket_interface import ByteSink
from .transport.bucket.open_bucket import bucket_spec

#: :meth:`ChannelBucket.get` holds the object in memory: larger ones are refused.
GET_MAX_BYTES = 64 << 20

#: What :meth:`ChannelBucket.download` writes to: the path of a new file, a
#: :class:`~kachery_node.transport.bucket.bucket_interface.ByteSink`, or a binary file object.
Destination = str | os.PathLike | ByteSink | BinaryIO

_specs: dict[tuple[str, str], dict[str, Any]] = {}  # (storage dir, channel) -> bucket spec
_specs_lock = threading.Lock()


class ChannelBucket:
    """One joined channel's bucket, read synchronously (see the module docstring).

    ``channel`` names the channel; :attr:`read_url` is where its objects are read
    (``<read_url>/<key>``), found on first use (it may raise
    :class:`~kachery_node.errors.HubRequestError` if the hub had to be asked and could not be
    reached, or :class:`~kachery_node.errors.ConfigError`)."""

    def __init__(self, storage_dir: Path | str, channel: str, *, refresh: bool = False,
                 connect_timeout: float = CONNECT_TIMEOUT, read_timeout: float = READ_TIMEOUT) -> None:
        self.storage_dir = Path(storage_dir)
        self.channel = channel
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._refresh = refresh
        self._spec: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"ChannelBucket({self.channel!r})"

    @property
    def spec(self) -> dict[str, Any]:
        """The channel's bucket spec (``backend``, ``read_url``, ...)."""
        if self._spec is None:
            self._spec = _bucket_spec_of(self.storage_dir, self.channel, refresh=self._refresh)
        return self._spec

    @property
    def read_url(self) -> str:
        """The base URL objects are read from: ``GET <read_url>/<key>``."""
        return str(self.spec["read_url"]).rstrip("/")

    def url(self, key: str) -> str:
        """The URL of the object ``key`` (``<channel>/<path>``; InvalidPathError if malformed)."""
        return BlockingBucketReader(self.read_url).url(key)

    def get(self, key: str, start: int | None = None, end: int | None = None, *,
            max_bytes: int = GET_MAX_BYTES) -> bytes:
        """Bytes ``[start, end)`` of the object ``key`` (all of it by default), in memory: for
        small objects (a head, a segment, a manifest). Raises NotFoundError (404),
        HubRequestError (another refusal, the bucket unreachable or cut short: code
        ``unreachable``), InvalidDataError if it is larger than ``max_bytes``."""
        parts: list[bytes] = []
        size = 0

        def keep(piece: bytes | memoryview) -> None:
            nonlocal size
            size += len(piece)
            if size > max_bytes:
                raise InvalidDataError(f"{key} in the bucket of {self.channel} is larger than "
                                       f"{max_bytes} bytes; download it instead")
            parts.append(bytes(piece))

        self._fetch(key, keep, start, end, None)
        return b"".join(parts)

    def download(self, key: str, dest: Destination, start: int | None = None, end: int | None = None,
                 *, progress: Callable[[int, int], None] | None = None) -> int:
        """Stream the object ``key`` (its bytes ``[start, end)`` if given) into ``dest`` (the
        path of a file to create, which must not exist; a ByteSink; or a binary file object),
        never holding it whole in memory; returns how many bytes came. ``progress(done,
        total)`` follows it. Raises as :meth:`get`; bytes already written stay written when a
        download breaks off (verify before use)."""
        if isinstance(dest, ByteSink):
            return self._fetch(key, dest.write_blocking, start, end, progress)
        if hasattr(dest, "write"):
            return self._fetch(key, dest.write, start, end, progress)  # type: ignore[union-attr]
        with open(os.fspath(dest), "xb") as f:  # type: ignore[arg-type]
            return self._fetch(key, f.write, start, end, progress)

    # ------------------------------------------------------------------ pieces
    def _fetch(self, key: str, write: Write, start: int | None, end: int | None,
               progress: Callable[[int, int], None] | None) -> int:
        reader = BlockingBucketReader(self.read_url, connect_timeout=self.connect_timeout,
                                      read_timeout=self.read_timeout)
        try:
            return reader.read(key, write, start, end, progress)
        except NotFoundError:
            raise NotFoundError(f"{key} is not in the bucket of channel {self.channel} "
                                f"({self.read_url})") from None


def channel_bucket_readers(storage_dir: Path | str, channel: str | None = None, *,
                           refresh: bool = False) -> list[ChannelBucket]:
    """The bucket of ``channel``, or of every joined channel in turn (sorted by name), as
    :class:`ChannelBucket` readers. Raises :class:`~kachery_node.errors.ChannelNotJoinedError`
    if ``channel`` was not joined (``kachery node join``). Nothing is fetched yet: each
    reader finds its read URL on first use. ``refresh``: ask the hub again for where the
    buckets are (after the owner moved one)."""
    memberships = load_memberships(storage_dir)
    if channel is not None:
        if channel not in memberships:
            joined = ", ".join(sorted(memberships)) or "none"
            raise ChannelNotJoinedError(
                f"this node ({storage_dir}) has not joined channel {channel!r} (joined: {joined}); "
                f"run `kachery node join {channel} --roles request-files` as the node's owner")
        names = [channel]
    else:
        names = sorted(memberships)
    return [ChannelBucket(storage_dir, name, refresh=refresh) for name in names]


def _bucket_spec_of(storage_dir: Path, channel: str, *, refresh: bool) -> dict[str, Any]:
    """The bucket spec of a joined channel (see the module docstring for where it comes from)."""
    cache_key = (str(Path(storage_dir).absolute()), channel)
    with _specs_lock:
        cached = _specs.get(cache_key)
    if cached is not None and not refresh:
        return cached
    entry = load_memberships(storage_dir).get(channel)
    if entry is None:
        raise ChannelNotJoinedError(f"this node ({storage_dir}) has not joined channel {channel!r}")
    spec = entry.get("bucket") if not refresh else None
    if not _valid_spec(spec):
        try:
            spec = _spec_from_hub(storage_dir, channel, entry)
        except (HubRequestError, ConfigError):
            if not entry.get("bucket_url"):
                raise
            # Every backend reads objects at <bucket_url>/<key> (the channel info's bucket_url).
            spec = {"backend": "embedded", "read_url": entry["bucket_url"]}
        else:
            _save_spec(storage_dir, channel, spec)
    with _specs_lock:
        _specs[cache_key] = spec
    return spec


def _valid_spec(spec: object) -> bool:
    return isinstance(spec, dict) and isinstance(spec.get("read_url"), str) and bool(spec["read_url"])


def _spec_from_hub(storage_dir: Path, channel: str, entry: dict[str, Any]) -> dict[str, Any]:
    from .identity import load_node_key
    from .transport.hub_client import HubClient

    hub_url = entry.get("hub_url")
    if not isinstance(hub_url, str):
        raise ConfigError(f"{storage_dir}/channels.json: channel {channel!r} has no hub_url; "
                          f"run `kachery node join {channel}` again")
    with HubClient(hub_url, node_key=load_node_key(storage_dir)) as hub:
        spec = bucket_spec(hub.channel_info(channel))
    if not _valid_spec(spec):
        raise HubRequestError(502, "bad_answer", f"the hub at {hub_url} gave no bucket read URL for "
                              f"channel {channel!r}")
    return spec


def _save_spec(storage_dir: Path, channel: str, spec: dict[str, Any]) -> None:
    """Keep the spec in the membership entry, so the hub is not asked again (best effort: a
    storage this process may not write to still reads)."""
    try:
        entry = load_memberships(storage_dir).get(channel)
        if entry is not None and entry.get("bucket") != spec:
            save_membership(storage_dir, channel, {**entry, "bucket": spec})
    except (OSError, ConfigError):
        pass


__all__ = ["ChannelBucket", "channel_bucket_readers"]

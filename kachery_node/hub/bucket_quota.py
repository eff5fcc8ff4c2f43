"""Per-channel quotas of the embedded bucket: room is made by evicting re-fetchable objects.

A channel's quota (bytes; None: no limit) bounds what its objects take on the hub's disk. When
a write would take the channel over it, the channel's *re-fetchable* objects (``sha1/``: file
contents and chunks, which a provider uploads again when a requester asks) are removed least
recently used first until the new object fits; heads, segments and task results are never
removed to make room. If even removing every re-fetchable object would not make room, the write
is refused with :class:`~kachery_node.protocol.channel_errors.QuotaExceededError` (507) and
nothing is removed. spec/bucket.md §6 says the same for clients.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from ..protocol.channel_errors import MalformedRequestError, QuotaExceededError
from .object_files import ObjectFiles
from .object_index import ObjectIndex, is_refetchable

log = logging.getLogger("kachery.hub.bucket")

# channel -> its quota in bytes (None: unlimited); raises UnknownChannelError for no channel.
QuotaOf = Callable[[str], "int | None"]

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*")
MAX_QUOTA = 2**62


def parse_size(text: str) -> int | None:
    """A size as a person writes it: ``500MB``, ``10G``, ``1.5GiB``, ``1000000`` (bytes); K/M/G/T
    are decimal, KiB/MiB/GiB/TiB binary. ``none`` or ``unlimited``: None (no limit).
    MalformedRequestError otherwise.

    >>> parse_size("10G"), parse_size("1.5KiB"), parse_size("none")
    (10000000000, 1536, None)
    """
    if text.strip().lower() in ("none", "unlimited"):
        return None
    m = _SIZE.fullmatch(text)
    unit = _UNITS.get(m.group(2).lower()) if m else None
    if m is None or unit is None:
        raise MalformedRequestError(f"{text!r} is not a size (e.g. 500MB, 10G, 1.5GiB, or none)")
    value = int(float(m.group(1)) * unit) if "." in m.group(1) else int(m.group(1)) * unit
    return validate_quota(value)


def validate_quota(value: object) -> int | None:
    """A quota as sent in a request: None (no limit) or a whole number of bytes, 0…2^62."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_QUOTA:
        raise MalformedRequestError(f"quota must be null or a whole number of bytes (0-{MAX_QUOTA})")
    return value


def format_size(n: int | None) -> str:
    """``n`` bytes for people: ``1.50 GB``, ``12.0 kB``, ``512 B``; None: ``unlimited``."""
    if n is None:
        return "unlimited"
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


class BucketQuota:
    """Decides whether a write fits in its channel's quota, and evicts to make it fit."""

    def __init__(self, files: ObjectFiles, index: ObjectIndex, quota_of: QuotaOf) -> None:
        self.files, self.index, self.quota_of = files, index, quota_of
        self.evicted_objects = 0
        self.evicted_bytes = 0

    def _over(self, channel: str, key: str, size: int) -> tuple[int | None, int, int]:
        """(quota, bytes over it after the write, bytes that eviction could free)."""
        quota = self.quota_of(channel)
        usage = self.index.channel_usage(channel)
        old = self.index.size_of(key) or 0
        if quota is None:
            return None, 0, 0
        # The object being replaced is not a candidate (its old bytes leave by the write itself).
        freeable = usage.refetchable_bytes - (old if is_refetchable(key) else 0)
        return quota, usage.bytes - old + size - quota, freeable

    def _refuse(self, channel: str, key: str, size: int, quota: int) -> QuotaExceededError:
        usage = self.index.channel_usage(channel)
        kept = usage.bytes - usage.refetchable_bytes
        return QuotaExceededError(
            f"channel {channel!r} is at its quota of {format_size(quota)} on this hub: {key} "
            f"({format_size(size)}) does not fit even after evicting every re-fetchable file "
            f"({format_size(kept)} are heads, segments and task results, which are never evicted); "
            f"the channel's owner can raise it with `kachery channel quota {channel} SIZE`")

    def check(self, channel: str, key: str, size: int) -> None:
        """Refuse at once a write of ``size`` bytes that could not fit however much is evicted
        (before its body is read); a write that may fit is decided by :meth:`make_room`."""
        quota, over, freeable = self._over(channel, key, size)
        if quota is not None and over > freeable:
            raise self._refuse(channel, key, size, quota)

    def make_room(self, channel: str, key: str, size: int) -> list[str]:
        """Evict ``channel``'s re-fetchable objects, least recently used first, until ``key``
        with ``size`` bytes fits in its quota; returns the evicted keys. Raises
        QuotaExceededError, removing nothing, when it cannot fit."""
        quota, over, freeable = self._over(channel, key, size)
        if quota is None or over <= 0:
            return []
        if over > freeable:
            raise self._refuse(channel, key, size, quota)
        victims: list[tuple[str, int]] = []
        freed = 0
        candidates = self.index.least_recently_used(channel, exclude=key)
        try:
            for victim, victim_size in candidates:
                victims.append((victim, victim_size))
                freed += victim_size
                if freed >= over:
                    break
        finally:
            candidates.close()
        if freed < over:  # the totals and the rows disagree (cannot happen unless edited by hand)
            raise self._refuse(channel, key, size, quota)
        for victim, _size in victims:
            self.files.remove(victim)
        self.index.forget(victims)
        self.evicted_objects += len(victims)
        self.evicted_bytes += freed
        log.info("bucket evicted %d object(s), %d bytes, of channel %s (quota %d) for %s",
                 len(victims), freed, channel, quota, key)
        return [v for v, _size in victims]

"""Feed key backups (spec/feeds.md §8): the text a feed's owner keeps to restore the feed elsewhere.

A backup is one JSON object (UTF-8, by the rules of spec/feeds.md §2.1)::

    {"type":"kachery-feed-key-backup","v":1,"feed":"<64 hex>","seed":"<64 hex>",
     "name":"<local name>"|null,"succession":["<succession record>", ...]}

``seed`` is the 32-byte Ed25519 seed of the key that signs the feed *now*: the feed's own key,
or, after key successions (spec/feeds.md §9), the newest key, with the records that hand the
feed to it in ``succession`` (empty for a feed that never changed keys). A backup is a secret:
whoever holds it can sign as the feed.

Restoring a backup never lets the new machine append at once: the feed starts *restoring*
(:meth:`kachery_feeds.Store.restore_key`) until it has caught up with what the network holds,
so an old backup cannot fork the feed.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import nacl.bindings
import orjson

from .errors import VerificationError
from .jsontext import JsonTextError
from .jsontext import loads as loads_json

BACKUP_TYPE = "kachery-feed-key-backup"
_KEYS = frozenset({"type", "v", "feed", "seed", "name", "succession"})
_HEX64 = re.compile(r"[0-9a-f]{64}")


class KeyBackup(NamedTuple):
    """A parsed backup: the feed, the seed of its current key, a local name and the succession
    records (texts, oldest first) that hand the feed to that key."""

    feed_id: str
    seed: bytes
    name: str | None
    succession: tuple[bytes, ...]


def encode_backup(backup: KeyBackup) -> bytes:
    """The backup's text (one JSON object, no trailing newline)."""
    return orjson.dumps({"type": BACKUP_TYPE, "v": 1, "feed": backup.feed_id, "seed": backup.seed.hex(),
                         "name": backup.name,
                         "succession": [r.decode("utf-8") for r in backup.succession]})


def parse_backup(data: bytes | str) -> KeyBackup:
    """Parse a backup; raises :class:`~kachery_feeds.VerificationError` if it is not one, or if
    its seed is not the key of its feed (for a feed without successions: a mistyped or
    truncated backup is refused before it can do harm). The succession records are checked by
    the store that restores it."""
    try:
        d = loads_json(data.encode("utf-8") if isinstance(data, str) else data)
    except (JsonTextError, UnicodeEncodeError) as exc:
        raise VerificationError(f"not a kachery feed key backup: {exc}") from None
    if type(d) is not dict or d.keys() != _KEYS or d["type"] != BACKUP_TYPE:
        raise VerificationError(f"not a kachery feed key backup: expected exactly the keys {sorted(_KEYS)} "
                                f"with type {BACKUP_TYPE!r}")
    if type(d["v"]) is not int or d["v"] != 1:
        raise VerificationError(f"unsupported key backup version {d['v']!r}")
    feed_id, seed, name, succession = d["feed"], d["seed"], d["name"], d["succession"]
    if type(feed_id) is not str or not _HEX64.fullmatch(feed_id):
        raise VerificationError("malformed key backup: 'feed' is not 64 lowercase hex")
    if type(seed) is not str or not _HEX64.fullmatch(seed):
        raise VerificationError("malformed key backup: 'seed' is not 64 lowercase hex")
    if name is not None and (type(name) is not str or not 1 <= len(name) <= 100):
        raise VerificationError("malformed key backup: 'name' is not null or a string of 1 to 100 characters")
    if type(succession) is not list or not all(type(r) is str for r in succession):
        raise VerificationError("malformed key backup: 'succession' is not a list of record texts")
    seed_bytes = bytes.fromhex(seed)
    if not succession:
        public, _ = nacl.bindings.crypto_sign_seed_keypair(seed_bytes)
        if public.hex() != feed_id:
            raise VerificationError("this key backup's seed is not the key of its feed (damaged backup?)")
    return KeyBackup(feed_id, seed_bytes, name, tuple(r.encode("utf-8") for r in succession))


RECOVERY_TYPE = "kachery-feed-recovery-key"
_RECOVERY_KEYS = frozenset({"type", "v", "feed", "seed"})


def encode_recovery_key(feed_id: str, seed: bytes) -> bytes:
    """A recovery key file: ``{"type":"kachery-feed-recovery-key","v":1,"feed","seed"}``
    (spec/feeds.md §9.5). A secret, to keep apart from the feed's own key."""
    return orjson.dumps({"type": RECOVERY_TYPE, "v": 1, "feed": feed_id, "seed": seed.hex()})


def parse_recovery_key(data: bytes | str) -> tuple[str, bytes]:
    """``(feed ID, seed)`` of a recovery key file; raises VerificationError if it is not one."""
    try:
        d = loads_json(data.encode("utf-8") if isinstance(data, str) else data)
    except (JsonTextError, UnicodeEncodeError) as exc:
        raise VerificationError(f"not a kachery recovery key file: {exc}") from None
    if (type(d) is not dict or d.keys() != _RECOVERY_KEYS or d["type"] != RECOVERY_TYPE
            or type(d["v"]) is not int or d["v"] != 1):
        raise VerificationError(
            f"not a kachery recovery key file (expected the keys {sorted(_RECOVERY_KEYS)})")
    for k in ("feed", "seed"):
        if type(d[k]) is not str or not _HEX64.fullmatch(d[k]):
            raise VerificationError(f"malformed recovery key file: {k!r} is not 64 lowercase hex")
    return d["feed"], bytes.fromhex(d["seed"])

"""``kachery feed import-legacy``: the original kachery's subfeeds, verified, as feeds of this node.

Theory of operation
-------------------
1. **Verify everything first.** The original ``feeds.db`` is read read-only, and every chosen
   subfeed is verified from message 0 under the original's rules
   (:mod:`.original_messages`: shapes, numbering, ``previousSignature`` chain, Ed25519
   signatures in the SHA-1 or the legacy form). All or nothing: if any subfeed fails, nothing
   is imported and the error names the feed, the subfeed and the message.
2. **Make room.** If the source is ``<storage>/feeds.db`` itself, it is renamed to
   ``feeds.original.db``, unchanged, and this node's store is created in its place.
3. **Import.** Each original feed becomes a new feed of this node, with a new key: the original's
   key signed another format, and a feed ID stands for one key's messages in one format. Its
   local name (from the original's mutables) carries over when it is free here. Each subfeed
   keeps its hash, so ``feed://<new id>/primes`` is the subfeed the original called ``primes``;
   it holds

   * message 0: ``{"imported_from": {"format": "kachery-daemon feeds.db", "feed_id", "subfeed_hash",
     "message_count", "last_signature", "owned_here", "source"}}``;
   * message *i* + 1: the payload of the original's message *i*, with the metadata
     ``{"original": {"body": <the exact text the original's signature covers>, "signature":
     <128 hex>, "scheme": "sha1" | "legacy"}}``, so anyone can still check the original
     signature (``original_messages.signature_scheme(feed_id, json.loads(body), signature)``).

   Messages go in in batches of :data:`BATCH` (each batch one transaction, its last message
   signed), reading the source again page by page: memory stays bounded for any length.
4. **Remember.** The new feed's ID is recorded as the mutable
   ``{"type": "kachery-node/imported-original-feed", "feed_id": <original ID>}``; running the
   command again imports only the feeds not imported yet.

Format details: spec/legacy.md §4.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import KacheryError
from .original_messages import ChainVerifier, OriginalMessage, OriginalMessageError
from .storage_dir import FEEDS_DB, ORIGINAL_FEEDS_DB, original_feeds_db, read_only

if TYPE_CHECKING:
    from ..storage.node_storage import Storage

BATCH = 1000
IMPORT_RECORD_TYPE = "kachery-node/imported-original-feed"
_NAME_KEYS = {"feedIdForName": "feedName", "feed_id_for_name": "feed_name"}  # daemon's, client's
# Room the origin metadata takes besides payload and signed text: keys, hex, scheme, body fields.
_META_OVERHEAD = 512


class LegacyImportError(KacheryError):
    """The original feeds cannot be imported (nothing was imported); the message says why."""


@dataclass
class ImportedSubfeed:
    subfeed_hash: str
    messages: int


@dataclass
class ImportedFeed:
    """What happened to one original feed."""

    original_feed_id: str
    feed_id: str
    name: str | None
    owned_here: bool
    already_imported: bool = False
    subfeeds: list[ImportedSubfeed] = field(default_factory=list)

    @property
    def uri(self) -> str:
        return f"feed://{self.feed_id}"

    def to_json(self) -> dict[str, Any]:
        return {"original_feed_id": self.original_feed_id, "feed_id": self.feed_id, "uri": self.uri,
                "name": self.name, "owned_here": self.owned_here,
                "already_imported": self.already_imported,
                "subfeeds": [{"subfeed_hash": s.subfeed_hash, "messages": s.messages,
                              "uri": f"{self.uri}/~{s.subfeed_hash}"} for s in self.subfeeds]}


def default_source(storage_dir: Path) -> Path:
    """The original feeds.db of a storage: ``feeds.db`` while it is the original's, else the
    ``feeds.original.db`` a previous import moved it to."""
    for name in (FEEDS_DB, ORIGINAL_FEEDS_DB):
        if original_feeds_db(Path(storage_dir) / name) is not None:
            return Path(storage_dir) / name
    raise LegacyImportError(
        f"{storage_dir} has no feed database of the original kachery ({FEEDS_DB} or "
        f"{ORIGINAL_FEEDS_DB}); name one with --from PATH")


class _Source:
    """An original feeds.db, read-only."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if original_feeds_db(self.path) is None:
            raise LegacyImportError(f"{self.path} is not a feed database of the original kachery")
        self._conn = read_only(self.path)

    def close(self) -> None:
        self._conn.close()

    def feeds(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT feedId FROM feeds ORDER BY feedId")]

    def subfeeds(self, feed_id: str) -> list[str]:
        return [r[0] for r in self._conn.execute(
            "SELECT subfeedHash FROM subfeeds WHERE feedId = ? ORDER BY subfeedHash", (feed_id,))]

    def messages(self, feed_id: str, subfeed_hash: str) -> Iterator[OriginalMessage]:
        """The subfeed's messages, verified one by one (OriginalMessageError at the first bad one)."""
        verifier = ChainVerifier(feed_id)
        cursor = self._conn.execute(
            "SELECT position, message FROM subfeedMessages WHERE feedId = ? AND subfeedHash = ? "
            "ORDER BY position", (feed_id, subfeed_hash))
        for position, text in cursor:
            if position != verifier.count:
                raise OriginalMessageError(
                    f"message {verifier.count} is missing (the next stored is {position})",
                    position=verifier.count)
            try:
                signed = json.loads(text)
            except (TypeError, ValueError, RecursionError) as exc:
                raise OriginalMessageError(f"message {position} is not JSON: {exc}",
                                           position=position) from None
            yield verifier.add(signed)


def _origin_metadata(m: OriginalMessage) -> dict[str, Any]:
    return {"original": {"body": m.body_text, "signature": m.signature, "scheme": m.scheme}}


def _original_names_and_keys(storage: Storage) -> tuple[dict[str, str], set[str]]:
    """Local names of original feeds, and the feeds whose key the original held here (both from
    the original's mutables, read where they are)."""
    names: dict[str, str] = {}
    owned: set[str] = set()
    mutables = storage.mutables
    if not mutables.original_table:
        return names, owned
    for key in mutables.keys():  # noqa: SIM118 (Mutables is not a dict)
        if not isinstance(key, dict):
            continue
        kind = key.get("type")
        if kind in _NAME_KEYS and isinstance(key.get(_NAME_KEYS[kind]), str):
            feed_id = mutables.get(key, None)
            if isinstance(feed_id, str):
                names.setdefault(feed_id.lower(), key[_NAME_KEYS[kind]])
        elif kind == "feedConfig" and isinstance(key.get("feedId"), str):
            owned.add(key["feedId"].lower())
    return names, owned


def import_original_feeds(storage: Storage, source: str | os.PathLike | None = None, *,
                          feed_ids: list[str] | None = None) -> list[ImportedFeed]:
    """Import an original feeds.db (default: the storage's own, see :func:`default_source`)
    into ``storage``'s feeds, as the module docstring says; return what was done per feed.
    Raises :class:`LegacyImportError` (or :class:`OriginalMessageError`) with nothing imported."""
    import kachery_feeds

    path = Path(source) if source is not None else default_source(storage.directory)
    src = _Source(path)
    try:
        wanted = src.feeds() if not feed_ids else [f.lower() for f in feed_ids]
        unknown = sorted(set(wanted) - set(src.feeds()))
        if unknown:
            raise LegacyImportError(f"{path} has no feed {unknown[0]}")
        names, owned = _original_names_and_keys(storage)
        plan = [(f, src.subfeeds(f)) for f in wanted]
        verified: dict[tuple[str, str], tuple[int, str | None]] = {}
        for feed_id, hashes in plan:  # 1. verify everything before writing anything
            for sh in hashes:
                count, last = 0, None
                for m in _checked(src, feed_id, sh):
                    _fits(m, feed_id, sh)
                    count, last = m.number + 1, m.signature
                verified[(feed_id, sh)] = (count, last)
        in_place = path.absolute() == (storage.directory / FEEDS_DB).absolute()
        if in_place:
            _move_aside(storage.directory)
            path = storage.directory / ORIGINAL_FEEDS_DB
            src.close()
            src = _Source(path)
        results = []
        for feed_id, hashes in plan:
            results.append(_import_feed(storage, src, feed_id, hashes, verified,
                                        names.get(feed_id), feed_id in owned, kachery_feeds))
        return results
    finally:
        src.close()


def _checked(src: _Source, feed_id: str, sh: str) -> Iterator[OriginalMessage]:
    try:
        yield from src.messages(feed_id, sh)
    except OriginalMessageError as exc:
        raise LegacyImportError(
            f"feed {feed_id}, subfeed {sh}: {exc}; nothing was imported (the original refused "
            "such a subfeed too). Import the other feeds with --feed ID.") from exc


def _fits(m: OriginalMessage, feed_id: str, sh: str) -> None:
    from kachery_feeds import MAX_MESSAGE_BYTES

    size = len(json.dumps(m.payload)) + len(m.body_text) + _META_OVERHEAD
    if size > MAX_MESSAGE_BYTES:
        raise LegacyImportError(
            f"feed {feed_id}, subfeed {sh}, message {m.number}: with its original signed text it "
            f"would take {size} bytes, over this format's {MAX_MESSAGE_BYTES}-byte limit; "
            "nothing was imported")


def _move_aside(storage_dir: Path) -> None:
    """Rename the original feeds.db to feeds.original.db (unchanged) so ours can take its place."""
    current, dest = storage_dir / FEEDS_DB, storage_dir / ORIGINAL_FEEDS_DB
    for suffix in ("-journal", "-wal"):
        if (storage_dir / (FEEDS_DB + suffix)).exists():
            raise LegacyImportError(
                f"{current}{suffix} exists: the original daemon may be running or have stopped "
                "mid-write; stop it (or let it finish) first. Nothing was imported.")
    if dest.exists():
        raise LegacyImportError(f"{dest} exists already; move it away first. Nothing was imported.")
    os.rename(current, dest)


def _import_feed(storage: Storage, src: _Source, original_id: str, hashes: list[str],
                 verified: dict[tuple[str, str], tuple[int, str | None]], name: str | None,
                 owned_here: bool, kachery_feeds: Any) -> ImportedFeed:
    record_key = {"type": IMPORT_RECORD_TYPE, "feed_id": original_id}
    done = storage.mutables.get(record_key, None)
    if isinstance(done, str):
        return ImportedFeed(original_id, done, name, owned_here, already_imported=True)
    store = storage.feeds
    free_name = name
    if name is not None:
        try:
            store.load_feed(name)
            free_name = None  # taken here: the new feed gets no name
        except (kachery_feeds.UnknownFeedError, kachery_feeds.InvalidUriError):
            pass
    feed = store.create_feed(free_name)
    result = ImportedFeed(original_id, feed.feed_id, free_name, owned_here)
    for sh in hashes:
        count, last = verified[(original_id, sh)]
        sf = feed.load_subfeed("~" + sh)
        sf.append_message({"imported_from": {
            "format": "kachery-daemon feeds.db", "feed_id": original_id, "subfeed_hash": sh,
            "message_count": count, "last_signature": last, "owned_here": owned_here,
            "source": str(src.path)}})
        batch: list[OriginalMessage] = []
        for m in _checked(src, original_id, sh):  # verified again while read: bounded memory
            if m.number >= count:
                break  # appended to the source after it was verified: not part of this import
            batch.append(m)
            if len(batch) == BATCH or m.number == count - 1:
                sf.append_messages([x.payload for x in batch], [_origin_metadata(x) for x in batch])
                batch = []
        result.subfeeds.append(ImportedSubfeed(sh, count))
    storage.mutables.set(record_key, feed.feed_id)
    return result

"""The user-facing faces of a store: :class:`Feed` and :class:`Subfeed`.

They hold no state of their own besides a reading cursor; every call goes to the store, so
several objects (or processes) for one subfeed always agree.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from .errors import VerificationError
from .messages import to_wire
from .schema import SUBFEED_COUNT
from .uris import subfeed_hash, subfeed_name_json, subfeed_uri

if TYPE_CHECKING:
    from .store import Store

#: Messages read per database query while following (bounds memory on huge subfeeds).
PAGE_SIZE = 1000
#: With a poller (:meth:`Subfeed.set_poller`), follow() polls this long after the last news,
#: then twice as long each time nothing came, up to POLL_MAX_SECONDS.
POLL_FIRST_SECONDS = 1.0
POLL_MAX_SECONDS = 30.0

#: A function that fetches a subfeed's new messages from elsewhere into the store (verified,
#: with add_signed_messages) and returns how many it added.
Poller = Callable[["Subfeed"], int]


class MessageRecord(NamedTuple):
    """A stored message as a reader sees it."""

    number: int
    timestamp_ms: int
    payload: Any
    metadata: dict | None


def _record(n: int, body: bytes) -> MessageRecord:
    d = orjson.loads(body)
    return MessageRecord(n, d["ts"], d["payload"], d.get("meta"))


def _payload(body: bytes) -> Any:
    return orjson.loads(body)["payload"]


def _signed(body: bytes, sig: bytes | None) -> dict[str, Any]:
    """A message as the original's ``signed=True`` gave it: ``{"body", "signature"}``, here with
    this format's body (spec/feeds.md §2) and the signature as hex, or None inside a batch (the
    batch's last message signs it). The exact signed bytes are :meth:`Subfeed.get_signed_messages`."""
    return {"body": orjson.loads(body), "signature": sig.hex() if sig else None}


def _decoder(signed: bool):
    return (lambda _n, body, sig: _signed(body, sig)) if signed else (lambda _n, body, _sig: _payload(body))


class Feed:
    """A feed: an Ed25519 identity that owns any number of subfeeds."""

    def __init__(self, store: Store, feed_id: str) -> None:
        self._store = store
        self.feed_id = feed_id

    @property
    def uri(self) -> str:
        return f"feed://{self.feed_id}"

    @property
    def is_writeable(self) -> bool:
        """True if this store holds the feed's private key."""
        return self._store.has_private_key(self.feed_id)

    def load_subfeed(self, name: str | dict | list, *, position: int = 0) -> Subfeed:
        """The subfeed named ``name`` (a string, a JSON object or list, or ``~<40-hex hash>``),
        with its reading cursor at ``position`` (the original's keyword)."""
        sf = Subfeed(self._store, self.feed_id, name)
        sf.set_position(position)
        return sf

    def get_subfeed_hashes(self) -> list[str]:
        """Hashes of the subfeeds of this feed that have messages in this store."""
        return [
            r["subfeed_hash"]
            for r in self._store._query(
                f"SELECT subfeed_hash FROM subfeeds WHERE feed_id = ? AND {SUBFEED_COUNT} > 0 "
                "ORDER BY id",
                (self.feed_id,))
        ]

    def list_subfeeds(self) -> list[dict[str, Any]]:
        """The subfeeds of this feed that have messages in this store, in the order they began:
        ``subfeed_hash``, ``name`` (the subfeed's name when this store knows it, else None: a
        replica learns only hashes from the network) and ``num_messages``."""
        rows = self._store._query(
            f"SELECT * FROM (SELECT subfeed_hash, name, {SUBFEED_COUNT} AS count FROM subfeeds "
            "WHERE feed_id = ? ORDER BY id) WHERE count > 0",
            (self.feed_id,))
        return [{"subfeed_hash": r["subfeed_hash"],
                 "name": orjson.loads(r["name"]) if r["name"] else None,
                 "num_messages": r["count"]} for r in rows]

    def delete(self) -> None:
        """Delete this feed and its messages from the store (and its key, if held)."""
        self._store.delete_feed(self.feed_id)

    def __repr__(self) -> str:
        return f"<Feed {self.uri}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Feed) and other.feed_id == self.feed_id

    def __hash__(self) -> int:
        return hash(self.feed_id)


class Subfeed:
    """An append-only, signed log inside a feed.

    Reading: :meth:`get_messages`, :meth:`get_records` (whole ranges in memory),
    :meth:`iter_messages` (streaming, bounded memory), the original's cursor API
    (:meth:`set_position`, :meth:`get_next_messages`) and live following (:meth:`follow`,
    :meth:`afollow`). Writing (only where the store holds the feed's key):
    :meth:`append_message`, :meth:`append_messages`. Replication:
    :meth:`get_signed_messages` and :meth:`add_signed_messages`.
    """

    def __init__(self, store: Store, feed_id: str, name: str | dict | list) -> None:
        self._store = store
        self.feed_id = feed_id
        self.subfeed_hash = subfeed_hash(name)
        self.subfeed_name = name
        self._name_json = (
            None
            if isinstance(name, str) and name.startswith("~")
            else subfeed_name_json(name)
        )
        self._position = 0
        self._poller: Poller | None = None

    def set_poller(self, poller: Poller | None) -> None:
        """Have :meth:`follow` and :meth:`afollow` call ``poller(self)`` while they wait, for a
        subfeed whose new messages nobody pushes into this store (kachery_node sets one when no
        daemon runs: it reads the channels' buckets). None: wait for the store only."""
        self._poller = poller

    # ------------------------------------------------------------------ identity
    @property
    def uri(self) -> str:
        return subfeed_uri(self.feed_id, self.subfeed_name)

    @property
    def is_writeable(self) -> bool:
        return self._store.has_private_key(self.feed_id)

    def __repr__(self) -> str:
        return f"<Subfeed {self.uri}>"

    # ------------------------------------------------------------------ writing
    def append_message(self, payload: Any, metadata: dict | None = None) -> int:
        """Sign and store one message; returns its number once it is committed."""
        if metadata is None:
            return self._store._append_one(self.feed_id, self.subfeed_hash, self._name_json, payload)
        return self._store._append(self.feed_id, self.subfeed_hash, self._name_json, [payload], metadata)

    def append_messages(self, payloads: Iterable[Any],
                        metadata: dict | list[dict | None] | None = None) -> int:
        """Store several messages in one transaction (signing the last); returns the last number.
        ``metadata``: one object for every message, or a list with one (or None) per message."""
        return self._store._append(
            self.feed_id, self.subfeed_hash, self._name_json, list(payloads), metadata
        )

    # ------------------------------------------------------------------ reading
    def get_num_local_messages(self) -> int:
        return self._store._count(self.feed_id, self.subfeed_hash)

    def get_messages(self, start: int = 0, end: int | None = None) -> list[Any]:
        """Payloads of messages ``start`` ≤ n < ``end`` (to the last one if ``end`` is None).

        Loads the whole range into one list: about 1 KB of memory for a message with a 256-byte
        payload (a million of them take over a gigabyte). For long subfeeds use
        :meth:`iter_messages`, which holds one page at a time."""
        rows = self._store._rows(self.feed_id, self.subfeed_hash, start, end)
        return [_payload(body) for _n, body, _s in rows]

    def get_records(self, start: int = 0, end: int | None = None) -> list[MessageRecord]:
        """Like :meth:`get_messages` with number, timestamp and metadata (and, like it, loads
        the whole range: see :meth:`iter_messages` with ``records=True``)."""
        rows = self._store._rows(self.feed_id, self.subfeed_hash, start, end)
        return [_record(n, body) for n, body, _s in rows]

    def iter_messages(self, start: int = 0, end: int | None = None, *,
                      records: bool = False) -> Iterator[Any]:
        """Yield the payloads of messages ``start`` ≤ n < ``end`` in order, reading
        :data:`PAGE_SIZE` messages at a time: memory stays bounded however long the subfeed.

        ``end`` None: up to the last message stored when the iteration gets there (messages
        appended meanwhile are included; it does not wait for more: :meth:`follow` does).
        ``records=True`` yields :class:`MessageRecord` instead of bare payloads. Each page is
        read in its own transaction, so the store is not held between pages."""
        if start < 0 or (end is not None and end < start):
            raise ValueError(f"invalid range [{start}, {end})")
        decode = _record if records else (lambda _n, body: _payload(body))
        position = start
        while end is None or position < end:
            stop = position + PAGE_SIZE if end is None else min(end, position + PAGE_SIZE)
            rows = self._store._rows(self.feed_id, self.subfeed_hash, position, stop)
            if not rows:
                return
            for n, body, _sig in rows:
                yield decode(n, body)
            position = rows[-1][0] + 1
            del rows

    # The original kachery's cursor API.
    @property
    def position(self) -> int:
        return self._position

    def set_position(self, position: int) -> None:
        if position < 0:
            raise ValueError("position must be >= 0")
        self._position = position

    def get_next_messages(self, wait_msec: float = 0, max_num_messages: int = 0, *,
                          signed: bool = False, advance_position: bool = True) -> list[Any]:
        """Payloads after the cursor, waiting up to ``wait_msec`` for at least one; advances it
        (unless ``advance_position=False``). ``signed=True`` gives ``{"body", "signature"}``
        objects instead of payloads, as the original did (with this format's body)."""
        end = None if max_num_messages <= 0 else self._position + max_num_messages
        decode = _decoder(signed)
        deadline = time.monotonic() + wait_msec / 1000
        with self._store.watcher() as watcher:
            while True:
                rows = self._store._rows(self.feed_id, self.subfeed_hash, self._position, end)
                remaining = deadline - time.monotonic()
                if rows or remaining <= 0:
                    if advance_position:
                        self._position += len(rows)
                    return [decode(*row) for row in rows]
                watcher.wait(remaining)

    def get_next_message(self, wait_msec: float = 0, *, signed: bool = False,
                         advance_position: bool = True) -> Any | None:
        """The next payload, or None if none arrives within ``wait_msec``; advances the cursor."""
        msgs = self.get_next_messages(wait_msec=wait_msec, max_num_messages=1, signed=signed,
                                      advance_position=advance_position)
        return msgs[0] if msgs else None

    def message_stream(self, *, signed: bool = False, timeout: float | None = None) -> Iterator[Any]:
        """The original's endless iterator: payloads from the cursor on, then live, advancing
        the cursor as it yields. Ends after ``timeout`` seconds without a new message (never, if
        None). ``signed=True`` as in :meth:`get_next_messages`."""
        decode = _decoder(signed)
        idle_since = time.monotonic()
        with self._store.watcher() as watcher:
            while True:
                start = self._position
                rows = self._store._rows(self.feed_id, self.subfeed_hash, start, start + PAGE_SIZE)
                for row in rows:
                    self._position = row[0] + 1
                    yield decode(*row)
                if rows:
                    idle_since = time.monotonic()
                    continue
                if timeout is None:
                    watcher.wait(None)
                    continue
                remaining = timeout - (time.monotonic() - idle_since)
                if remaining <= 0:
                    return
                watcher.wait(remaining)

    def print_messages(self, *, signed: bool = False, timeout: float | None = None) -> None:
        """Print each message from the cursor on, then live, as the original did (forever,
        unless ``timeout`` seconds pass without a new one)."""
        for msg in self.message_stream(signed=signed, timeout=timeout):
            print(msg)

    def print_signed_messages(self, *, timeout: float | None = None) -> None:
        """:meth:`print_messages` with ``signed=True``."""
        self.print_messages(signed=True, timeout=timeout)

    def follow(
        self, start: int = 0, timeout: float | None = None, *, records: bool = False
    ) -> Iterator[Any]:
        """Yield payloads from ``start`` on, then live as any process appends or imports them.

        Ends when no message arrives for ``timeout`` seconds (never, if None). With
        ``records=True`` yields :class:`MessageRecord` instead of bare payloads.

        New messages of another node's subfeed arrive in this store when a daemon follows it.
        When none runs, kachery_node's ``load_subfeed`` gives the subfeed a poller
        (:meth:`set_poller`) and this keeps polling the channels' buckets for the subfeed's
        head while it waits: :data:`POLL_FIRST_SECONDS` after the last news, then backing off
        (doubling) to at most :data:`POLL_MAX_SECONDS`, so a reader without a daemon sees a new
        message within that time of its owner publishing it.
        """
        cursor = _FollowCursor(self, start, timeout, records)
        with self._store.watcher() as watcher:
            while True:
                batch = cursor.next_page()
                if batch:
                    yield from batch
                elif cursor.idle_expired():
                    return
                elif cursor.poll_due():
                    cursor.polled(self._poller(self))  # type: ignore[misc]
                else:
                    watcher.wait(cursor.wait_limit())

    async def afollow(
        self, start: int = 0, timeout: float | None = None, *, records: bool = False
    ) -> AsyncIterator[Any]:
        """Async :meth:`follow` for trio or asyncio programs (via anyio); a poller runs in a
        worker thread, so the event loop never blocks on it."""
        import anyio.to_thread

        cursor = _FollowCursor(self, start, timeout, records)
        with self._store.watcher() as watcher:
            while True:
                batch = cursor.next_page()
                if batch:
                    for item in batch:
                        yield item
                elif cursor.idle_expired():
                    return
                elif cursor.poll_due():
                    cursor.polled(await anyio.to_thread.run_sync(self._poller, self))  # type: ignore[arg-type]
                else:
                    await watcher.wait_async(cursor.wait_limit())

    # ------------------------------------------------------------------ replication
    def get_signed_messages(self, start: int = 0, end: int | None = None) -> list[bytes]:
        """Wire-form messages ``start`` ≤ n < ``end``, extended to end at a signed message."""
        return [
            to_wire(body, sig)
            for _n, body, sig in self._store._signed_rows(self.feed_id, self.subfeed_hash, start, end)
        ]

    def add_signed_messages(self, messages: Iterable[bytes]) -> int:
        """Verify a range of wire-form messages and store the new ones; all or nothing.

        Returns how many were new. Raises :class:`~kachery_feeds.VerificationError` (or its
        subclass :class:`~kachery_feeds.ForkError`) for bad data and
        :class:`~kachery_feeds.MissingMessagesError` if the range starts past the local end.
        """
        if isinstance(messages, bytes | bytearray | str) or not isinstance(messages, Iterable):
            raise VerificationError(
                "add_signed_messages takes a list of wire-form messages (bytes); split a segment "
                "with kachery_feeds.decode_segment")
        return self._store._import(self.feed_id, self.subfeed_hash, self._name_json, list(messages))

    def get_fork_proofs(self) -> list[bytes]:
        """Fork proofs recorded for this subfeed."""
        return [
            r["proof"]
            for r in self._store._query(
                "SELECT proof FROM fork_proofs WHERE feed_id = ? AND subfeed_hash = ? ORDER BY id",
                (self.feed_id, self.subfeed_hash))
        ]


class _FollowCursor:
    """The state of one follow: where it is, and how long it has waited without news."""

    def __init__(self, subfeed: Subfeed, start: int, timeout: float | None, records: bool) -> None:
        self._subfeed = subfeed
        self._position = start
        self._timeout = timeout
        self._decode = _record if records else (lambda _n, body: _payload(body))
        self._idle_since = time.monotonic()
        self._poll_interval = POLL_FIRST_SECONDS
        self._poll_at = time.monotonic() + POLL_FIRST_SECONDS

    def next_page(self) -> list[Any]:
        """Up to PAGE_SIZE decoded messages after the position (bounded memory on huge feeds)."""
        sf = self._subfeed
        rows = sf._store._rows(sf.feed_id, sf.subfeed_hash, self._position, self._position + PAGE_SIZE)
        if rows:
            self._position = rows[-1][0] + 1
            self._idle_since = time.monotonic()
            self._poll_interval = POLL_FIRST_SECONDS
            self._poll_at = self._idle_since + POLL_FIRST_SECONDS
        return [self._decode(n, body) for n, body, _sig in rows]

    def poll_due(self) -> bool:
        return self._subfeed._poller is not None and time.monotonic() >= self._poll_at

    def polled(self, added: int) -> None:
        """After a poll: soon again if it brought news, else back off."""
        if not added:
            self._poll_interval = min(self._poll_interval * 2, POLL_MAX_SECONDS)
        self._poll_at = time.monotonic() + self._poll_interval

    def wait_limit(self) -> float | None:
        limits = []
        if self._timeout is not None:
            limits.append(self._timeout - (time.monotonic() - self._idle_since))
        if self._subfeed._poller is not None:
            limits.append(self._poll_at - time.monotonic())
        return min(limits) if limits else None

    def idle_expired(self) -> bool:
        return self._timeout is not None and time.monotonic() - self._idle_since >= self._timeout

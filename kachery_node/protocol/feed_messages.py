"""The feed flow's messages and actions, as data (spec/node-protocol.md §Feeds).

Pure logic, no I/O. The envelope (time, nonce, and a signature bound to channel and band) is
added by :func:`kachery_node.protocol.node_messages.seal`; these are the bodies (and the one
attachment):

* ``subscribeToSubfeed`` on band ``request-feeds`` (published by a reader)::

      {"type": "subscribeToSubfeed", "feed_id": <64 hex>, "subfeed_hash": <40 hex>,
       "position": int >= 0, "bucket_rejected"?: true, "renewal"?: true,
       "unsigned_pushes"?: true}

* ``subscribeToSubfeeds`` on band ``request-feeds`` (a reader's subscriptions to several
  subfeeds of one feed, in one message: renewals cost one message per feed and
  :data:`SUBSCRIBE_MANY_MAX` subfeeds, not one per subfeed)::

      {"type": "subscribeToSubfeeds", "feed_id": <64 hex>,
       "subfeeds": [[<40 hex subfeed hash>, <position: int >= 0>], ...],   (1 to 500 pairs)
       "renewal"?: true,                                                  (of every pair)
       "unsigned_pushes"?: true}

  ``renewal: true``: a periodic renewal of a subscription the reader kept without a gap since
  it last subscribed (no catch-up from the bucket in between, no push it had to drop); a
  provider may skip re-pushing what it pushed in the last moments (it is in flight). Absent
  (older readers, and every first subscription or one after a catch-up): pushed as always.

  ``unsigned_pushes: true``: the reader takes ``newSubfeedMessages`` without an envelope
  signature (node_messages.seal_unsigned_push); this node's readers always say so.

* ``newSubfeedMessages`` on band ``provide-feeds`` (published by a provider)::

      {"type": "newSubfeedMessages", "feed_id": ..., "subfeed_hash": ...}
      attachment: the wire lines in segment form (each followed by LF), as they are

* ``subfeedUploaded`` on band ``provide-feeds``::

      {"type": "subfeedUploaded", "feed_id": ..., "subfeed_hash": ..., "count": int >= 0}

* ``subfeedsHeld`` on band ``provide-feeds`` (published by a feed's owner in answer to
  subscriptions: it holds ``count`` messages of each subfeed, and the bucket holds them all)::

      {"type": "subfeedsHeld", "feed_id": ...,
       "subfeeds": [[<40 hex subfeed hash>, <count: int >= 0>], ...]}      (1 to 500 pairs)

* ``providerConnected`` on band ``provide-feeds`` (published by a provider each time its
  channel connects: readers whose subscriptions it could not hear while it was away publish
  them again now, instead of at their next renewal)::

      {"type": "providerConnected"}

Rules: :func:`parse` is the only place a body (and attachment) is read and each message's
``to_body`` and ``attachment`` the only place one is written. How wire lines travel inside
``newSubfeedMessages`` is decided by :func:`_lines_to_wire` / :func:`_lines_from_wire` alone
(node messages v2: the envelope's attachment in segment form, never JSON strings inside the
JSON body). Fields the spec does not name (the envelope's ``time_ms``, ``nonce``, or a later
version's additions) are ignored.

The second half of the module holds the *actions* the follower and provider cores
(:mod:`.feed_follower`, :mod:`.feed_provider`) return for their driver to carry out.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from kachery_feeds import (
    InvalidUriError,
    VerificationError,
    decode_segment,
    encode_segment,
    normalize_feed_id,
)
from kachery_feeds import subfeed_hash as _subfeed_hash

from ..errors import KacheryError, short_repr
from .bucket_layout import subfeed_head_path, subfeed_segment_path

REQUEST_BAND = "request-feeds"
PROVIDE_BAND = "provide-feeds"
SUBSCRIBE = "subscribeToSubfeed"
SUBSCRIBE_MANY = "subscribeToSubfeeds"
#: Subfeeds in one ``subscribeToSubfeeds``: ~55 bytes each, so ~28 KB, well under the relay's
#: 64 KiB message limit.
SUBSCRIBE_MANY_MAX = 500
NEW_MESSAGES = "newSubfeedMessages"
UPLOADED = "subfeedUploaded"
HELD = "subfeedsHeld"
PROVIDER_CONNECTED = "providerConnected"
MAX_SAFE_INTEGER = 2**53 - 1


class MalformedFeedMessage(KacheryError, ValueError):
    """A peer's feed message does not follow spec/node-protocol.md §Feeds (the peer's fault)."""


class FeedProtocolMisuse(KacheryError, RuntimeError):
    """A feed core was driven wrongly: an event its state does not expect (our fault)."""


@dataclass(frozen=True)
class SubfeedOnChannel:
    """One subfeed as exchanged on one channel: the unit of every follower and subscription."""

    channel: str
    feed_id: str
    subfeed_hash: str

    @property
    def subfeed(self) -> tuple[str, str]:
        """(feed ID, subfeed hash): the store's key, whatever the channel."""
        return self.feed_id, self.subfeed_hash

    @property
    def uri(self) -> str:
        return f"feed://{self.feed_id}/~{self.subfeed_hash}"

    @property
    def head_path(self) -> str:
        return subfeed_head_path(self.channel, self.feed_id, self.subfeed_hash)

    def segment_path(self, index: int) -> str:
        return subfeed_segment_path(self.channel, self.feed_id, self.subfeed_hash, index)


# ----------------------------------------------------------------------------- messages
@dataclass(frozen=True)
class SubscribeToSubfeed:
    """A reader follows ``feed_id``/``subfeed_hash`` and holds its first ``position`` messages;
    ``bucket_rejected``: what the bucket holds beyond that failed verification; ``renewal``: a
    periodic renewal of a subscription kept without a gap (see the module docstring)."""

    feed_id: str
    subfeed_hash: str
    position: int
    bucket_rejected: bool = False
    renewal: bool = False
    #: The reader takes pushes without an envelope signature (a reader of this version always
    #: does; one that did not say so, e.g. an older node, gets them signed).
    unsigned_pushes: bool = True
    band = REQUEST_BAND

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": SUBSCRIBE, "feed_id": self.feed_id,
                                "subfeed_hash": self.subfeed_hash, "position": self.position}
        if self.bucket_rejected:
            body["bucket_rejected"] = True
        if self.renewal:
            body["renewal"] = True
        if self.unsigned_pushes:
            body["unsigned_pushes"] = True
        return body

    def attachment(self) -> None:
        """None: a subscription has no attachment."""
        return None


@dataclass(frozen=True)
class SubscribeToSubfeeds:
    """A reader follows several subfeeds of ``feed_id``: ``subfeeds`` holds (subfeed hash,
    position) pairs, each meaning what the :class:`SubscribeToSubfeed` it stands for means
    (without ``bucket_rejected``, which travels alone); ``renewal`` is said of every pair."""

    feed_id: str
    subfeeds: tuple[tuple[str, int], ...]
    renewal: bool = False
    unsigned_pushes: bool = True  # as in SubscribeToSubfeed
    band = REQUEST_BAND

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": SUBSCRIBE_MANY, "feed_id": self.feed_id,
                                "subfeeds": [[h, position] for h, position in self.subfeeds]}
        if self.renewal:
            body["renewal"] = True  # beside the pairs: an older provider ignores it
        if self.unsigned_pushes:
            body["unsigned_pushes"] = True
        return body

    def attachment(self) -> None:
        """None: a subscription has no attachment."""
        return None

    def each(self) -> list[SubscribeToSubfeed]:
        """The single subscriptions this one stands for."""
        return [SubscribeToSubfeed(self.feed_id, h, position, renewal=self.renewal,
                                   unsigned_pushes=self.unsigned_pushes)
                for h, position in self.subfeeds]


def batch_subscriptions(messages: Iterable[SubscribeToSubfeed]
                        ) -> list[SubscribeToSubfeed | SubscribeToSubfeeds]:
    """The fewest messages that carry ``messages``: those of one feed together in
    ``subscribeToSubfeeds`` of at most :data:`SUBSCRIBE_MANY_MAX`, renewals apart from the
    others (``renewal`` is said per message); one with ``bucket_rejected``, or alone in its feed
    and kind, as it is (the single form, which every provider understands). A subfeed listed
    twice keeps its last position, and is a renewal only if every listing of it was one."""
    latest: dict[tuple[str, str], SubscribeToSubfeed] = {}
    out: list[SubscribeToSubfeed | SubscribeToSubfeeds] = []
    for message in messages:
        if message.bucket_rejected:
            out.append(message)
            continue
        key = (message.feed_id, message.subfeed_hash)
        earlier = latest.get(key)  # (replaced where it stands: the first listing's order)
        if earlier is not None and not earlier.renewal and message.renewal:
            message = dataclasses.replace(message, renewal=False)
        latest[key] = message
    groups: dict[tuple[str, bool, bool], list[tuple[str, int]]] = {}
    for message in latest.values():
        groups.setdefault((message.feed_id, message.renewal, message.unsigned_pushes), []).append(
            (message.subfeed_hash, message.position))
    for (feed_id, renewal, unsigned_pushes), pairs in groups.items():
        if len(pairs) == 1:
            out.append(SubscribeToSubfeed(feed_id, pairs[0][0], pairs[0][1], renewal=renewal,
                                          unsigned_pushes=unsigned_pushes))
            continue
        for start in range(0, len(pairs), SUBSCRIBE_MANY_MAX):
            out.append(SubscribeToSubfeeds(feed_id, tuple(pairs[start:start + SUBSCRIBE_MANY_MAX]),
                                           renewal=renewal, unsigned_pushes=unsigned_pushes))
    return out


@dataclass(frozen=True)
class NewSubfeedMessages:
    """Signed messages pushed inline: contiguous wire lines ending at a signed message."""

    feed_id: str
    subfeed_hash: str
    lines: tuple[bytes, ...]
    band = PROVIDE_BAND

    def to_body(self) -> dict[str, Any]:
        return {"type": NEW_MESSAGES, "feed_id": self.feed_id, "subfeed_hash": self.subfeed_hash}

    def attachment(self) -> bytes:
        """The wire lines, carried as the envelope's attachment."""
        return _lines_to_wire(self.lines)

    def size(self) -> int:
        """Bytes of the body and attachment as sealed (before the envelope's header, time and
        nonce)."""
        return len(orjson.dumps(self.to_body())) + 1 + len(self.attachment())


@dataclass(frozen=True)
class SubfeedUploaded:
    """The bucket holds the subfeed's first ``count`` messages."""

    feed_id: str
    subfeed_hash: str
    count: int
    band = PROVIDE_BAND

    def to_body(self) -> dict[str, Any]:
        return {"type": UPLOADED, "feed_id": self.feed_id, "subfeed_hash": self.subfeed_hash,
                "count": self.count}

    def attachment(self) -> None:
        """None: the bucket holds the lines."""
        return None


@dataclass(frozen=True)
class SubfeedsHeld:
    """The owner of ``feed_id`` holds ``count`` messages of each subfeed of ``subfeeds`` ((subfeed
    hash, count) pairs), and the bucket holds all of them: a reader holding as many has every
    message there is, without reading the bucket's head."""

    feed_id: str
    subfeeds: tuple[tuple[str, int], ...]
    band = PROVIDE_BAND

    def to_body(self) -> dict[str, Any]:
        return {"type": HELD, "feed_id": self.feed_id,
                "subfeeds": [[h, count] for h, count in self.subfeeds]}

    def attachment(self) -> None:
        """None: counts only."""
        return None


@dataclass(frozen=True)
class ProviderConnected:
    """The sender, a provider, has just connected to the channel: subscriptions published while
    it was away never reached it."""

    band = PROVIDE_BAND

    def to_body(self) -> dict[str, Any]:
        return {"type": PROVIDER_CONNECTED}

    def attachment(self) -> None:
        """None: the envelope's sender is all it says."""
        return None


FeedMessage = (SubscribeToSubfeed | SubscribeToSubfeeds | NewSubfeedMessages | SubfeedUploaded
               | SubfeedsHeld | ProviderConnected)


def _lines_to_wire(lines: tuple[bytes, ...]) -> bytes:
    return encode_segment(list(lines))


def _lines_from_wire(attachment: bytes | None) -> tuple[bytes, ...]:
    try:
        lines = decode_segment(attachment or b"")
    except VerificationError as exc:
        raise MalformedFeedMessage(f"the attached wire lines are not in segment form: {exc}") from None
    if not lines:
        raise MalformedFeedMessage("newSubfeedMessages needs its wire lines attached")
    return tuple(lines)


def _count(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if type(value) is not int or not 0 <= value <= MAX_SAFE_INTEGER:
        raise MalformedFeedMessage(f"{name!r} must be an integer in [0, 2^53-1], got {short_repr(value)}")
    return value


def _names(body: dict[str, Any]) -> tuple[str, str]:
    feed_id, subfeed_hash = body.get("feed_id"), body.get("subfeed_hash")
    try:
        feed_id = normalize_feed_id(feed_id)
        if not isinstance(subfeed_hash, str):
            raise InvalidUriError("missing subfeed_hash")
        return feed_id, _subfeed_hash("~" + subfeed_hash)
    except InvalidUriError as exc:
        raise MalformedFeedMessage(str(exc)) from None


def _subfeed_pairs(body: dict[str, Any], second: str) -> tuple[str, tuple[tuple[str, int], ...]]:
    """The feed ID and the 1 to 500 [subfeed_hash, ``second``] pairs of a batched message."""
    try:
        feed_id = normalize_feed_id(body.get("feed_id"))
    except InvalidUriError as exc:
        raise MalformedFeedMessage(str(exc)) from None
    pairs = body.get("subfeeds")
    if not isinstance(pairs, list) or not 1 <= len(pairs) <= SUBSCRIBE_MANY_MAX:
        raise MalformedFeedMessage(f"'subfeeds' must be a list of 1 to {SUBSCRIBE_MANY_MAX} "
                                   f"[subfeed_hash, {second}] pairs")
    subfeeds = []
    for pair in pairs:
        if not isinstance(pair, list) or len(pair) != 2:
            raise MalformedFeedMessage(f"each of 'subfeeds' must be a [subfeed_hash, {second}] pair, "
                                       f"not {short_repr(pair)}")
        _feed, subfeed_hash = _names({"feed_id": feed_id, "subfeed_hash": pair[0]})
        subfeeds.append((subfeed_hash, _count({second: pair[1]}, second)))
    return feed_id, tuple(subfeeds)


def _subscribe_many(body: dict[str, Any]) -> SubscribeToSubfeeds:
    feed_id, subfeeds = _subfeed_pairs(body, "position")
    return SubscribeToSubfeeds(feed_id, subfeeds, renewal=_flag(body, "renewal"),
                               unsigned_pushes=_flag(body, "unsigned_pushes"))


def _flag(body: dict[str, Any], name: str) -> bool:
    """An optional boolean field (absent: false)."""
    value = body.get(name, False)
    if type(value) is not bool:
        raise MalformedFeedMessage(f"{name!r} must be true or false")
    return value


_TYPES_BY_BAND = {REQUEST_BAND: (SUBSCRIBE, SUBSCRIBE_MANY),
                  PROVIDE_BAND: (NEW_MESSAGES, UPLOADED, HELD, PROVIDER_CONNECTED)}


def parse(band: str, body: dict[str, Any], attachment: bytes | None = None) -> FeedMessage:
    """The feed message ``body`` (with the envelope's ``attachment``) heard on ``band``; raises
    :class:`MalformedFeedMessage` if it is not one of the types published there, or a field is
    missing or ill-typed."""
    kind = body.get("type")
    if kind not in _TYPES_BY_BAND.get(band, ()):
        raise MalformedFeedMessage(f"{short_repr(kind)} is not a feed message of band {short_repr(band)}")
    if kind == SUBSCRIBE_MANY:
        return _subscribe_many(body)
    if kind == HELD:
        return SubfeedsHeld(*_subfeed_pairs(body, "count"))
    if kind == PROVIDER_CONNECTED:
        return ProviderConnected()
    feed_id, subfeed_hash = _names(body)
    if kind == SUBSCRIBE:
        return SubscribeToSubfeed(feed_id, subfeed_hash, _count(body, "position"),
                                  _flag(body, "bucket_rejected"), _flag(body, "renewal"),
                                  _flag(body, "unsigned_pushes"))
    if kind == NEW_MESSAGES:
        return NewSubfeedMessages(feed_id, subfeed_hash, _lines_from_wire(attachment))
    return SubfeedUploaded(feed_id, subfeed_hash, _count(body, "count"))


# ----------------------------------------------------------------------------- actions
class Severity(enum.IntEnum):
    """How loudly a driver logs a :class:`Report` (the numbers are the logging module's levels)."""

    INFO = 20
    WARNING = 30
    ERROR = 40


@dataclass(frozen=True)
class Report:
    """Something a person reading the daemon's log should know (nothing to do otherwise)."""

    severity: Severity
    text: str


@dataclass(frozen=True)
class Publish:
    """Seal ``message`` and publish it on its band of ``channel``."""

    channel: str
    message: FeedMessage

    @property
    def band(self) -> str:
        return self.message.band


# Follower (reader) actions
@dataclass(frozen=True)
class ReadHead:
    """Read the subfeed's head from the channel's bucket and answer ``on_head`` (raw bytes, or
    None if there is none), or ``on_catch_up_failed``. Give up at ``deadline`` (same clock as
    ``now``) and answer TIMED_OUT."""

    where: SubfeedOnChannel
    deadline: float


@dataclass(frozen=True)
class ImportFromBucket:
    """Download the full ``segments`` (indices) from the bucket, import them in order, then the
    ``tail`` lines, all verified; answer ``on_imported`` or ``on_catch_up_failed`` by
    ``deadline``."""

    where: SubfeedOnChannel
    segments: range
    tail: tuple[bytes, ...]
    deadline: float


@dataclass(frozen=True)
class GiveUp:
    """This conversation is over (the follower cannot follow on this channel)."""

    where: SubfeedOnChannel
    reason: str


# Provider actions
@dataclass(frozen=True)
class PushRange:
    """Push local messages ``[start, end)`` inline on the channel, cut by
    :class:`~.feed_provider.InlineSplitter`; an oversized piece goes to ``on_push_oversized``."""

    where: SubfeedOnChannel
    start: int
    end: int
    #: With an envelope signature: some reader of the subfeed on the channel did not say it
    #: takes pushes without one (``unsigned_pushes``) within the last subscription TTL.
    signed: bool = False


@dataclass(frozen=True)
class ReadBucketState:
    """Read the bucket's head object (None if there is none) and the local
    count and encoded head at that count; answer ``on_bucket_state`` or ``on_bucket_failed``.

    With ``known_count``, the bucket's head is known to be this provider's own at that count
    (it read or wrote it lately): read only the local count, and answer ``on_bucket_state``
    with no heads, or ``on_bucket_planned`` with :func:`~.feed_bucket.plan_from_count`."""

    where: SubfeedOnChannel
    known_count: int | None = None


@dataclass(frozen=True)
class UploadSegments:
    """Upload the full ``segments`` (indices; each built from the store when uploaded), then
    the head for the first ``head_count`` messages; answer ``on_bucket_done`` or
    ``on_bucket_failed``.

    ``provisional_heads``: while uploading, also upload a head after each window of segments,
    for the messages up to the last signed one uploaded so far (never below the first segment's
    end, so never below the head the bucket had), and tell the core with
    ``on_bucket_progress``: readers can import while the rest is built."""

    where: SubfeedOnChannel
    segments: range
    head_count: int
    provisional_heads: bool = False


@dataclass(frozen=True)
class SavedSubscription:
    """A live subscription as saved across restarts; ``expires`` is wall-clock seconds."""

    channel: str
    feed_id: str
    subfeed_hash: str
    expires: float

    @property
    def where(self) -> SubfeedOnChannel:
        return SubfeedOnChannel(self.channel, self.feed_id, self.subfeed_hash)


@dataclass(frozen=True)
class SaveSubscriptions:
    """Save ``rows`` (add them, or replace the saved row of the same subscription), and drop
    saved rows that expire at or before ``expired_before`` (wall-clock seconds). Only what
    changed is in ``rows``: a save costs what changed, not every subscription."""

    rows: tuple[SavedSubscription, ...]
    expired_before: float = 0.0


FollowerAction = Publish | ReadHead | ImportFromBucket | GiveUp | Report
ProviderAction = Publish | PushRange | ReadBucketState | UploadSegments | SaveSubscriptions | Report

"""The requester's side of one task request (spec/tasks.md §6-7), as a state machine without I/O.

Theory of operation
-------------------
A :class:`TaskRequester` is one request, from the caller's arguments to a verified result or
an error. The driver (``daemon/task_request_driver.py``) feeds it events, each with ``now``
(seconds on the driver's monotonic clock), and carries out the actions it returns
(:mod:`.task_actions`): publish, read the bucket, record the assignment, report a status line,
and finally :class:`~.task_actions.Done` or :class:`~.task_actions.GiveUp`. Between events the
driver waits until :meth:`TaskRequester.next_deadline`, then calls :meth:`TaskRequester.on_timer`.

0. *Type*: the caller's ``function_type``, else the type an earlier offer told
   (:class:`FunctionTypes`, shared by the requests of one node), else unknown until an offer.
1. *Pure calculation*: read ``task_results/<p(task_hash)>`` on each channel; the first result
   object that verifies (signature, task, provider holding provide-tasks) is the answer.
2. Publish ``requestTask`` on one channel after the other; the first ``offer`` within
   ``offer`` seconds wins and gets ``assignTask``. An offer that first tells the function is a
   pure calculation has the cache read (step 1) before it is assigned. A retry of a request
   assigned before (the ledger's answer, :attr:`RequestChannel.assigned_before`) listens to that
   provider only, and fails rather than give the request to another.
3. Follow the assigned provider's ``taskStatus``: ``silence`` seconds without one fails the
   request; ``finished`` carries the result object inline or says it is in the bucket.
4. Nobody offered anywhere: a query (or a function of unknown type) falls back to the cache,
   marked stale; otherwise :class:`~.task_messages.NoProviderError`.

Rules: everything that decides anything about a request lives here; the driver only moves bytes
and keeps time. Messages from another channel than the one asked, or from another node than
the one followed, change nothing. Invalid results are skipped with a warning that reaches the
caller; nothing unverified is ever :class:`~.task_actions.Done`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import orjson

from .bucket_layout import task_result_path
from .task_actions import (
    Done,
    GiveUp,
    Publish,
    ReadResult,
    RecordAssignment,
    ReportStatus,
    RequesterAction,
)
from .task_messages import (
    MAX_KWARGS_BYTES,
    InvalidTaskResultError,
    LocalTaskProtocolError,
    NoProviderError,
    TaskArgumentError,
    TaskAssignment,
    TaskError,
    TaskOffer,
    TaskRequest,
    TaskResult,
    TaskStatus,
    TaskTimeouts,
    decode_result_object,
    task_hash,
    validate_function_id,
    validate_function_type,
    verify_result,
)

log = logging.getLogger("kachery.tasks")

MAX_LEARNED_TYPES = 10_000  # function types learned from offers (oldest forgotten first)


class Phase(Enum):
    """Where a request stands."""

    READING_CACHE = "reading the cache"
    AWAITING_OFFER = "awaiting an offer"
    FOLLOWING = "following the assigned provider"
    READING_RESULT = "reading the result from the bucket"
    ENDED = "ended"


class CacheLookup(Enum):
    """Why the cache is being read, which decides what happens when nothing valid is there."""

    FIRST = "a pure calculation, before asking anyone"  # then: ask
    BEFORE_ASSIGNING = "the offer told it is a pure calculation"  # then: assign that offer
    FALLBACK = "nobody offered it"  # then: NoProviderError


class PublishFailure(Enum):
    """Why a publish failed, as the driver saw it."""

    TOO_LARGE = "the message is too large to send"
    REFUSED = "the channel refused it or is unreachable"


@dataclass(frozen=True)
class RequestChannel:
    """A channel to ask on, as the driver knows it: whether this node holds request-tasks
    there, and (from the ledger) the provider this request ID was assigned to before."""

    name: str
    may_request: bool
    assigned_before: str | None = None


class FunctionTypes:
    """Function types that providers' offers told, by function ID (the last
    :data:`MAX_LEARNED_TYPES`), so that the next request of a pure calculation reads the cache
    first."""

    def __init__(self, limit: int = MAX_LEARNED_TYPES) -> None:
        self._types: dict[str, str] = {}
        self._limit = limit

    def get(self, function_id: str) -> str | None:
        return self._types.get(function_id)

    def learn(self, function_id: str, function_type: str) -> None:
        self._types.pop(function_id, None)  # re-inserted: the most recent
        self._types[function_id] = function_type
        while len(self._types) > self._limit:
            del self._types[next(iter(self._types))]


class TaskRequester:
    """One request's conversation (see the module docstring). Raises
    :class:`~.task_messages.TaskArgumentError` for arguments that cannot be sent, and
    :class:`~.task_messages.NoProviderError` if no channel lets this node request tasks.

    ``may_provide(channel, node_id)`` answers from the channel's signed membership whether a
    node holds provide-tasks there (asked of every result's signer)."""

    def __init__(self, *, function_id: str, kwargs: dict[str, Any], request_id: str,
                 channels: Sequence[RequestChannel], may_provide: Callable[[str, str], bool],
                 learned: FunctionTypes, timeouts: TaskTimeouts,
                 function_type: str | None = None) -> None:
        validate_function_id(function_id)
        self.task_hash = task_hash(function_id, kwargs)
        size = len(orjson.dumps(kwargs))
        if size > MAX_KWARGS_BYTES:
            raise TaskArgumentError(
                f"task arguments of {size} bytes exceed the {MAX_KWARGS_BYTES}-byte limit (they "
                "travel in one pub-sub message): store large inputs (kn.store_npy, "
                "kn.upload_file) and pass URIs")
        self.function_id, self.kwargs, self.request_id = function_id, kwargs, request_id
        self.function_type = (validate_function_type(function_type) if function_type is not None
                              else learned.get(function_id))  # None: the first offer will say
        self._usable = [c for c in channels if c.may_request]
        if not self._usable:
            raise NoProviderError(
                "this node lacks the request-tasks role on "
                + (", ".join(c.name for c in channels) or "every channel (it joined none)"))
        self._may_provide, self._learned, self._timeouts = may_provide, learned, timeouts
        self.phase = Phase.READING_CACHE
        self.warnings: list[str] = []
        self._asking = -1  # index in _usable of the channel asked (or followed)
        self._tried: list[str] = []
        self._deadline: float | None = None
        self._provider: str | None = None  # the node followed (or whose offer awaits the cache)
        self._lookup = CacheLookup.FIRST
        self._cache_next = 0

    # ------------------------------------------------------------------ driver's interface
    def start(self, now: float) -> list[RequesterAction]:
        """The first actions: read the cache (a pure calculation) or ask the first channel."""
        if self.phase is not Phase.READING_CACHE or self._asking != -1 or self._cache_next:
            raise LocalTaskProtocolError("start() was called twice")
        if self.function_type == "pure-calculation":
            return self._read_cache(CacheLookup.FIRST, now)
        return self._ask(0, now)

    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` is due; None while the driver is carrying out a read."""
        return self._deadline if self.phase in (Phase.AWAITING_OFFER, Phase.FOLLOWING) else None

    def on_timer(self, now: float) -> list[RequesterAction]:
        """Time passed: the offer or silence timeout may have expired."""
        if self._deadline is None or now < self._deadline:
            return []
        if self.phase is Phase.AWAITING_OFFER:
            channel = self._channel
            if channel.assigned_before is not None:
                return self._give_up(TaskError(
                    f"request {self.request_id} was assigned to {channel.assigned_before[:12]}… on "
                    f"{channel.name} before, which did not answer within {self._timeouts.offer:g} s; "
                    "it is not given to another provider (at most once)"))
            self._tried.append(channel.name)
            return self._ask(self._asking + 1, now)
        if self.phase is Phase.FOLLOWING:
            assert self._provider is not None
            return self._give_up(TaskError(
                f"provider {self._provider[:12]}… on {self._channel.name} went silent for "
                f"{self._timeouts.silence:g} s while running {self.function_id!r}"))
        return []

    def on_offer(self, channel: str, sender: str, offer: TaskOffer,
                 now: float) -> list[RequesterAction]:
        """An ``offer`` for this request ID from ``sender``: the first one wins."""
        if (self.phase is not Phase.AWAITING_OFFER or channel != self._channel.name
                or offer.function_id != self.function_id):
            return []
        earlier = self._channel.assigned_before
        if earlier is not None and sender != earlier:
            return []
        if offer.function_type is not None:
            self._learned.learn(self.function_id, offer.function_type)
            if self.function_type is None:
                self.function_type = offer.function_type
                if offer.function_type == "pure-calculation":  # computed before? no need to run
                    self._provider = sender
                    return self._read_cache(CacheLookup.BEFORE_ASSIGNING, now)
        return self._assign(sender, now)

    def on_status(self, channel: str, sender: str, status: TaskStatus,
                  now: float) -> list[RequesterAction]:
        """A ``taskStatus`` for this request ID from ``sender``."""
        if self._asking < 0 or channel != self._channel.name:
            return []
        if self.phase is Phase.AWAITING_OFFER:
            earlier = self._channel.assigned_before
            if earlier is not None and sender != earlier:
                return []
            if status.final:  # a retry of a request that provider already ran: its outcome
                return self._final(sender, status, now)
            if earlier is None:
                return []
            self.phase, self._provider = Phase.FOLLOWING, earlier  # still running there
        elif self.phase is not Phase.FOLLOWING or sender != self._provider:
            return []
        self._deadline = now + self._timeouts.silence
        if status.final:
            return self._final(sender, status, now)
        return [ReportStatus(status.status, sender, progress=status.progress, note=status.note)]

    def on_result_read(self, action: ReadResult, data: bytes | None, now: float, *,
                       failure: str | None = None) -> list[RequesterAction]:
        """The driver read ``action.path``: ``data``, or None if the object is missing or the
        read failed (``failure`` says how)."""
        if self.phase is Phase.READING_CACHE and self._cache_next < len(self._usable):
            expected = self._usable[self._cache_next].name
        elif self.phase is Phase.READING_RESULT:
            expected = self._channel.name
        else:
            raise LocalTaskProtocolError(f"a bucket read was answered while {self.phase.value}")
        if action.channel != expected:
            raise LocalTaskProtocolError(f"a read on {action.channel} answered, {expected} asked")
        if self.phase is Phase.READING_RESULT:
            return self._result_read(data, failure, now)
        self._cache_next += 1
        if data is None:
            if failure is not None:  # the bucket is down: not fatal, ask a provider
                log.info("cache lookup on %s failed: %s", action.channel, failure)
            return self._next_cache_read(now)
        try:
            res = self._accept(action.channel, decode_result_object(data))
        except InvalidTaskResultError as exc:
            self._warn(f"ignored the cached result on {action.channel}: {exc}")
            return self._next_cache_read(now)
        stale = self._lookup is CacheLookup.FALLBACK
        if stale:
            self._warn(f"no provider answered within {self._timeouts.offer:g} s; this is the last "
                       "cached result of the " + ("query" if self.function_type else "function"),
                       quiet=True)
        return self._end(Done(res, action.channel, from_cache=True, stale=stale,
                              warnings=tuple(self.warnings)))

    def on_publish_failed(self, action: Publish, failure: PublishFailure, reason: str,
                          now: float) -> list[RequesterAction]:
        """The driver could not publish ``action.message``."""
        if self.phase is Phase.ENDED or self._asking < 0 or action.channel != self._channel.name:
            return []
        if isinstance(action.message, TaskRequest) and self.phase is Phase.AWAITING_OFFER:
            if failure is PublishFailure.TOO_LARGE:
                return self._give_up(TaskArgumentError(
                    f"task arguments are too large to send: {reason}"))
            self.warnings.append(f"{action.channel}: {reason}")
            self._tried.append(action.channel)
            return self._ask(self._asking + 1, now)
        if isinstance(action.message, TaskAssignment) and self.phase is Phase.FOLLOWING:
            return self._give_up(TaskError(
                f"could not assign {self.function_id!r} to {action.message.provider[:12]}… on "
                f"{action.channel}: {reason}"))
        return []

    # ------------------------------------------------------------------ steps
    @property
    def _channel(self) -> RequestChannel:
        return self._usable[self._asking]

    def _read_cache(self, lookup: CacheLookup, now: float) -> list[RequesterAction]:
        self.phase, self._lookup, self._cache_next = Phase.READING_CACHE, lookup, 0
        return self._next_cache_read(now)

    def _next_cache_read(self, now: float) -> list[RequesterAction]:
        if self._cache_next < len(self._usable):
            name = self._usable[self._cache_next].name
            return [ReadResult(name, task_result_path(name, self.task_hash))]
        if self._lookup is CacheLookup.FIRST:
            return self._ask(0, now)
        if self._lookup is CacheLookup.BEFORE_ASSIGNING:
            assert self._provider is not None
            return self._assign(self._provider, now)
        return self._give_up(self._no_provider())

    def _ask(self, index: int, now: float) -> list[RequesterAction]:
        if index >= len(self._usable):
            if self.function_type in ("query", None):
                return self._read_cache(CacheLookup.FALLBACK, now)
            return self._give_up(self._no_provider())
        self._asking, self.phase = index, Phase.AWAITING_OFFER
        self._deadline = now + self._timeouts.offer
        request = TaskRequest(self.request_id, self.function_id, self.kwargs, self.task_hash,
                              self.function_type)
        return [Publish(self._channel.name, request)]

    def _assign(self, provider: str, now: float) -> list[RequesterAction]:
        channel = self._channel.name
        self.phase, self._provider = Phase.FOLLOWING, provider
        self._deadline = now + self._timeouts.silence
        return [RecordAssignment(channel, self.request_id, provider, self.function_id),
                Publish(channel, TaskAssignment(self.request_id, provider)),
                ReportStatus("assigned", provider, channel=channel)]

    def _final(self, sender: str, status: TaskStatus, now: float) -> list[RequesterAction]:
        self._provider = sender
        if status.status == "error":
            return self._give_up(TaskError(
                f"{self.function_id} failed on {sender[:12]}…: {status.error or 'unknown error'}"
                + self._warning_suffix()))
        if status.result_object is None and status.in_bucket and self.function_type != "action":
            self.phase = Phase.READING_RESULT
            return [ReadResult(self._channel.name, task_result_path(self._channel.name, self.task_hash))]
        return self._fresh(sender, status.result_object)

    def _result_read(self, data: bytes | None, failure: str | None,
                     now: float) -> list[RequesterAction]:
        assert self._provider is not None
        try:
            if data is None:
                raise InvalidTaskResultError(failure or "the result object is not there")
            obj = decode_result_object(data)
        except InvalidTaskResultError as exc:
            return self._give_up(TaskError(
                f"{self.function_id} finished on {self._provider[:12]}… but its result could not "
                f"be read from the bucket: {exc}"))
        return self._fresh(self._provider, obj)

    def _fresh(self, sender: str, obj: Any) -> list[RequesterAction]:
        """A result from the provider whose ``finished`` carried (or pointed to) it."""
        try:
            res = self._accept(self._channel.name, obj)
            if res.provider != sender:
                raise InvalidTaskResultError(
                    f"{sender[:12]}… finished the task with a result signed by {res.provider[:12]}…")
        except InvalidTaskResultError as exc:
            self._warn(f"ignored the result from {sender[:12]}…: {exc}")
            return self._give_up(TaskError(f"{self.function_id}: no valid result"
                                           + self._warning_suffix()))
        return self._end(Done(res, self._channel.name, from_cache=False, stale=False,
                              warnings=tuple(self.warnings)))

    def _accept(self, channel: str, obj: Any) -> TaskResult:
        res = verify_result(obj, task_hash=self.task_hash, function_id=self.function_id)
        if not self._may_provide(channel, res.provider):
            raise InvalidTaskResultError(
                f"result signed by {res.provider[:12]}…, which does not hold provide-tasks on {channel}")
        return res

    def _no_provider(self) -> NoProviderError:
        unknown_or_query = self.function_type in ("query", None)
        return NoProviderError(
            f"no provider on channel {' or '.join(self._tried)} offers function "
            f"{self.function_id!r} (nobody answered within {self._timeouts.offer:g} s)"
            + (" and no cached result is in the bucket" if unknown_or_query else "")
            + self._warning_suffix())

    def _give_up(self, error: TaskError | TaskArgumentError) -> list[RequesterAction]:
        return self._end(GiveUp(error))

    def _end(self, action: Done | GiveUp) -> list[RequesterAction]:
        self.phase, self._deadline = Phase.ENDED, None
        return [action]

    def _warn(self, message: str, *, quiet: bool = False) -> None:
        if not quiet:
            log.warning("%s", message)
        self.warnings.append(message)

    def _warning_suffix(self) -> str:
        return "" if not self.warnings else " (also: " + "; ".join(self.warnings) + ")"


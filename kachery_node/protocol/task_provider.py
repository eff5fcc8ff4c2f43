"""The provider's side of tasks (spec/tasks.md §4-8), as a state machine without I/O.

Theory of operation
-------------------
One :class:`TaskProvider` holds every request this node offered to run or runs, on every
channel, and the registrations of its local backends: the rules couple them (one computation
per task hash, whoever asks; one queue that every backend takes from; the tasks a backend held
when it stopped), so they are one state. The driver (``daemon/task_provider_driver.py`` and
``daemon/task_backends.py``) feeds it messages, backend polls and reports, answers its questions
(the ledger, signing, uploads: see :mod:`.task_actions`) and calls :meth:`TaskProvider.on_timer`
at :meth:`TaskProvider.next_deadline`.

A request's life (:class:`TaskState`)::

    requestTask --(a backend offers it; ledger: never accepted)--> OFFERED --(offer published)
    OFFERED --assignTask naming us--> ACCEPTING --(ledger insert: new)--> QUEUED
    OFFERED --assignTask naming another / offer_ttl--> forgotten
    QUEUED --a backend takes it--> RUNNING --finished/error--> FINISHED | ERROR --keep_finished--> forgotten
    RUNNING --its backend stopped--> QUEUED (pure, query) | ERROR (action: never run twice)
    QUEUED --no backend offers it for backend_wait--> ERROR

Rules:

* At most once: a request is recorded in the ledger *before* it is queued; a request ID the
  ledger knows is answered from the record (its final status, or "outcome lost") and never
  offered again.
* One computation per pure calculation: a request assigned while the same task hash is queued
  or running on the channel follows that computation (its statuses, then its signed result,
  which names no request) instead of being queued.
* Every queued or running task's last status is re-published every ``heartbeat`` seconds.
* A result is signed by the driver with the node key, sent inline when at most
  :data:`~.task_messages.INLINE_RESULT_MAX_BYTES`, and uploaded to the bucket (pure calculations
  and queries only; a large result's ``finished`` waits for its upload).
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .bucket_layout import task_result_path
from .task_actions import (
    AcceptedRecord,
    BackendTask,
    LookUpAccepted,
    ProviderAction,
    Publish,
    RecordAcceptance,
    RecordOutcome,
    SignResult,
    UploadResult,
    WakeBackends,
)
from .task_messages import (
    INLINE_RESULT_MAX_BYTES,
    MalformedTaskMessage,
    TaskArgumentError,
    TaskAssignment,
    TaskError,
    TaskFunctions,
    TaskOffer,
    TaskProbe,
    TaskRequest,
    TaskStatus,
    TaskTimeouts,
    encode_result_object,
    task_hash,
)
from .task_registrations import FunctionTable, Registrations

log = logging.getLogger("kachery.tasks")

OUTCOME_LOST = ("this request was accepted before but its outcome was lost (the provider "
                "restarted); it is not run again")


class TaskState(Enum):
    """Where a request offered or run here stands (see the module docstring)."""

    OFFERED = "offered"
    ACCEPTING = "accepting"  # the ledger insert was asked for
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    ERROR = "error"


_HELD = (TaskState.QUEUED, TaskState.RUNNING)
_ENDED = (TaskState.FINISHED, TaskState.ERROR)


@dataclass(eq=False)
class _Incoming:
    key: str  # handed to backends
    channel: str
    requester: str
    request_id: str
    function_id: str
    function_type: str
    kwargs: dict[str, Any]
    task_hash: str
    state: TaskState = TaskState.OFFERED
    backend_id: str | None = None
    last_status: TaskStatus | None = None
    queued_at: float = 0.0
    due: float | None = None  # when on_timer next has something to do for it
    finishing: bool = False  # its backend reported a result: being signed or uploaded
    followers: list[_Incoming] = field(default_factory=list)  # same calculation, answered from this


def _progress(value: Any) -> Any:
    """What of a backend's progress travels (a string, number or object; else nothing)."""
    return value if isinstance(value, str | int | float | dict) else None


class TaskProvider:
    """Every request this node offers to run or runs, and its backends (module docstring).

    ``new_key()`` makes the unguessable keys handed to backends for their tasks."""

    def __init__(self, timeouts: TaskTimeouts, new_key: Callable[[], str]) -> None:
        self.timeouts = timeouts
        self.registrations = Registrations(timeouts.registration_grace)
        self._new_key = new_key
        self._incoming: dict[tuple[str, str], _Incoming] = {}  # (channel, request_id)
        self._by_key: dict[str, _Incoming] = {}
        self._queue: list[_Incoming] = []
        self._computing: dict[tuple[str, str], _Incoming] = {}  # (channel, task hash): leader
        self._timers: list[tuple[float, int, _Incoming]] = []  # a heap; stale entries skipped
        self._seq = itertools.count()
        self._queue_check: float | None = None  # when queued tasks may have lost their backends

    def state(self, channel: str, request_id: str) -> TaskState | None:
        """Where the request stands here, or None if this node holds nothing about it now."""
        inc = self._incoming.get((channel, request_id))
        return None if inc is None else inc.state

    # ------------------------------------------------------------------ messages
    def on_request(self, channel: str, sender: str, request: TaskRequest, now: float, *,
                   we_provide: bool, sender_may_request: bool) -> list[ProviderAction]:
        """A ``requestTask``. ``we_provide``: this node holds provide-tasks on ``channel``;
        ``sender_may_request``: the membership gives the sender request-tasks."""
        if not we_provide:
            return []
        ftype = self.registrations.offered_type(channel, request.function_id, now)
        if ftype is None:
            return []
        if not sender_may_request:
            log.info("ignoring a task request from %s: it may not request tasks on %s",
                     sender[:12], channel)
            return []
        known = self._incoming.get((channel, request.request_id))
        if known is not None:
            if known.requester != sender:
                return []
            if known.state is TaskState.OFFERED:
                return [Publish(channel, TaskOffer(request.request_id, known.function_id,
                                                   known.function_type))]
            return [] if known.last_status is None else [Publish(channel, known.last_status)]
        return [LookUpAccepted(channel, sender, request, ftype)]

    def on_looked_up(self, action: LookUpAccepted, record: AcceptedRecord | None,
                     now: float) -> list[ProviderAction]:
        """The ledger's answer: ``record`` if the request was accepted before."""
        channel, req = action.channel, action.request
        if (channel, req.request_id) in self._incoming:
            return []  # offered meanwhile
        if record is not None:  # a retry or a replay: where it ended, never a second run
            try:
                status = TaskStatus.parse(record.final_status or {})
            except MalformedTaskMessage:
                status = TaskStatus(req.request_id, "error", error=OUTCOME_LOST)
            return [Publish(channel, status)]
        ftype = action.function_type
        try:
            # A requester may leave the type to the provider; one that names it must agree.
            if req.function_type is not None and req.function_type != ftype:
                raise TaskArgumentError(f"{req.function_id} is a {ftype} here, not a {req.function_type}")
            if task_hash(req.function_id, req.kwargs) != req.task_hash:
                raise TaskArgumentError("task_hash does not match the function ID and arguments")
        except TaskArgumentError as exc:
            return [Publish(channel, TaskStatus(req.request_id, "error", error=str(exc)))]
        inc = _Incoming(self._new_key(), channel, action.requester, req.request_id,
                        req.function_id, ftype, req.kwargs, req.task_hash)
        self._incoming[(channel, inc.request_id)] = inc
        self._by_key[inc.key] = inc
        self._set_due(inc, now + self.timeouts.offer_ttl)
        return [Publish(channel, TaskOffer(inc.request_id, inc.function_id, ftype))]

    def on_assign(self, channel: str, sender: str, assignment: TaskAssignment, now: float, *,
                  we: str) -> list[ProviderAction]:
        """An ``assignTask``; ``we`` is this node's ID. Only the requester can assign."""
        inc = self._incoming.get((channel, assignment.request_id))
        if inc is None or inc.requester != sender or inc.state is not TaskState.OFFERED:
            return []
        if assignment.provider != we:
            self._forget(inc)  # another provider runs it
            return []
        inc.state = TaskState.ACCEPTING
        self._set_due(inc, now + self.timeouts.offer_ttl)  # in case the answer never comes
        return [RecordAcceptance(channel, inc.request_id, inc.function_id, inc.requester)]

    def on_acceptance_recorded(self, action: RecordAcceptance, newly: bool,
                               now: float) -> list[ProviderAction]:
        """The ledger's answer: ``newly`` False if the request was accepted before (it must not
        run)."""
        inc = self._incoming.get((action.channel, action.request_id))
        if inc is None or inc.state is not TaskState.ACCEPTING:
            return []
        if not newly:
            self._forget(inc)  # a later requestTask is answered from the record
            return []
        if inc.function_type == "pure-calculation":
            leader = self._computing.get((inc.channel, inc.task_hash))
            if leader is not None and leader.state in _HELD:
                return self._follow(inc, leader, now)
            self._computing[(inc.channel, inc.task_hash)] = inc
        wake = self._enqueue(inc, now)
        return self._status(inc, "queued", now) + wake  # "queued" goes out before "running"

    def on_probe(self, channel: str, sender: str, probe: TaskProbe, now: float, *,
                 we_provide: bool, sender_may_request: bool) -> list[ProviderAction]:
        """A ``probeTasks``: the functions offered on ``channel``, if any."""
        if not we_provide or not sender_may_request:
            return []
        functions = self.registrations.functions(channel, now)
        return [Publish(channel, TaskFunctions(probe.request_id, tuple(functions)))] if functions else []

    # ------------------------------------------------------------------ backends
    def poll_started(self, backend_id: str, functions: FunctionTable, running: Iterable[str],
                     now: float) -> None:
        """A backend's poll began (see :meth:`.Registrations.poll_started`)."""
        if self.registrations.poll_started(backend_id, functions, running, now):
            self._check_queue_at(now)

    def poll_ended(self, backend_id: str, now: float) -> None:
        self.registrations.poll_ended(backend_id, now)

    def backend_gone(self, backend_id: str) -> None:
        """The backend's poll connection closed: it stopped (no grace period)."""
        self.registrations.gone(backend_id)

    def describe_backends(self, now: float) -> list[dict[str, Any]]:
        return self.registrations.describe(now)

    def take(self, backend_id: str, max_tasks: int,
             now: float) -> tuple[list[BackendTask], list[ProviderAction]]:
        """Up to ``max_tasks`` queued tasks that the polling backend offers, oldest first, and
        the actions announcing that they run."""
        backend = self.registrations.get(backend_id)
        tasks: list[BackendTask] = []
        actions: list[ProviderAction] = []
        for inc in list(self._queue) if backend is not None else ():
            if len(tasks) >= max_tasks:
                break
            if backend.offers(inc.channel, inc.function_id):
                self._queue.remove(inc)
                inc.state, inc.backend_id = TaskState.RUNNING, backend_id
                backend.held.add(inc.key)
                tasks.append(BackendTask(inc.key, inc.channel, inc.request_id, inc.function_id,
                                         inc.function_type, inc.kwargs, inc.task_hash, inc.requester))
                actions += self._status(inc, "running", now)
        if not self._queue:
            self._queue_check = None  # nothing waits for a backend
        return tasks, actions

    def on_update(self, backend_id: str, task_key: str, status: str, now: float, *,
                  progress: Any = None, result: Any = None,
                  error: str | None = None) -> list[ProviderAction]:
        """A backend reports on a task it holds. Raises TaskError if it holds no such task,
        TaskArgumentError for an unknown status."""
        inc = self._by_key.get(task_key)
        if (inc is None or inc.backend_id != backend_id or inc.state is not TaskState.RUNNING
                or inc.finishing):
            raise TaskError(f"no task {task_key!r} is running for this backend (the daemon may "
                            "have restarted, or the task was given to another backend)")
        if status == "running":
            return self._status(inc, "running", now, progress=_progress(progress))
        if status == "error":
            self._release(inc)
            return self._status(inc, "error", now, error=str(error or "the task function failed"))
        if status == "finished":
            self._release(inc)
            inc.finishing = True
            return [SignResult(inc.key, inc.channel, inc.task_hash, inc.function_id, result)]
        raise TaskArgumentError(f"unknown task status {status!r} (running, finished or error)")

    def on_result_signed(self, action: SignResult, obj: dict[str, str] | None, now: float, *,
                         error: str | None = None) -> list[ProviderAction]:
        """The driver signed the result (``obj``), or could not (``error``: not JSON)."""
        inc = self._by_key.get(action.task_key)
        if inc is None or not inc.finishing:
            return []
        if obj is None:
            return self._status(inc, "error", now, error=error or "the result could not be signed")
        data = encode_result_object(obj)
        cached = inc.function_type != "action"
        path = task_result_path(inc.channel, inc.task_hash)
        if len(data) <= INLINE_RESULT_MAX_BYTES:
            # The requester gets the result at once; the bucket copy (for later requesters) follows.
            return (self._status(inc, "finished", now, result_object=obj)
                    + ([UploadResult(inc.channel, path, data)] if cached else []))
        if not cached:
            return self._status(inc, "error", now, error=(
                f"the result ({len(data)} bytes) is too large to send inline, and action results "
                "are not cached"))
        return [UploadResult(inc.channel, path, data, task_key=inc.key)]

    def on_result_uploaded(self, action: UploadResult, ok: bool, now: float) -> list[ProviderAction]:
        """The upload of a result too large to travel inline succeeded (or not)."""
        inc = self._by_key.get(action.task_key or "")
        if inc is None or not inc.finishing:
            return []
        if ok:
            return self._status(inc, "finished", now, in_bucket=True)
        return self._status(inc, "error", now, error=(
            f"the result ({len(action.data)} bytes) is too large to send inline and the upload to "
            "the bucket failed"))

    # ------------------------------------------------------------------ time
    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` next has something to do."""
        while self._timers and self._stale(self._timers[0]):
            heapq.heappop(self._timers)
        times = [t for t in (self._timers[0][0] if self._timers else None, self._queue_check,
                             self.registrations.next_expiry()) if t is not None]
        return min(times) if times else None

    def on_timer(self, now: float) -> list[ProviderAction]:
        """Backends that stopped, queued tasks nobody offers, offers and finished requests to
        forget, heartbeats."""
        actions: list[ProviderAction] = []
        gone = self.registrations.expire(now)
        for backend in gone:
            for key in backend.held:
                inc = self._by_key.get(key)
                if inc is not None and inc.state is TaskState.RUNNING \
                        and inc.backend_id == backend.backend_id:
                    actions += self._orphaned(inc, now)
        if gone:
            self._check_queue_at(now)
        if self._queue_check is not None and self._queue_check <= now:
            actions += self._check_queue(now)
        while self._timers and self._timers[0][0] <= now:
            entry = heapq.heappop(self._timers)
            if not self._stale(entry):
                entry[2].due = None
                actions += self._due(entry[2], now)
        return actions

    # ------------------------------------------------------------------ internals
    def _status(self, inc: _Incoming, status: str, now: float, **fields: Any) -> list[ProviderAction]:
        """Publish ``status`` for ``inc`` and for the requests that follow its computation."""
        message = TaskStatus(inc.request_id, status, **fields)
        inc.last_status = message
        actions: list[ProviderAction] = []
        if message.final:
            inc.state, inc.finishing = TaskState(status), False
            self._set_due(inc, now + self.timeouts.keep_finished)
            actions.append(RecordOutcome(inc.channel, inc.request_id, message))
            if self._computing.get((inc.channel, inc.task_hash)) is inc:
                del self._computing[(inc.channel, inc.task_hash)]
        else:
            self._set_due(inc, now + self.timeouts.heartbeat)
        actions.append(Publish(inc.channel, message))
        for follower in list(inc.followers):  # the same computation: the same news
            if follower.state not in _ENDED:
                if status in ("queued", "running"):
                    follower.state = TaskState(status)
                actions += self._status(follower, status, now, **fields)
        if message.final:
            inc.followers.clear()
        return actions

    def _follow(self, inc: _Incoming, leader: _Incoming, now: float) -> list[ProviderAction]:
        """Answer ``inc`` from ``leader``'s computation of the same pure calculation."""
        log.info("%s (request %s) is already being computed here for request %s: answered from it",
                 inc.function_id, inc.request_id, leader.request_id)
        leader.followers.append(inc)
        inc.state, inc.queued_at = TaskState.QUEUED, now
        actions = self._status(inc, "queued", now,
                               note="the same calculation is already under way here")
        if leader.state is TaskState.RUNNING:
            inc.state = TaskState.RUNNING
            progress = leader.last_status.progress if leader.last_status else None
            actions += self._status(inc, "running", now, progress=progress)
        return actions

    def _enqueue(self, inc: _Incoming, now: float) -> list[ProviderAction]:
        inc.state, inc.backend_id, inc.queued_at = TaskState.QUEUED, None, now
        self._queue.append(inc)
        self._check_queue_at(now + self.timeouts.backend_wait)
        return [WakeBackends()]

    def _orphaned(self, inc: _Incoming, now: float) -> list[ProviderAction]:
        """The backend running ``inc`` went away: run a calculation or query again, never an
        action (it may have taken effect)."""
        if inc.function_type == "action":
            return self._status(inc, "error", now, error=(
                "the task backend stopped while running this action; it is not run again "
                "(it may or may not have taken effect)"))
        wake = self._enqueue(inc, now)
        return self._status(inc, "queued", now, note="the task backend stopped; queued again") + wake

    def _check_queue_at(self, when: float) -> None:
        self._queue_check = when if self._queue_check is None else min(self._queue_check, when)

    def _check_queue(self, now: float) -> list[ProviderAction]:
        """Fail the queued tasks that waited ``backend_wait`` and no backend offers."""
        self._queue_check = None
        actions: list[ProviderAction] = []
        for inc in list(self._queue):
            if now - inc.queued_at < self.timeouts.backend_wait:
                self._check_queue_at(inc.queued_at + self.timeouts.backend_wait)
            elif self.registrations.offered_type(inc.channel, inc.function_id, now) is None:
                self._queue.remove(inc)
                actions += self._status(inc, "error", now, error=(
                    f"no task backend on this node offers {inc.function_id} any more (it "
                    "stopped before running the task)"))
        return actions

    def _due(self, inc: _Incoming, now: float) -> list[ProviderAction]:
        if inc.state in _HELD:
            if inc.last_status is None:
                return []
            self._set_due(inc, now + self.timeouts.heartbeat)
            return [Publish(inc.channel, inc.last_status)]  # heartbeat
        self._forget(inc)  # an offer nobody assigned, or a request that ended long enough ago
        return []

    def _set_due(self, inc: _Incoming, when: float) -> None:
        inc.due = when
        heapq.heappush(self._timers, (when, next(self._seq), inc))

    def _stale(self, entry: tuple[float, int, _Incoming]) -> bool:
        when, _seq, inc = entry
        return inc.due != when or self._by_key.get(inc.key) is not inc

    def _release(self, inc: _Incoming) -> None:
        backend = self.registrations.get(inc.backend_id or "")
        if backend is not None:
            backend.held.discard(inc.key)

    def _forget(self, inc: _Incoming) -> None:
        self._incoming.pop((inc.channel, inc.request_id), None)
        self._by_key.pop(inc.key, None)
        if self._computing.get((inc.channel, inc.task_hash)) is inc:
            del self._computing[(inc.channel, inc.task_hash)]
        if inc in self._queue:
            self._queue.remove(inc)
        inc.due = None


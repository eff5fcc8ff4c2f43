"""What the task cores ask their drivers to do (spec/tasks.md §6-8): frozen dataclasses.

A core (:mod:`.task_requester`, :mod:`.task_provider`) never does I/O; each of its methods
returns a list of these, which the driver carries out in order. Some are questions: the driver
hands the action back with the answer (``core.on_<answer>(action, ...)``), so the core keeps
no half-open state between asking and being answered.

=========================  ===========  ====================================================
action                     role         the driver ...
=========================  ===========  ====================================================
:class:`Publish`           both         publishes ``message`` on its band in ``channel``
:class:`ReadResult`        requester    reads a result object from the bucket; answers
                                        ``on_result_read``
:class:`RecordAssignment`  requester    writes who got the request to the ledger (tasks.db)
:class:`ReportStatus`      requester    shows the caller a status line
:class:`Done`              requester    returns the verified result (the conversation ends)
:class:`GiveUp`            requester    raises ``error`` (the conversation ends)
:class:`LookUpAccepted`    provider     reads the ledger; answers ``on_looked_up``
:class:`RecordAcceptance`  provider     inserts the request in the ledger; answers
                                        ``on_acceptance_recorded`` (False: it was there)
:class:`RecordOutcome`     provider     writes the final status to the ledger
:class:`SignResult`        provider     signs with the node key and the wall clock; answers
                                        ``on_result_signed``
:class:`UploadResult`      provider     uploads to the bucket; answers ``on_result_uploaded``
                                        if ``task_key`` is set
:class:`WakeBackends`      provider     wakes the backends' long polls (a task was queued)
=========================  ===========  ====================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import KacheryError
from .task_messages import TaskMessage, TaskRequest, TaskResult, TaskStatus


# ----------------------------------------------------------------------------- both roles
@dataclass(frozen=True)
class Publish:
    """Publish ``message`` (on ``message.BAND``) in ``channel``."""

    channel: str
    message: TaskMessage


# ----------------------------------------------------------------------------- requester
@dataclass(frozen=True)
class ReadResult:
    """Read the result object at ``path`` in ``channel``'s bucket (a cached result, or a
    ``finished`` result too large to travel inline)."""

    channel: str
    path: str


@dataclass(frozen=True)
class RecordAssignment:
    """Remember that ``request_id`` went to ``provider`` (a retry goes there only)."""

    channel: str
    request_id: str
    provider: str
    function_id: str


@dataclass(frozen=True)
class ReportStatus:
    """A status line for the caller: ``assigned`` (with ``channel``), ``queued``, ``running``."""

    status: str
    provider: str
    channel: str | None = None
    progress: Any = None
    note: str | None = None

    def to_line(self) -> dict[str, Any]:
        """The NDJSON line of ``/api/tasks/request`` (spec/tasks.md §8)."""
        line: dict[str, Any] = {"type": "status", "status": self.status, "provider": self.provider}
        for name in ("channel", "progress", "note"):
            value = getattr(self, name)
            if value is not None:
                line[name] = value
        return line


@dataclass(frozen=True)
class Done:
    """The request ended with a verified result."""

    result: TaskResult
    channel: str
    from_cache: bool
    stale: bool
    warnings: tuple[str, ...]

    def to_line(self) -> dict[str, Any]:
        """The final NDJSON line of ``/api/tasks/request`` (spec/tasks.md §8)."""
        res = self.result
        return {"type": "finished", "result": res.result, "provider": res.provider,
                "computed_ms": res.time_ms, "channel": self.channel, "from_cache": self.from_cache,
                "stale": self.stale, "warnings": list(self.warnings)}


@dataclass(frozen=True)
class GiveUp:
    """The request failed: ``error`` (NoProviderError, TaskError, TaskArgumentError) says why."""

    error: KacheryError


# ----------------------------------------------------------------------------- provider
@dataclass(frozen=True)
class LookUpAccepted:
    """Was ``request`` (from ``requester``, for a function registered here as ``function_type``)
    accepted before, and with what outcome?"""

    channel: str
    requester: str
    request: TaskRequest
    function_type: str


@dataclass(frozen=True)
class AcceptedRecord:
    """The ledger's answer to :class:`LookUpAccepted` when the request was accepted before:
    its final status body, or None if the outcome was never recorded (the provider restarted)."""

    final_status: dict[str, Any] | None


@dataclass(frozen=True)
class RecordAcceptance:
    """Insert the request in the ledger *before* it runs; the answer says whether it was new."""

    channel: str
    request_id: str
    function_id: str
    requester: str


@dataclass(frozen=True)
class RecordOutcome:
    """Write a request's final status to the ledger."""

    channel: str
    request_id: str
    status: TaskStatus


@dataclass(frozen=True)
class SignResult:
    """Sign ``result`` for the task the backend finished (the key and the wall clock are the
    driver's)."""

    task_key: str
    channel: str
    task_hash: str
    function_id: str
    result: Any


@dataclass(frozen=True)
class UploadResult:
    """Upload a signed result object to ``path``; if ``task_key`` is set, its ``finished``
    status waits for the outcome (the result is too large to travel inline)."""

    channel: str
    path: str
    data: bytes
    task_key: str | None = None


@dataclass(frozen=True)
class WakeBackends:
    """A task was queued: wake the backends' long polls so that one takes it."""


@dataclass(frozen=True)
class BackendTask:
    """A task handed to a local backend by its poll (spec/tasks.md §8)."""

    task_key: str
    channel: str
    request_id: str
    function_id: str
    function_type: str
    kwargs: dict[str, Any]
    task_hash: str
    requester: str

    def to_json(self) -> dict[str, Any]:
        return {"task_key": self.task_key, "channel": self.channel, "request_id": self.request_id,
                "function_id": self.function_id, "function_type": self.function_type,
                "kwargs": self.kwargs, "task_hash": self.task_hash, "requester": self.requester}


RequesterAction = Publish | ReadResult | RecordAssignment | ReportStatus | Done | GiveUp
ProviderAction = (Publish | LookUpAccepted | RecordAcceptance | RecordOutcome | SignResult
                  | UploadResult | WakeBackends)

"""Tasks across nodes (spec/tasks.md): the face the daemon uses, and where each part lives.

=====================================  ==================================================
``protocol/task_messages.py``          the messages, task hashes, signed results
``protocol/task_requester.py``         the rules of one request (a state machine, no I/O)
``protocol/task_provider.py``          the rules of providing: offers, at most once, one
                                       computation per task hash, heartbeats, backends
                                       that stop (a state machine, no I/O)
``protocol/task_registrations.py``     which local backend offers what, until when
``daemon/task_request_driver.py``      runs requests over the channel links
``daemon/task_provider_driver.py``     runs the provider over the links, its timer
``daemon/task_backends.py``            the backends' long polls and reports (local API)
``daemon/task_ledger.py``              ``<storage>/tasks.db``, the at-most-once ledger
=====================================  ==================================================

:class:`TaskExchange` routes each incoming message by band and type: ``offer`` and
``taskStatus`` (provide-tasks) to the request in flight with that request ID, ``requestTask``,
``assignTask`` and ``probeTasks`` (request-tasks) to the provider. A malformed message is the
sender's fault: it is logged and dropped.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from ..protocol.node_messages import Envelope
from ..protocol.task_messages import (
    STATUS_BAND,
    MalformedTaskMessage,
    TaskOffer,
    TaskStatus,
    TaskTimeouts,
    parse_task_message,
)
from ..protocol.task_provider import TaskProvider
from .channel_link import ChannelLink
from .task_backends import TaskBackends
from .task_ledger import TaskLedger
from .task_provider_driver import TaskProviderDriver
from .task_request_driver import Emit, TaskRequests

__all__ = ["TaskExchange", "TaskTimeouts"]

log = logging.getLogger("kachery.daemon.tasks")


class TaskExchange:
    """Requests tasks on channels and provides them through local backends."""

    def __init__(self, storage_dir: Path, timeouts: TaskTimeouts | None = None) -> None:
        self.timeouts = timeouts or TaskTimeouts()
        self.ledger = TaskLedger(Path(storage_dir) / "tasks.db")
        self.provider = TaskProvider(self.timeouts, new_key=lambda: secrets.token_hex(8))
        self._providing = TaskProviderDriver(self.provider, self.ledger,
                                             wake_backends=lambda: self.backends.wake())
        self.backends = TaskBackends(self.provider, self._providing)
        self.requests = TaskRequests(self.ledger, self.timeouts)

    async def run(self, *, task_status: anyio.abc.TaskStatus = anyio.TASK_STATUS_IGNORED) -> None:
        """The provider's timer, until cancelled."""
        await self._providing.run(task_status=task_status)

    async def on_message(self, link: ChannelLink, band: str, env: Envelope) -> None:
        """A message on one of the task bands, already verified (signature, sender's role)."""
        if self.on_message_inline(link, band, env):
            return
        message = self._parse(link, band, env)
        if message is not None and not isinstance(message, TaskOffer | TaskStatus):
            await self._providing.on_message(link, env.sender, message)  # type: ignore[arg-type]

    def on_message_inline(self, link: ChannelLink, band: str, env: Envelope) -> bool:
        """Deliver an offer or status (the provide-tasks band) at once, in the channel's
        receiving task, so that a request's statuses are handled in the order they came (each
        in a task of its own, a "running" could overtake the "queued" sent before it); False
        for every other message, which :meth:`on_message` handles in a task of its own."""
        if band != STATUS_BAND:
            return False
        request_id = env.body.get("request_id")  # most answer other nodes' requests: not parsed
        if not isinstance(request_id, str) or not self.requests.awaits(request_id):
            return True
        message = self._parse(link, band, env)
        if isinstance(message, TaskOffer | TaskStatus):
            self.requests.deliver(link.channel, env.sender, message)
        return True

    @staticmethod
    def _parse(link: ChannelLink, band: str, env: Envelope):
        try:
            return parse_task_message(band, env.body)
        except MalformedTaskMessage as exc:
            log.info("dropped a malformed task message from %s on %s: %s", env.sender[:12],
                     link.channel, exc)
            return None

    # ------------------------------------------------------------------ requester (local API)
    async def request(self, links: Sequence[ChannelLink], function_id: str, kwargs: dict[str, Any],
                      *, function_type: str | None = None, request_id: str | None = None,
                      emit: Emit = lambda line: None) -> dict[str, Any]:
        """See :meth:`.TaskRequests.request`."""
        return await self.requests.request(links, function_id, kwargs, function_type=function_type,
                                           request_id=request_id, emit=emit)

    # ------------------------------------------------------------------ backends (local API)
    async def poll(self, backend_id: str, functions: list[dict[str, Any]], *, max_tasks: int,
                   running: list[str], timeout: float) -> list[dict[str, Any]]:
        """See :meth:`.TaskBackends.poll`."""
        return await self.backends.poll(backend_id, functions, max_tasks=max_tasks,
                                        running=running, timeout=timeout)

    async def update(self, backend_id: str, task_key: str, status: str, *, progress: Any = None,
                     result: Any = None, error: str | None = None) -> None:
        """See :meth:`.TaskBackends.update`."""
        await self.backends.update(backend_id, task_key, status, progress=progress, result=result,
                                   error=error)

    def describe_backends(self) -> list[dict[str, Any]]:
        """The task backends registered now (``/api/status``)."""
        return self.backends.describe()

    def backend_gone(self, backend_id: str) -> None:
        """The backend's poll connection closed: it stopped (no grace period)."""
        self.backends.gone(backend_id)

"""Drives :class:`~kachery_node.protocol.task_requester.TaskRequester`: this node's task requests
(spec/tasks.md §6-7).

For each request the core decides; this module carries out what it asks, with anyio: publishes
on the channel's link (reporting failures back as
:class:`~kachery_node.protocol.task_requester.PublishFailure`), reads result objects from the
bucket (at most ``timeouts.bucket`` seconds each), records assignments in ``tasks.db``, emits
status lines to the caller, and waits for the ``offer`` and ``taskStatus`` messages that the
exchange routes here by request ID, or for the core's next deadline.

Unlike the provider's timer, this is not an :class:`~.action_loop.ActionLoop`: the requester core
takes the next message only once the actions of the last event are done (a status that comes
while a result is being read waits in the request's queue), which the loop does not promise.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from ..protocol.node_messages import MessageTooLargeError
from ..protocol.task_actions import (
    Done,
    GiveUp,
    Publish,
    ReadResult,
    RecordAssignment,
    ReportStatus,
    RequesterAction,
)
from ..protocol.task_messages import TaskOffer, TaskStatus, TaskTimeouts
from ..protocol.task_requester import FunctionTypes, PublishFailure, RequestChannel, TaskRequester
from .channel_link import BucketObjectMissing, ChannelLink, refresh_if_lacking
from .task_ledger import TaskLedger

log = logging.getLogger("kachery.daemon.tasks")

Emit = Callable[[dict[str, Any]], None]
Delivery = tuple[str, str, TaskOffer | TaskStatus]  # (channel, sender, message)


def new_request_id() -> str:
    """24 random hex characters (spec/tasks.md §4: 8-64 characters, chosen by the requester)."""
    return secrets.token_hex(12)


class TaskRequests:
    """This node's requests in flight, each a core with its own message queue."""

    def __init__(self, ledger: TaskLedger, timeouts: TaskTimeouts) -> None:
        self.ledger, self.timeouts = ledger, timeouts
        self.learned = FunctionTypes()  # shared by every request: what offers told
        self._waiters: dict[str, set[MemoryObjectSendStream[Delivery]]] = {}  # by request ID

    def awaits(self, request_id: str) -> bool:
        """Whether a request in flight here has this ID (else its messages are someone else's)."""
        return request_id in self._waiters

    def deliver(self, channel: str, sender: str, message: TaskOffer | TaskStatus) -> None:
        """Hand an ``offer`` or ``taskStatus`` to the requests with its ID; never blocks."""
        for stream in list(self._waiters.get(message.request_id, ())):
            try:
                stream.send_nowait((channel, sender, message))
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

    async def request(self, links: Sequence[ChannelLink], function_id: str, kwargs: dict[str, Any],
                      *, function_type: str | None = None, request_id: str | None = None,
                      emit: Emit = lambda line: None) -> dict[str, Any]:
        """Run a task on the first channel that offers it; returns the final line:
        ``{"type": "finished", "result", "provider", "from_cache", "stale", "warnings", ...}``.

        Raises NoProviderError, TaskError (with the remote message) or TaskArgumentError; the
        caller bounds the whole call with its own deadline."""
        request_id = request_id or new_request_id()
        await refresh_if_lacking(links, "request-tasks")  # granted a moment ago?
        by_name = {link.channel: link for link in links}
        channels = []
        for link in links:
            may = "request-tasks" in link.roles
            earlier = self.ledger.assigned_to(link.channel, request_id) if may else None
            channels.append(RequestChannel(link.channel, may, earlier))
        core = TaskRequester(
            function_id=function_id, kwargs=kwargs, request_id=request_id, channels=channels,
            may_provide=lambda channel, node: by_name[channel].may(node, "provide-tasks"),
            learned=self.learned, timeouts=self.timeouts, function_type=function_type)
        send, receive = anyio.create_memory_object_stream[Delivery](256)
        self._waiters.setdefault(request_id, set()).add(send)
        try:
            actions = core.start(anyio.current_time())
            while True:
                end = await self._carry_out(core, actions, by_name, emit)
                if isinstance(end, Done):
                    return end.to_line()
                if isinstance(end, GiveUp):
                    raise end.error
                actions = await self._next_event(core, receive)
        finally:
            self._waiters[request_id].discard(send)
            if not self._waiters[request_id]:
                del self._waiters[request_id]
            send.close()
            receive.close()

    async def _next_event(self, core: TaskRequester, receive) -> list[RequesterAction]:
        """Wait for a message or the core's deadline; the core's answer to it."""
        deadline = core.next_deadline()
        delivery: Delivery | None = None
        with anyio.CancelScope(deadline=math.inf if deadline is None else deadline):
            delivery = await receive.receive()
        now = anyio.current_time()
        if delivery is None:
            return core.on_timer(now)
        channel, sender, message = delivery
        if isinstance(message, TaskOffer):
            return core.on_offer(channel, sender, message, now)
        return core.on_status(channel, sender, message, now)

    async def _carry_out(self, core: TaskRequester, actions: list[RequesterAction],
                         links: dict[str, ChannelLink], emit: Emit) -> Done | GiveUp | None:
        work = deque(actions)
        while work:
            action = work.popleft()
            more: list[RequesterAction] = []
            if isinstance(action, Done | GiveUp):
                return action
            if isinstance(action, Publish):
                more = await self._publish(core, action, links[action.channel])
            elif isinstance(action, ReadResult):
                more = await self._read(core, action, links[action.channel])
            elif isinstance(action, RecordAssignment):
                self.ledger.record_assignment(action.channel, action.request_id, action.provider,
                                              action.function_id)
            elif isinstance(action, ReportStatus):
                emit(action.to_line())
            else:
                raise TypeError(f"not a requester action: {action!r}")
            work.extendleft(reversed(more))
        return None

    async def _publish(self, core: TaskRequester, action: Publish,
                       link: ChannelLink) -> list[RequesterAction]:
        try:
            await link.publish(action.message.BAND, action.message.to_body())
        except MessageTooLargeError as exc:
            return core.on_publish_failed(action, PublishFailure.TOO_LARGE, str(exc),
                                          anyio.current_time())
        except (PermissionError, ConnectionError) as exc:
            return core.on_publish_failed(action, PublishFailure.REFUSED, str(exc),
                                          anyio.current_time())
        return []

    async def _read(self, core: TaskRequester, action: ReadResult,
                    link: ChannelLink) -> list[RequesterAction]:
        data: bytes | None = None
        failure: str | None = None
        try:
            with anyio.fail_after(self.timeouts.bucket):
                data = await link.bucket_get(action.path)
        except BucketObjectMissing:
            pass
        except Exception as exc:  # the bucket is down or slow: the core decides what that means
            failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return core.on_result_read(action, data, anyio.current_time(), failure=failure)

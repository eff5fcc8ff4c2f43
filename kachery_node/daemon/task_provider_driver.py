"""Drives :class:`~kachery_node.protocol.task_provider.TaskProvider` (spec/tasks.md §4-8).

The core decides; this module carries out what it asks, with anyio:

* messages in: ``requestTask``, ``assignTask`` and ``probeTasks`` (parsed by the exchange) become
  core events, with the facts only the link knows (our roles, the sender's, our node ID);
* actions out: publish on the link of the action's channel, answer the ledger questions from
  ``tasks.db`` (:mod:`.task_ledger`), sign results with the link's node key and the wall clock,
  upload them (60 s at most), wake the backends' polls;
* time: an :class:`~.action_loop.ActionLoop` (the files flow's) sleeps until the core's next
  deadline, woken early when an event may have brought a sooner one, and performs what
  ``on_timer`` returns.

Rules: a failed publish or upload is logged and left to the requester's retry or silence
timeout (as the core expects); nothing here waits on a backend.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence

import anyio
import anyio.abc

from ..protocol.task_actions import (
    LookUpAccepted,
    ProviderAction,
    Publish,
    RecordAcceptance,
    RecordOutcome,
    SignResult,
    UploadResult,
    WakeBackends,
)
from ..protocol.task_messages import (
    TaskArgumentError,
    TaskAssignment,
    TaskProbe,
    TaskRequest,
    sign_result,
)
from ..protocol.task_provider import TaskProvider
from .action_loop import ActionLoop, now
from .channel_link import ChannelLink
from .task_ledger import TaskLedger

log = logging.getLogger("kachery.daemon.tasks")

UPLOAD_SECONDS = 60.0


class TaskProviderDriver:
    """Runs the provider core over the channel links (see the module docstring)."""

    def __init__(self, core: TaskProvider, ledger: TaskLedger,
                 wake_backends: Callable[[], None]) -> None:
        self.core, self.ledger = core, ledger
        self._wake_backends = wake_backends
        self._links: dict[str, ChannelLink] = {}  # the latest link each channel's messages came on
        self._timer = ActionLoop(core)
        self._tg: anyio.abc.TaskGroup | None = None

    async def run(self, *, task_status: anyio.abc.TaskStatus = anyio.TASK_STATUS_IGNORED) -> None:
        """The timer (and the tasks spawned by :meth:`spawn`), until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            await self._timer.run(self._on_time)

    async def _on_time(self, action: ProviderAction) -> None:
        """One action of ``on_timer`` (heartbeats, expiries), performed by the timer's loop;
        never ends it."""
        await self.carry_out([action])

    async def on_message(self, link: ChannelLink, sender: str,
                         message: TaskRequest | TaskAssignment | TaskProbe) -> None:
        """A message on request-tasks from ``sender``."""
        self._links[link.channel] = link
        at, channel = now(), link.channel
        if isinstance(message, TaskAssignment):
            actions = self.core.on_assign(channel, sender, message, at, we=link.node_id)
        else:
            facts = {"we_provide": "provide-tasks" in link.roles,
                     "sender_may_request": link.may(sender, "request-tasks")}
            if isinstance(message, TaskRequest):
                actions = self.core.on_request(channel, sender, message, at, **facts)
            else:
                actions = self.core.on_probe(channel, sender, message, at, **facts)
        await self.carry_out(actions)

    def spawn(self, actions: Sequence[ProviderAction]) -> None:
        """Carry out ``actions`` in the background (a backend's poll returns at once)."""
        assert self._tg is not None, "run() is not running"
        self._tg.start_soon(self.carry_out, actions)

    def rearm(self) -> None:
        """The core's state changed outside the timer: let it look at the core's next deadline
        again (it may now come sooner than the timer sleeps for)."""
        self._timer.feed(())

    async def carry_out(self, actions: Sequence[ProviderAction]) -> None:
        """Do each action in order; the answers to questions come first in the queue."""
        work = deque(actions)
        while work:
            more = await self._do(work.popleft())
            work.extendleft(reversed(more))
        self.rearm()

    async def _do(self, action: ProviderAction) -> list[ProviderAction]:
        if isinstance(action, Publish):
            await self._publish(action)
        elif isinstance(action, LookUpAccepted):
            record = self.ledger.accepted(action.channel, action.request.request_id)
            return self.core.on_looked_up(action, record, now())
        elif isinstance(action, RecordAcceptance):
            newly = self.ledger.accept(action.channel, action.request_id, action.function_id,
                                       action.requester)
            return self.core.on_acceptance_recorded(action, newly, now())
        elif isinstance(action, RecordOutcome):
            self.ledger.finish(action.channel, action.request_id, action.status.to_body())
        elif isinstance(action, SignResult):
            return self._sign(action)
        elif isinstance(action, UploadResult):
            ok = await self._upload(action)
            if action.task_key is not None:
                return self.core.on_result_uploaded(action, ok, now())
        elif isinstance(action, WakeBackends):
            self._wake_backends()
        else:
            raise TypeError(f"not a provider action: {action!r}")
        return []

    def _sign(self, action: SignResult) -> list[ProviderAction]:
        at = now()
        link = self._links.get(action.channel)
        if link is None:
            return self.core.on_result_signed(action, None, at, error=f"left channel {action.channel}")
        try:
            obj = sign_result(link.keypair, task_hash=action.task_hash, function_id=action.function_id,
                              result=action.result, now_ms=int(time.time() * 1000))
        except TaskArgumentError as exc:
            return self.core.on_result_signed(action, None, at, error=str(exc))
        return self.core.on_result_signed(action, obj, at)

    async def _publish(self, action: Publish) -> None:
        link = self._links.get(action.channel)
        try:
            if link is None:
                raise ConnectionError(f"no link to {action.channel}")
            await link.publish(action.message.BAND, action.message.to_body())
        except Exception as exc:  # the requester's retry or silence timeout deals with it
            log.info("publishing %s for request %s on %s failed: %s", action.message.TYPE,
                     action.message.request_id, action.channel, exc)

    async def _upload(self, action: UploadResult) -> bool:
        link = self._links.get(action.channel)
        try:
            if link is None:
                raise ConnectionError(f"no link to {action.channel}")
            with anyio.fail_after(UPLOAD_SECONDS):
                await link.upload(action.path, action.data)
            return True
        except Exception as exc:
            log.warning("uploading the task result %s to %s failed: %s", action.path,
                        action.channel, exc)
            return False

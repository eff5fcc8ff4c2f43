"""Runs one conversation of a sans-IO protocol core (:mod:`kachery_node.protocol.file_requester`,
:mod:`~kachery_node.protocol.file_provider`): performs its actions in order, runs its transfers
as tasks it can cancel, and calls its ``on_timer`` when its deadline passes.

The core decides; this loop only keeps time and order. Events reach the core from three places,
all in the event loop's thread: the exchange's message handler (statuses, requests), the
transfers' tasks (results, progress callbacks) and the loop's own timer. Whoever feeds an event
hands the actions it returned to :meth:`ActionLoop.feed`; the loop performs them one by one.
Time is ``anyio.current_time()``, so a test clock drives it too.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, TypeVar

import anyio
from anyio.abc import TaskGroup

T = TypeVar("T")


class TimedCore(Protocol):
    """What the loop needs of a core: when to wake, and what to do then."""

    def next_deadline(self) -> float | None: ...

    def on_timer(self, now: float) -> list[Any]: ...


def now() -> float:
    """The clock the cores are fed (monotonic seconds of the running event loop)."""
    return anyio.current_time()


class ActionLoop:
    """The actions of one core, performed in order by :meth:`run` (see the module docstring)."""

    def __init__(self, core: TimedCore) -> None:
        self._core = core
        self._queue: deque[Any] = deque()
        self._wake = anyio.Event()
        self._transfers: dict[int, anyio.CancelScope] = {}
        self._tg: TaskGroup | None = None

    def feed(self, actions: Iterable[Any]) -> None:
        """Queue the actions a core returned for an event (from any task of this event loop),
        none perhaps: the loop wakes either way, since the event may have moved the deadline."""
        self._queue.extend(actions)
        self._wake.set()

    def start_transfer(self, transfer: int, run: Callable[[], Awaitable[None]]) -> None:
        """Run ``run`` (a HEAD, download or upload that reports to the core itself) as a task,
        until it returns or :meth:`cancel_transfer` stops it."""
        if self._tg is None:
            raise RuntimeError("ActionLoop.start_transfer outside ActionLoop.run")
        scope = anyio.CancelScope()
        self._transfers[transfer] = scope

        async def task() -> None:
            try:
                with scope:
                    await run()
            finally:
                self._transfers.pop(transfer, None)

        self._tg.start_soon(task)

    def cancel_transfer(self, transfer: int) -> None:
        scope = self._transfers.pop(transfer, None)
        if scope is not None:
            scope.cancel()

    async def run(self, perform: Callable[[Any], Awaitable[T | None]]) -> T:
        """Perform queued actions with ``perform`` until it returns something other than None
        for one (the conversation's end), which is returned; running transfers are cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                while True:
                    while self._queue:
                        result = await perform(self._queue.popleft())
                        if result is not None:
                            tg.cancel_scope.cancel()
                            return result
                    await self._wait()
            finally:
                self._tg = None
        raise AssertionError("unreachable")  # pragma: no cover (the loop only ends by return)

    async def _wait(self) -> None:
        """Sleep until something is fed or the core's deadline passes; then let the core act on
        the time (``on_timer`` does nothing before its deadline)."""
        deadline = self._core.next_deadline()
        delay = math.inf if deadline is None else deadline - now()
        if delay > 0:
            with anyio.move_on_after(delay):
                await self._wake.wait()
        else:
            await anyio.lowlevel.checkpoint()
        self._wake = anyio.Event()
        self._queue.extend(self._core.on_timer(now()))

"""Local task backends' long polls and reports (spec/tasks.md §8), over the provider core.

A backend (``kn.run_task_backend``, ``kachery task backend``) calls ``/api/tasks/poll`` again and
again: each poll (re)registers its functions with the core
(:class:`~kachery_node.protocol.task_registrations.Registrations`) and waits, at most its
``timeout``, until the core has queued tasks this backend offers; ``/api/tasks/update`` reports
progress, results and errors. What happens to the tasks of a backend that stops polling is the
core's rule; this module only waits and wakes.
"""

from __future__ import annotations

from typing import Any

import anyio

from ..protocol.task_provider import TaskProvider
from ..protocol.task_registrations import registration_table
from .task_provider_driver import TaskProviderDriver


class TaskBackends:
    """The backends' side of the local API (see the module docstring)."""

    def __init__(self, core: TaskProvider, driver: TaskProviderDriver) -> None:
        self.core, self.driver = core, driver
        self._waiting: set[anyio.Event] = set()  # one per poll waiting for a task

    async def poll(self, backend_id: str, functions: list[dict[str, Any]], *, max_tasks: int,
                   running: list[str], timeout: float) -> list[dict[str, Any]]:
        """A backend's long-poll: (re)register its functions, return up to ``max_tasks`` tasks
        (``[]`` after ``timeout`` seconds). Raises TaskArgumentError for malformed functions."""
        table = registration_table(functions)
        self.core.poll_started(backend_id, table, running, anyio.current_time())
        try:
            with anyio.move_on_after(timeout):
                while True:
                    woken = anyio.Event()
                    tasks, actions = self.core.take(backend_id, max_tasks, anyio.current_time())
                    if tasks:
                        self.driver.spawn(actions)  # "running" goes out while the backend starts
                        return [task.to_json() for task in tasks]
                    self._waiting.add(woken)
                    try:
                        await woken.wait()
                    finally:
                        self._waiting.discard(woken)
            return []
        finally:
            self.core.poll_ended(backend_id, anyio.current_time())
            self.driver.rearm()

    def wake(self) -> None:
        """A task was queued: every waiting poll looks again."""
        for event in list(self._waiting):
            event.set()

    async def update(self, backend_id: str, task_key: str, status: str, *, progress: Any = None,
                     result: Any = None, error: str | None = None) -> None:
        """A backend reports on a task it holds (running + progress, finished + result, error).
        Raises TaskError if it holds no such task, TaskArgumentError for an unknown status."""
        actions = self.core.on_update(backend_id, task_key, status, anyio.current_time(),
                                      progress=progress, result=result, error=error)
        await self.driver.carry_out(actions)

    def describe(self) -> list[dict[str, Any]]:
        """The backends registered now (``/api/status``): ID, function IDs, tasks held."""
        return self.core.describe_backends(anyio.current_time())

    def gone(self, backend_id: str) -> None:
        """The backend's poll connection closed: it stopped (no grace period)."""
        self.core.backend_gone(backend_id)
        self.driver.rearm()

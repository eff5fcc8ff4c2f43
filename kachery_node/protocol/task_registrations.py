"""Local task backends' registrations (spec/tasks.md §8), as data without I/O.

A backend registers ``{function_id, function_type, channels?}`` with every long poll of
``/api/tasks/poll``; it counts as registered while a poll is open and for ``grace`` seconds
after the last one ended, or until its poll connection closes (:meth:`Registrations.gone`).
:class:`Registrations` answers which backend offers which function on which channel, and which
tasks each holds; the provider core (:mod:`.task_provider`) decides what happens to the tasks
of a backend that stopped. Times are the driver's monotonic seconds, passed in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .task_messages import TaskArgumentError, validate_function_id, validate_function_type

log = logging.getLogger("kachery.tasks")

#: ``{(channel or None for every channel, function_id): function_type}``
FunctionTable = dict[tuple[str | None, str], str]


def registration_table(functions: Any) -> FunctionTable:
    """A backend's ``functions`` (``[{function_id, function_type, channels?}]``) as
    ``{(channel or None, function_id): type}``; raises TaskArgumentError if malformed."""
    if not isinstance(functions, list) or not all(isinstance(f, dict) for f in functions):
        raise TaskArgumentError("'functions' must be a list of {function_id, function_type, channels?}")
    table: FunctionTable = {}
    for f in functions:
        fid = validate_function_id(f.get("function_id"))
        ftype = validate_function_type(f.get("function_type"))
        channels = f.get("channels") or [None]
        if not isinstance(channels, list) or not all(ch is None or isinstance(ch, str) for ch in channels):
            raise TaskArgumentError("'channels' must be a list of channel names")
        for ch in channels:
            table[(ch, fid)] = ftype
    return table


@dataclass
class Registration:
    """One backend: what it offers, until when, and the task keys it holds."""

    backend_id: str
    functions: FunctionTable
    expires: float = 0.0
    polling: int = 0
    held: set[str] = field(default_factory=set)

    def offers(self, channel: str, function_id: str) -> str | None:
        """The type this backend registered ``function_id`` with for ``channel``, if it did."""
        return self.functions.get((channel, function_id)) or self.functions.get((None, function_id))

    def live(self, now: float) -> bool:
        return self.polling > 0 or self.expires > now


class Registrations:
    """Every backend registered now (or lately: until :meth:`expire` removes it)."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._backends: dict[str, Registration] = {}

    def get(self, backend_id: str) -> Registration | None:
        return self._backends.get(backend_id)

    def poll_started(self, backend_id: str, functions: FunctionTable, running: Iterable[str],
                     now: float) -> bool:
        """A poll began: (re)register ``functions``; the backend holds only the task keys it
        says it is ``running`` (the others it finished or dropped). True if it offers less than
        before (queued tasks may have lost their last backend)."""
        backend = self._backends.get(backend_id)
        if backend is None:
            backend = self._backends[backend_id] = Registration(backend_id, functions)
            log.info("task backend %s registered %d function(s)", backend_id[:8], len(functions))
            narrowed = False
        else:
            narrowed = not functions.items() >= backend.functions.items()
            backend.functions = functions
        backend.held &= set(running)
        backend.polling += 1
        return narrowed

    def poll_ended(self, backend_id: str, now: float) -> None:
        """A poll ended (tasks returned, or its timeout): registered ``grace`` seconds more."""
        backend = self._backends.get(backend_id)
        if backend is not None:
            backend.polling = max(0, backend.polling - 1)
            backend.expires = now + self.grace

    def gone(self, backend_id: str) -> None:
        """The backend's poll connection closed: it stopped (no grace period)."""
        backend = self._backends.get(backend_id)
        if backend is not None and not backend.polling:
            backend.expires = 0.0

    def offered_type(self, channel: str, function_id: str, now: float) -> str | None:
        """The type some live backend registered ``function_id`` with on ``channel``."""
        for backend in self._backends.values():
            if backend.live(now):
                ftype = backend.offers(channel, function_id)
                if ftype:
                    return ftype
        return None

    def functions(self, channel: str, now: float) -> list[tuple[str, str]]:
        """``(function_id, type)`` offered on ``channel`` by live backends, sorted."""
        return sorted({(fid, ftype) for b in self._backends.values() if b.live(now)
                       for (ch, fid), ftype in b.functions.items() if ch in (None, channel)})

    def expire(self, now: float) -> list[Registration]:
        """Remove and return the backends that stopped counting as registered."""
        gone = [b for b in self._backends.values() if not b.live(now)]
        for backend in gone:
            del self._backends[backend.backend_id]
            log.info("task backend %s stopped polling", backend.backend_id[:8])
        return gone

    def next_expiry(self) -> float | None:
        """When :meth:`expire` may next remove a backend."""
        times = [b.expires for b in self._backends.values() if not b.polling]
        return min(times) if times else None

    def describe(self, now: float) -> list[dict[str, Any]]:
        """The backends registered now (``/api/status``): ID, function IDs, tasks held."""
        return [{"backend_id": b.backend_id, "functions": sorted({fid for _ch, fid in b.functions}),
                 "running": len(b.held)}
                for b in self._backends.values() if b.live(now)]

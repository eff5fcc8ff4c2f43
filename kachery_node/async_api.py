"""The async API: ``await kn.aload_file(...)``, ``await kn.arequest_task(...)`` and friends, for
code that runs an event loop (a Jupyter notebook, a web app) and must never block it.

Each function is its synchronous twin (:mod:`kachery_node.api`, :func:`kachery_node.request_task`)
run in a worker thread with :func:`anyio.to_thread.run_sync`, so it works under asyncio and under
trio alike, and the loop keeps running while a file is read, fetched from a channel (through the
daemon, or straight from the buckets) and verified. Example, in a notebook cell::

    data = await kn.aload_json("sha1://…/params.json")
    handle = await kn.arequest_task("lab.fit.1", {"x": 3})
    result = await handle.await_result()

Cancelling the awaiting task (a timeout, a closed web request) returns control at once; the
worker thread finishes or fails on its own (every network wait it makes has a timeout) and what
it verified is stored as usual. ``progress`` callbacks are called from that worker thread.

The synchronous functions keep working inside a running asyncio loop (they block it while they
run, as any blocking call does); these are for when that matters.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.to_thread

from . import api

if TYPE_CHECKING:
    from .apps.tasks import TaskHandle

T = TypeVar("T")


async def _in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), abandon_on_cancel=True)


async def aload_file(uri: str, dest: str | os.PathLike | None = None, *, channel: str | None = None,
                     progress: Callable[[int, int], None] | None = None) -> str:
    """:func:`kachery_node.load_file`, awaited without blocking the event loop."""
    return await _in_thread(api.load_file, uri, dest, channel=channel, progress=progress)


async def aload_bytes(uri: str, start: int = 0, end: int | None = None, *,
                      channel: str | None = None) -> bytes:
    """:func:`kachery_node.load_bytes`, awaited without blocking the event loop (a remote
    range moves only the chunks covering it)."""
    return await _in_thread(api.load_bytes, uri, start, end, channel=channel)


async def aload_text(uri: str, *, channel: str | None = None) -> str:
    """:func:`kachery_node.load_text`, awaited without blocking the event loop."""
    return await _in_thread(api.load_text, uri, channel=channel)


async def aload_json(uri: str, *, channel: str | None = None) -> Any:
    """:func:`kachery_node.load_json`, awaited without blocking the event loop."""
    return await _in_thread(api.load_json, uri, channel=channel)


async def aload_npy(uri: str, *, channel: str | None = None) -> Any:
    """:func:`kachery_node.load_npy`, awaited without blocking the event loop."""
    return await _in_thread(api.load_npy, uri, channel=channel)


async def aload_pkl(uri: str, *, channel: str | None = None, max_bytes: int | None = None) -> Any:
    """:func:`kachery_node.load_pkl` (safe unpickling, same limits), awaited without blocking the
    event loop."""
    return await _in_thread(api.load_pkl, uri, channel=channel, max_bytes=max_bytes)


async def arequest_task(function_id: str | None = None, kwargs: dict[str, Any] | None = None,
                        **options: Any) -> TaskHandle:
    """:func:`kachery_node.request_task` (same arguments), awaited; returns the
    :class:`~kachery_node.TaskHandle` at once, whose ``await handle.await_result()`` waits for
    the result without blocking the event loop."""
    from .apps.tasks import request_task

    return await _in_thread(request_task, function_id, kwargs, **options)


__all__ = ["aload_bytes", "aload_file", "aload_json", "aload_npy", "aload_pkl", "aload_text",
           "arequest_task"]

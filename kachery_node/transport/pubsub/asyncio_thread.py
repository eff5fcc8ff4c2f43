"""An asyncio event loop in a thread of its own, driven from trio: how asyncio-only SDKs (nats-py,
Ably realtime) run inside the trio daemon.

Why a thread and not trio-asyncio: trio-asyncio swaps asyncio's event-loop policy for the whole
process once imported, which would change behaviour for every other asyncio user in the same
process (notebooks, tests of the asyncio API). A private loop in a daemon thread touches nothing
else. It costs a thread hop each way (about 0.5 ms more per message than native asyncio,
dependencies-notes §6), which the live-feed latency budget absorbs.

Rules: trio code never touches the SDK's objects directly; it calls :meth:`AsyncioThread.run`
(await a coroutine's result, cancellable) or :meth:`AsyncioThread.submit` (fire and forget).
SDK callbacks hand results back to trio with :meth:`AsyncioThread.to_trio`, which preserves
their order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

log = logging.getLogger("kachery.pubsub")
T = TypeVar("T")
START_TIMEOUT_S = 10.0


class AsyncioThread:
    """One asyncio loop in a daemon thread. Create it from trio, ``stop()`` it when done."""

    def __init__(self, name: str = "kachery-asyncio") -> None:
        self._trio_token = trio.lowlevel.current_trio_token()
        self.loop: asyncio.AbstractEventLoop | None = None
        ready = threading.Event()
        self._thread = threading.Thread(target=self._main, args=(ready,), name=name, daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT_S):
            raise RuntimeError("the asyncio thread did not start")

    def _main(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()  # made in this thread (see dependencies-notes §6)
        self.loop = loop
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` on the asyncio loop and return its result to trio (cancellable)."""
        assert self.loop is not None
        fut = asyncio.run_coroutine_threadsafe(fn(*args), self.loop)
        done = trio.Event()
        fut.add_done_callback(lambda _: self._soon(done.set))
        try:
            await done.wait()
        except trio.Cancelled:
            fut.cancel()
            raise
        return fut.result()

    def submit(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> concurrent.futures.Future:
        """Start ``fn(*args)`` on the asyncio loop without waiting; failures are logged."""
        assert self.loop is not None
        fut = asyncio.run_coroutine_threadsafe(fn(*args), self.loop)
        fut.add_done_callback(_log_failure)
        return fut

    def to_trio(self, fn: Callable[..., Any], *args: Any) -> None:
        """From the asyncio thread: call ``fn(*args)`` in trio, in call order."""
        self._soon(fn, *args)

    def _soon(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self._trio_token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            pass

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop (cancelling what still runs there) and join the thread."""
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)


def _log_failure(fut: concurrent.futures.Future) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("asyncio task failed: %r", fut.exception())

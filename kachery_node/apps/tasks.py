"""Tasks for scripts: offer functions to a channel, and request them (spec/tasks.md).

Offering (a *task backend*, a process next to the node's daemon)::

    import kachery_node as kn

    @kn.taskfunction("lab.add.1", type="pure-calculation")
    def add(*, a, b):
        return a + b

    kn.run_task_backend(channels=["lab"], functions=[add])   # runs until interrupted

Requesting (on any node of the channel with the request-tasks role)::

    handle = kn.request_task("lab.add.1", {"a": 1, "b": 2}, channel="lab", timeout=30)
    handle.wait()           # -> 3, or raises kn.TaskError / kn.NoProviderError / kn.TaskTimeoutError
    handle.statuses         # ["assigned", "queued", "running", "finished"]; a cache hit: ["finished"]
    handle.from_cache, handle.stale, handle.warnings, handle.provider

Pure calculations come from the channel's bucket cache when someone computed them before;
queries ask a provider first and fall back to the cache (``stale=True``) only if none answers;
actions are never cached and run at most once per request ID (pass ``request_id=`` to retry
safely). Results are signed by the node that computed them and accepted only from nodes that
hold the provide-tasks role in the channel's signed membership.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import default_storage_dir
from ..daemon_client import DaemonClient
from ..errors import DaemonError, DaemonNotRunningError
from ..protocol.task_messages import (
    FUNCTION_TYPES,
    NoProviderError,
    TaskArgumentError,
    TaskError,
    TaskTimeoutError,
    task_hash,
    to_json_value,
    validate_function_id,
    validate_function_type,
)

__all__ = [
    "NoProviderError",
    "TaskArgumentError",
    "TaskError",
    "TaskFunction",
    "TaskHandle",
    "TaskTimeoutError",
    "current_task",
    "report_progress",
    "request_task",
    "run_task_backend",
    "task_hash",
    "taskfunction",
]

log = logging.getLogger("kachery.tasks")

POLL_SECONDS = 15.0
BACKOFF_MIN, BACKOFF_MAX = 0.2, 5.0
PROGRESS_INTERVAL = 0.25  # seconds between published progress reports of one task
_ERRORS: dict[str, type[Exception]] = {
    "TaskError": TaskError, "TaskTimeoutError": TaskTimeoutError, "NoProviderError": NoProviderError,
    "TaskArgumentError": TaskArgumentError, "NotJoinedError": TaskError,
}


# ----------------------------------------------------------------------------- task functions
@dataclass(frozen=True)
class TaskFunction:
    """A Python function registered under a function ID and type (see :func:`taskfunction`)."""

    function_id: str
    function_type: str
    fn: Callable[..., Any]

    def __call__(self, **kwargs: Any) -> Any:
        return self.fn(**kwargs)


def taskfunction(function_id: str, *, type: str = "pure-calculation") -> Callable[[Callable], TaskFunction]:
    """Register a function (keyword JSON arguments only) as a task function.

    ``type`` is ``"pure-calculation"`` (cached for everyone), ``"query"`` (fresh when possible)
    or ``"action"`` (never cached, at most once). Put a version in the ID (``"lab.metrics.2"``)
    and bump it when the output changes: cached results are found by ID and arguments."""
    validate_function_id(function_id)
    validate_function_type(type)

    def wrap(fn: Callable) -> TaskFunction:
        task_function = TaskFunction(function_id, type, fn)
        _DECORATED[function_id] = task_function  # for run_task_backend(task_function_ids=...)
        return task_function

    return wrap


#: Every function decorated in this process, by ID: the original's run_task_backend took IDs.
_DECORATED: dict[str, TaskFunction] = {}


_current = threading.local()


def report_progress(progress: str | float | dict) -> None:
    """From inside a running task function: publish a progress status to the requester
    (a message, a fraction, or a small JSON object); at most 4 a second are sent, the rest
    dropped. Does nothing outside a task."""
    reporter = getattr(_current, "reporter", None)
    if reporter is not None:
        reporter(progress)


@dataclass(frozen=True)
class TaskContext:
    """The task being run by this thread of a backend (see :func:`current_task`)."""

    function_id: str
    channel: str
    request_id: str
    task_hash: str
    #: The node that requested it: its envelope was verified by the daemon, which also checked
    #: that it holds request-tasks in the channel's signed membership.
    requester: str


def current_task() -> TaskContext | None:
    """Inside a task function: who asked for this run, on which channel. None elsewhere."""
    return getattr(_current, "task", None)


def _functions_of(functions: Iterable[TaskFunction] | dict[str, TaskFunction]) -> dict[str, TaskFunction]:
    items = functions.values() if isinstance(functions, dict) else functions
    table: dict[str, TaskFunction] = {}
    for f in items:
        if not isinstance(f, TaskFunction):
            raise TaskArgumentError(f"{f!r} is not a task function: decorate it with @kn.taskfunction(...)")
        table[f.function_id] = f
    if not table:
        raise TaskArgumentError("run_task_backend needs at least one task function")
    return table


# ----------------------------------------------------------------------------- backend
def run_task_backend(*, channels: list[str] | None = None,
                     functions: Iterable[TaskFunction] | dict[str, TaskFunction] | None = None,
                     max_concurrency: int = 4, storage_dir: str | os.PathLike | None = None,
                     stop: threading.Event | None = None,
                     task_function_ids: Iterable[str] | None = None) -> None:
    """Offer ``functions`` on ``channels`` (all joined channels if None) through this node's
    daemon, running at most ``max_concurrency`` tasks at once, until ``stop`` is set or the
    process is interrupted. A daemon that is down or restarting is waited for (with backoff).

    ``task_function_ids`` (the original's keyword) names functions decorated with
    :func:`taskfunction` in this process instead of passing them."""
    if task_function_ids is not None:
        if functions is not None:
            raise TaskArgumentError("give functions= or task_function_ids=, not both")
        if isinstance(task_function_ids, str):
            raise TaskArgumentError("task_function_ids is a list of function IDs, not one string")
        unknown = [i for i in task_function_ids if i not in _DECORATED]
        if unknown:
            raise TaskArgumentError(
                f"no function decorated with @kn.taskfunction has the ID {unknown[0]!r} in this "
                f"process (decorated: {', '.join(sorted(_DECORATED)) or 'none'})")
        functions = [_DECORATED[i] for i in task_function_ids]
    if functions is None:
        raise TaskArgumentError("run_task_backend needs functions= (or task_function_ids=)")
    table = _functions_of(functions)
    if max_concurrency < 1:
        raise TaskArgumentError("max_concurrency must be at least 1")
    storage = Path(storage_dir) if storage_dir else default_storage_dir()
    stop = stop or threading.Event()
    backend_id = secrets.token_hex(8)
    registered = [{"function_id": f.function_id, "function_type": f.function_type,
                   **({"channels": list(channels)} if channels else {})} for f in table.values()]
    try:
        _serve(storage, backend_id, table, registered, max_concurrency, stop)
    except KeyboardInterrupt:
        log.info("task backend interrupted")


def _serve(storage: Path, backend_id: str, table: dict[str, TaskFunction], registered: list[dict],
           max_concurrency: int, stop: threading.Event) -> None:
    running: dict[str, Any] = {}
    lock = threading.Lock()
    slot_freed = threading.Event()
    backoff = BACKOFF_MIN
    warned = False
    with ThreadPoolExecutor(max_concurrency, thread_name_prefix="kachery-task") as pool:
        while not stop.is_set():
            client = DaemonClient(storage)  # re-read: a restarted daemon may listen elsewhere
            with lock:
                busy = list(running)
                slot_freed.clear()
            free = max_concurrency - len(busy)
            # All slots busy: a quick poll that takes nothing keeps the functions registered,
            # then wait for a slot (or a second) rather than hold a long poll we cannot serve.
            body = {"backend_id": backend_id, "functions": registered, "running": busy,
                    "max_tasks": free, "timeout": POLL_SECONDS if free else 0}
            try:
                tasks = client.request("POST", "/api/tasks/poll", json_body=body,
                                       timeout=POLL_SECONDS + 15)["tasks"]
            except (DaemonError, KeyError, TypeError) as exc:
                if not warned:
                    log.warning("task backend: cannot reach the daemon (%s); retrying", exc)
                    warned = True
                stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            if warned:
                log.warning("task backend: connected to the daemon at %s", client.base_url)
            warned, backoff = False, BACKOFF_MIN
            for task in tasks:
                with lock:
                    running[task["task_key"]] = task
                pool.submit(_run_one, client, backend_id, table, task, running, lock, slot_freed)
            if not free:
                slot_freed.wait(1.0)


def _post(client: DaemonClient, path: str, body: dict[str, Any]) -> None:
    client.request("POST", path, json_body=body, timeout=60.0)


def _run_one(client: DaemonClient, backend_id: str, table: dict[str, TaskFunction],
             task: dict[str, Any], running: dict[str, Any], lock: threading.Lock,
             slot_freed: threading.Event) -> None:
    key = task["task_key"]
    base = {"backend_id": backend_id, "task_key": key}

    last = [0.0]

    def report(progress: Any) -> None:
        now = time.monotonic()
        if now - last[0] < PROGRESS_INTERVAL:
            return  # a function reporting in a tight loop must not flood the channel
        last[0] = now
        try:
            _post(client, "/api/tasks/update", {**base, "status": "running", "progress": progress})
        except DaemonError as exc:
            log.info("progress report for %s failed: %s", task["function_id"], exc)

    try:
        fn = table.get(task["function_id"])
        _current.reporter = report
        _current.task = TaskContext(task["function_id"], task["channel"], task["request_id"],
                                    task["task_hash"], task["requester"])
        try:
            if fn is None:
                raise TaskError(f"this backend has no function {task['function_id']!r}")
            result = fn.fn(**task["kwargs"])
            update = {**base, "status": "finished", "result": to_json_value(result)}
        except Exception as exc:
            log.info("task %s raised %s: %s", task["function_id"], type(exc).__name__, exc)
            update = {**base, "status": "error", "error": f"{type(exc).__name__}: {exc}"}
        finally:
            _current.reporter = _current.task = None
        try:
            _post(client, "/api/tasks/update", update)
        except DaemonError as exc:
            log.warning("could not report %s of %s: %s", update["status"], task["function_id"], exc)
        except TypeError as exc:  # the result is not JSON
            _post(client, "/api/tasks/update", {**base, "status": "error",
                                                "error": f"the result is not JSON-serializable: {exc}"})
    finally:
        with lock:
            running.pop(key, None)
            slot_freed.set()


# ----------------------------------------------------------------------------- requesting
class TaskHandle:
    """A requested task. Statuses arrive in the background; :meth:`wait` returns the result.

    Attributes: ``function_id``, ``task_hash``, ``request_id``, ``status`` (latest),
    ``statuses`` (each change, in order), ``progress`` (latest progress report), ``provider``,
    ``from_cache``, ``stale`` (a query answered from the cache because no provider answered),
    ``warnings`` (results that failed verification and were ignored, and the like)."""

    def __init__(self, function_id: str, kwargs: dict[str, Any], *, function_type: str | None,
                 channel: str | None, timeout: float, request_id: str,
                 storage_dir: Path) -> None:
        self.function_id = function_id
        self.task_hash = task_hash(function_id, kwargs)
        self.request_id = request_id
        self.timeout = timeout
        self.status = "requested"
        self.statuses: list[str] = []
        self.progress: Any = None
        self.provider: str | None = None
        self.from_cache = False
        self.stale = False
        self.warnings: list[str] = []
        self._result: Any = None
        self._error: Exception | None = None
        self._done = threading.Event()
        self._on_status: list[Callable[[TaskHandle], None]] = []
        body = {"function_id": function_id, "kwargs": to_json_value(kwargs), "timeout": timeout,
                "request_id": request_id, **({"channel": channel} if channel else {}),
                **({"function_type": function_type} if function_type else {})}
        self._client = DaemonClient(storage_dir)
        self._storage_dir = storage_dir
        self._thread = threading.Thread(target=self._stream, args=(body,), daemon=True,
                                        name=f"kachery-task-{function_id}")
        self._thread.start()

    def on_status(self, callback: Callable[[TaskHandle], None]) -> None:
        """Call ``callback(handle)`` on every status change (from a background thread)."""
        self._on_status.append(callback)

    def _set_status(self, status: str) -> None:
        self.status = status
        if not self.statuses or self.statuses[-1] != status:  # progress reports repeat "running"
            self.statuses.append(status)
        for cb in self._on_status:
            try:
                cb(self)
            except Exception:
                log.exception("task status callback failed")

    def _stream(self, body: dict[str, Any]) -> None:
        try:
            with self._client.stream("POST", "/api/tasks/request", json_body=body,
                                     read_timeout=self.timeout + 30) as lines:
                for line in lines:
                    self._line(line)
                    if self._done.is_set():
                        return
            raise DaemonError(f"the daemon stopped answering while running {self.function_id}")
        except DaemonNotRunningError:
            self._fail(DaemonNotRunningError(
                f"no kachery daemon is running for {self._storage_dir}: start one with "
                "`kachery node start`"))
        except DaemonError as exc:
            if exc.status is not None:  # the daemon refused the request: its own words
                self._fail(DaemonError(exc.reason or str(exc), status=exc.status, reason=exc.reason))
            else:
                self._fail(DaemonError(f"requesting {self.function_id} through the daemon failed: {exc}"))
        except Exception as exc:
            self._fail(exc)

    def _line(self, line: dict[str, Any]) -> None:
        kind = line.get("type")
        if kind == "status":
            self.provider = line.get("provider", self.provider)
            if "progress" in line:
                self.progress = line["progress"]
            self._set_status(line.get("status", "running"))
        elif kind == "finished":
            self._result = line.get("result")
            self.provider = line.get("provider")
            self.from_cache, self.stale = bool(line.get("from_cache")), bool(line.get("stale"))
            self.warnings = list(line.get("warnings", []))
            self._set_status("finished")
            self._done.set()
        elif kind == "error":
            cls = _ERRORS.get(line.get("kind", ""), TaskError)
            self._fail(cls(line.get("error", "the task failed")))

    def _fail(self, exc: Exception) -> None:
        if self._done.is_set():
            return
        self._error = exc
        self._set_status("error")
        self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def error(self) -> Exception | None:
        return self._error

    @property
    def result(self) -> Any:
        """The result of a finished task (the original's property). Raises the task's error if
        it failed, and :class:`TaskError` if it has not finished yet (use :meth:`wait`)."""
        if not self._done.is_set():
            raise TaskError(f"{self.function_id} has not finished (status: {self.status}); "
                            "use handle.wait() to wait for its result")
        if self._error is not None:
            raise self._error
        return self._result

    def wait(self, timeout: float | None = None, *, timeout_sec: float | None = None) -> Any:
        """The result; raises TaskError (the remote message), NoProviderError or TaskTimeoutError
        (never returns None for "not yet", unlike the original).

        ``timeout`` (or the original's ``timeout_sec``) defaults to the request's timeout (plus
        a margin for the daemon's answer)."""
        if timeout_sec is not None:
            if timeout is not None:
                raise TaskArgumentError("give timeout= or timeout_sec=, not both")
            timeout = timeout_sec
        limit = self.timeout + 10 if timeout is None else timeout
        if not self._done.wait(limit):
            raise TaskTimeoutError(f"{self.function_id}: no result within {limit:g} s "
                                   f"(last status: {self.status})")
        if self._error is not None:
            raise self._error
        return self._result


    async def await_result(self, timeout: float | None = None) -> Any:
        """:meth:`wait`, awaited without blocking the event loop (asyncio or trio): for
        notebooks and web apps. Cancelling the awaiting task stops the wait, not the task."""
        import anyio
        import anyio.to_thread

        # Its own limiter: a thread per waiting handle, never counted against (nor starved by)
        # the default limiter that file loads share.
        return await anyio.to_thread.run_sync(functools.partial(self.wait, timeout),
                                              abandon_on_cancel=True, limiter=anyio.CapacityLimiter(1))


def request_task(function_id: str | None = None, kwargs: dict[str, Any] | None = None, *,
                 channel: str | None = None, timeout: float = 30.0,
                 function_type: str | None = None, request_id: str | None = None,
                 storage_dir: str | os.PathLike | None = None,
                 task_function_id: str | None = None, task_kwargs: dict[str, Any] | None = None,
                 task_function_type: str | None = None) -> TaskHandle:
    """Request ``function_id(**kwargs)`` from the node's channels (all joined, or ``channel``)
    through the local daemon; returns a :class:`TaskHandle` at once.

    ``function_type`` is optional: by default the provider's registration says what the
    function is (and a pure calculation's next request looks in the bucket cache first). A
    request that names a type is refused by a provider whose function has another.
    ``request_id`` makes retries safe: an action runs at most once per request ID.
    ``task_function_id``, ``task_kwargs`` and ``task_function_type`` are the original's names
    for the first three."""
    function_id = _one_of("function_id", function_id, "task_function_id", task_function_id)
    kwargs = _one_of("kwargs", kwargs, "task_kwargs", task_kwargs)
    function_type = _one_of("function_type", function_type, "task_function_type", task_function_type)
    if function_id is None:
        raise TaskArgumentError("request_task needs a function ID")
    validate_function_id(function_id)
    if function_type is not None and function_type not in FUNCTION_TYPES:
        validate_function_type(function_type)
    kwargs = {} if kwargs is None else kwargs
    task_hash(function_id, kwargs)  # bad arguments fail here, before anything is sent
    if timeout <= 0:
        raise TaskArgumentError("timeout must be positive")
    storage = Path(storage_dir) if storage_dir else default_storage_dir()
    return TaskHandle(function_id, kwargs, function_type=function_type, channel=channel,
                      timeout=float(timeout), request_id=request_id or secrets.token_hex(12),
                      storage_dir=storage)


def _one_of(name: str, value: Any, original_name: str, original_value: Any) -> Any:
    """A parameter given under our name or the original's, not both."""
    if original_value is None:
        return value
    if value is not None:
        raise TaskArgumentError(f"give {name}= or {original_name}=, not both")
    return original_value


def wait_all(handles: Iterable[TaskHandle], timeout: float | None = None) -> list[Any]:
    """Results of several handles (raises the first failure)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    return [h.wait(None if deadline is None else max(0.0, deadline - time.monotonic())) for h in handles]

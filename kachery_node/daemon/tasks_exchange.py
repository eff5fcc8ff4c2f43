"""Tasks across nodes: requesting them, and providing them through local task backends
(spec/tasks.md §4-7).

Theory of operation
-------------------
*Requester* (``request``; a node with the request-tasks role):

0. The function's type comes from the caller, or else from the providers: their offers say
   how their backend registered the function, and the requester remembers it per function ID
   (so that the next request of a pure calculation looks in the cache first).
1. A pure calculation looks in each channel's bucket first (``task_results/<p(hash)>``); a
   result object is accepted only if its signature verifies and its provider holds provide-tasks
   in the channel's signed membership. A bad object is skipped and reported as a warning.
2. Publish ``requestTask`` on ``request-tasks``; providers whose backends registered the function
   answer ``offer``; the first offer wins and gets ``assignTask`` (so one provider runs it,
   however many heard it). If that offer is the first news that the function is a pure
   calculation, the cache is read before assigning. No offer within :attr:`TaskTimeouts.offer`
   on any channel: a query (or a function whose type nobody told) falls back to the cache
   (``stale``), everything else fails with "no provider on channel X offers function F".
3. Follow the assigned provider's ``taskStatus`` (queued, running + progress, finished, error);
   silence longer than :attr:`TaskTimeouts.silence` fails the task. ``finished`` carries the
   signed result object inline, or says it is in the bucket; it is verified as in step 1.

*Provider* (a node with provide-tasks whose local backends poll ``/api/tasks/poll``):

* Backends register ``{function_id, type}`` per channel for as long as they keep polling.
* ``requestTask`` for a registered function from a node allowed to request tasks: ``offer``.
  ``assignTask`` naming this node: record the request ID in ``<storage>/tasks.db`` *before* it
  runs (at most once: a retried or replayed request ID is answered from the record and never
  runs again), queue it for a backend, publish ``queued``.
* While a backend holds a task, the last status is re-published every
  :attr:`TaskTimeouts.heartbeat` seconds. A backend that stops polling loses its tasks: pure
  calculations and queries are queued again for the next backend; an action fails (it may have
  taken effect, so it is not run twice).
* One computation per pure calculation at a time: a task assigned while the same task hash is
  queued or running here (from another request, maybe another requester) is not queued again;
  it follows that computation (its statuses, then its signed result, which names no request).
* On completion the result is signed with the node key, uploaded to the bucket (pure and query
  only) and sent inline when small.

Rules: ``on_message`` never blocks on a backend; every wait has a deadline; nothing unverified
is returned to a requester.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import orjson
from anyio.streams.memory import MemoryObjectSendStream

from ..protocol.bucket_layout import task_result_path
from ..protocol.node_messages import Envelope, EnvelopeError
from ..protocol.task_messages import (
    FUNCTION_TYPES,
    InvalidTaskResultError,
    NoProviderError,
    TaskArgumentError,
    TaskError,
    TaskResult,
    decode_result_object,
    encode_result_object,
    sign_result,
    task_hash,
    validate_function_id,
    validate_function_type,
    verify_result,
)
from .channel_link import BucketObjectMissing, ChannelLink

log = logging.getLogger("kachery.daemon.tasks")

REQUEST_BAND, STATUS_BAND = "request-tasks", "provide-tasks"
INLINE_RESULT_MAX_BYTES = 30_000  # the embedded relay refuses messages over 64 KiB by default
MAX_KWARGS_BYTES = 40_000  # arguments ride in one pub-sub message
KEEP_ACCEPTED_DAYS = 30  # tasks.db forgets requests older than this
MAX_LEARNED_TYPES = 10_000  # function types learned from offers (oldest forgotten first)
FINAL = ("finished", "error")
STATUSES = ("queued", "running", "finished", "error")
Emit = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TaskTimeouts:
    """Seconds. Tests may shrink them."""

    #: Requester: wait for an ``offer`` after ``requestTask`` (per channel).
    offer: float = 2.0
    #: Requester: longest silence from the assigned provider before giving up.
    silence: float = 20.0
    #: Provider: re-publish a held task's status this often.
    heartbeat: float = 5.0
    #: Provider: a backend's registration outlives the end of its last poll by this much.
    registration_grace: float = 3.0
    #: Provider: an offer that was not assigned is forgotten after this long.
    offer_ttl: float = 30.0
    #: Provider: finished requests stay in memory (for retries) this long; tasks.db keeps them.
    keep_finished: float = 120.0
    #: Any bucket read.
    bucket: float = 10.0


@dataclass
class _Backend:
    backend_id: str
    functions: dict[tuple[str | None, str], str]  # (channel or None, function_id) -> type
    expires: float
    polling: int = 0
    held: set[str] = field(default_factory=set)  # task keys
    woken: anyio.Event = field(default_factory=anyio.Event)

    def offers(self, channel: str, function_id: str) -> str | None:
        return self.functions.get((channel, function_id)) or self.functions.get((None, function_id))


@dataclass
class _Incoming:
    """A request this node offered to run or runs."""

    key: str  # local task key handed to backends
    link: ChannelLink
    requester: str
    request_id: str
    function_id: str
    function_type: str
    kwargs: dict[str, Any]
    task_hash: str
    state: str = "offered"  # offered | queued | running | finished | error
    backend_id: str | None = None
    last_status: dict[str, Any] | None = None
    since: float = field(default_factory=time.monotonic)
    queued_at: float = 0.0
    #: Requests for the same pure calculation that wait for this one's computation.
    followers: list[_Incoming] = field(default_factory=list)


class _Executed:
    """``<storage>/tasks.db``: request IDs this node accepted, and their outcomes."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # A commit survives the process being killed, not a power loss; FULL would cost ~6 ms of
        # fsync per commit (three per task) on the daemon's event loop.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS accepted_requests (channel TEXT, request_id TEXT, "
            "function_id TEXT, requester TEXT, accepted_ms INTEGER, final_status TEXT, "
            "PRIMARY KEY (channel, request_id))")
        cutoff = int(time.time() * 1000) - KEEP_ACCEPTED_DAYS * 86_400_000
        self._db.execute("DELETE FROM accepted_requests WHERE accepted_ms < ?", (cutoff,))
        # Requester side: which provider each of our requests was assigned to, so that a retry
        # of the request goes to that provider only (at most once across providers).
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS assigned_requests (channel TEXT, request_id TEXT, "
            "provider TEXT, function_id TEXT, assigned_ms INTEGER, PRIMARY KEY (channel, request_id))")
        self._db.execute("DELETE FROM assigned_requests WHERE assigned_ms < ?", (cutoff,))

    def assigned_to(self, channel: str, request_id: str) -> str | None:
        row = self._db.execute(
            "SELECT provider FROM assigned_requests WHERE channel = ? AND request_id = ?",
            (channel, request_id)).fetchone()
        return row[0] if row else None

    def assign(self, channel: str, request_id: str, provider: str, function_id: str) -> None:
        self._db.execute("INSERT OR IGNORE INTO assigned_requests VALUES (?, ?, ?, ?, ?)",
                         (channel, request_id, provider, function_id, int(time.time() * 1000)))

    def accept(self, inc: _Incoming) -> bool:
        """Record the request; False if it was accepted before (then it must not run)."""
        cur = self._db.execute(
            "INSERT OR IGNORE INTO accepted_requests VALUES (?, ?, ?, ?, ?, NULL)",
            (inc.link.channel, inc.request_id, inc.function_id, inc.requester, int(time.time() * 1000)))
        return cur.rowcount == 1

    def outcome(self, channel: str, request_id: str) -> tuple[bool, dict | None]:
        row = self._db.execute(
            "SELECT final_status FROM accepted_requests WHERE channel = ? AND request_id = ?",
            (channel, request_id)).fetchone()
        if row is None:
            return False, None
        return True, (orjson.loads(row[0]) if row[0] else None)

    def finish(self, channel: str, request_id: str, status: dict[str, Any]) -> None:
        self._db.execute(
            "UPDATE accepted_requests SET final_status = ? WHERE channel = ? AND request_id = ?",
            (orjson.dumps(status).decode(), channel, request_id))


def new_request_id() -> str:
    return secrets.token_hex(12)


class TaskExchange:
    """Requests tasks on channels and provides them through local backends."""

    def __init__(self, storage_dir: Path, timeouts: TaskTimeouts | None = None) -> None:
        self.timeouts = timeouts or TaskTimeouts()
        self._executed = _Executed(Path(storage_dir) / "tasks.db")
        self._backends: dict[str, _Backend] = {}
        self._incoming: dict[tuple[str, str], _Incoming] = {}  # (channel, request_id)
        self._by_key: dict[str, _Incoming] = {}
        self._queue: list[_Incoming] = []
        self._waiters: dict[str, set[MemoryObjectSendStream[Envelope]]] = {}  # request_id
        # Provider: the request whose computation of a pure calculation is queued or running,
        # by (channel, task hash); identical requests follow it instead of running again.
        self._computing: dict[tuple[str, str], _Incoming] = {}
        # Requester: function types told by providers' offers, by function ID.
        self._learned_types: dict[str, str] = {}
        self._tg: anyio.abc.TaskGroup | None = None

    # ------------------------------------------------------------------ lifecycle
    async def run(self, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            tg.start_soon(self._maintenance_loop)

    # ------------------------------------------------------------------ messages
    async def on_message(self, link: ChannelLink, band: str, env: Envelope) -> None:
        body, kind = env.body, env.body.get("type")
        if band == STATUS_BAND and kind in ("offer", "taskStatus"):
            request_id = body.get("request_id")
            for stream in list(self._waiters.get(request_id, ())) if isinstance(request_id, str) else ():
                try:
                    stream.send_nowait(env)
                except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass
        elif band == REQUEST_BAND and kind == "requestTask":
            await self._on_request(link, env)
        elif band == REQUEST_BAND and kind == "assignTask":
            await self._on_assign(link, env)
        elif band == REQUEST_BAND and kind == "probeTasks":
            await self._on_probe(link, env)

    # ------------------------------------------------------------------ requester side
    async def request(
        self,
        links: Sequence[ChannelLink],
        function_id: str,
        kwargs: dict[str, Any],
        *,
        function_type: str | None = None,
        request_id: str | None = None,
        emit: Emit = lambda status: None,
    ) -> dict[str, Any]:
        """Run a task on the first channel that offers it; returns the final line:
        ``{"type": "finished", "result", "provider", "from_cache", "stale", "warnings", ...}``.

        ``function_type`` may be omitted: the providers' offers say it (and it is remembered).

        Raises NoProviderError, TaskError (with the remote message) or TaskArgumentError; the
        caller bounds the whole call with its own deadline."""
        validate_function_id(function_id)
        h = task_hash(function_id, kwargs)
        size = len(orjson.dumps(kwargs))
        if size > MAX_KWARGS_BYTES:
            raise TaskArgumentError(
                f"task arguments of {size} bytes exceed the {MAX_KWARGS_BYTES}-byte limit (they travel "
                "in one pub-sub message): store large inputs (kn.store_npy, kn.upload_file) and pass URIs")
        ftype = (validate_function_type(function_type) if function_type is not None
                 else self._learned_types.get(function_id))  # None: the first offer will say
        request_id = request_id or new_request_id()
        warnings: list[str] = []
        usable = [link for link in links if "request-tasks" in link.roles]
        if not usable:
            raise NoProviderError(
                "this node lacks the request-tasks role on "
                + (", ".join(link.channel for link in links) or "every channel (it joined none)"))
        if ftype == "pure-calculation":
            cached = await self._from_cache(usable, function_id, h, warnings)
            if cached is not None:
                return cached
        tried = []
        for link in usable:
            final = await self._request_on(link, function_id, ftype, kwargs, h, request_id, warnings,
                                           emit, usable)
            if final is not None:
                return final
            tried.append(link.channel)
        if ftype in ("query", None):
            cached = await self._from_cache(usable, function_id, h, warnings)
            if cached is not None:
                cached["stale"] = True
                warnings.append(f"no provider answered within {self.timeouts.offer:g} s; "
                                "this is the last cached result of the "
                                + ("query" if ftype else "function"))
                return cached
        where = " or ".join(tried)
        raise NoProviderError(
            f"no provider on channel {where} offers function {function_id!r} "
            f"(nobody answered within {self.timeouts.offer:g} s)"
            + (" and no cached result is in the bucket" if ftype in ("query", None) else "")
            + _warning_suffix(warnings))

    def _learn_type(self, function_id: str, function_type: Any) -> str | None:
        """Remember the type a provider's offer gives ``function_id``; the type, if valid."""
        if function_type not in FUNCTION_TYPES:
            return None
        self._learned_types.pop(function_id, None)
        self._learned_types[function_id] = function_type
        while len(self._learned_types) > MAX_LEARNED_TYPES:
            del self._learned_types[next(iter(self._learned_types))]
        return function_type

    async def _from_cache(self, links: Sequence[ChannelLink], function_id: str, h: str,
                          warnings: list[str]) -> dict[str, Any] | None:
        for link in links:
            try:
                with anyio.fail_after(self.timeouts.bucket):
                    data = await link.bucket_get(task_result_path(link.channel, h))
            except BucketObjectMissing:
                continue
            except Exception as exc:  # the bucket is down: not fatal, ask a provider
                log.info("cache lookup on %s failed: %s", link.channel, exc)
                continue
            try:
                res = self._accept(link, decode_result_object(data), function_id, h)
            except InvalidTaskResultError as exc:
                msg = f"ignored the cached result on {link.channel}: {exc}"
                log.warning("%s", msg)
                warnings.append(msg)
                continue
            return _finished(link, res, from_cache=True, warnings=warnings)
        return None

    def _accept(self, link: ChannelLink, obj: Any, function_id: str, h: str) -> TaskResult:
        res = verify_result(obj, task_hash=h, function_id=function_id)
        if not link.may(res.provider, "provide-tasks"):
            raise InvalidTaskResultError(
                f"result signed by {res.provider[:12]}…, which does not hold provide-tasks "
                f"on {link.channel}")
        return res

    async def _request_on(self, link: ChannelLink, function_id: str, ftype: str | None,
                          kwargs: dict[str, Any], h: str, request_id: str, warnings: list[str],
                          emit: Emit, cache_links: Sequence[ChannelLink]) -> dict[str, Any] | None:
        """Request on one channel; None if nobody offered. ``ftype`` None: the offer says it."""
        send, receive = anyio.create_memory_object_stream[Envelope](256)
        self._waiters.setdefault(request_id, set()).add(send)
        try:
            try:
                await link.publish(REQUEST_BAND, {
                    "type": "requestTask", "request_id": request_id, "function_id": function_id,
                    **({"function_type": ftype} if ftype else {}), "kwargs": kwargs, "task_hash": h})
            except EnvelopeError as exc:
                raise TaskArgumentError(f"task arguments are too large to send: {exc}") from exc
            except (PermissionError, ConnectionError) as exc:
                warnings.append(f"{link.channel}: {exc}")
                return None
            # A retry of a request assigned before goes to the same provider, or nowhere.
            earlier = self._executed.assigned_to(link.channel, request_id)
            provider = None
            with anyio.move_on_after(self.timeouts.offer):
                async for env in receive:
                    kind, status = env.body.get("type"), env.body.get("status")
                    if earlier is not None and env.sender != earlier:
                        continue
                    if kind == "taskStatus" and status in FINAL:
                        # A retried request that the provider already ran: its recorded outcome.
                        return await self._final(link, env, function_id, h, ftype, warnings)
                    if kind == "taskStatus" and earlier is not None:
                        provider = earlier  # still running there: follow it
                        break
                    if kind == "offer":
                        offered = self._learn_type(function_id, env.body.get("function_type"))
                        if ftype is None and offered is not None:
                            ftype = offered
                            if offered == "pure-calculation":  # maybe computed before: no need to run
                                cached = await self._from_cache(cache_links, function_id, h, warnings)
                                if cached is not None:
                                    return cached
                        provider = env.sender
                        self._executed.assign(link.channel, request_id, provider, function_id)
                        await link.publish(REQUEST_BAND, {"type": "assignTask", "request_id": request_id,
                                                          "provider": provider})
                        emit({"type": "status", "status": "assigned", "provider": provider,
                              "channel": link.channel})
                        break
            if provider is None:
                if earlier is not None:
                    raise TaskError(
                        f"request {request_id} was assigned to {earlier[:12]}… on {link.channel} "
                        f"before, which did not answer within {self.timeouts.offer:g} s; it is not "
                        "given to another provider (at most once)")
                return None
            while True:
                with anyio.move_on_after(self.timeouts.silence):
                    env = await receive.receive()
                    if env.sender != provider or env.body.get("type") != "taskStatus":
                        continue
                    status = env.body.get("status")
                    if status in FINAL:
                        return await self._final(link, env, function_id, h, ftype, warnings)
                    if status in STATUSES:
                        line = {"type": "status", "status": status, "provider": provider}
                        if isinstance(env.body.get("progress"), str | int | float | dict):
                            line["progress"] = env.body["progress"]
                        if isinstance(env.body.get("note"), str):
                            line["note"] = env.body["note"]
                        emit(line)
                    continue
                raise TaskError(
                    f"provider {provider[:12]}… on {link.channel} went silent for "
                    f"{self.timeouts.silence:g} s while running {function_id!r}")
        finally:
            self._waiters[request_id].discard(send)
            if not self._waiters[request_id]:
                del self._waiters[request_id]
            send.close()
            receive.close()

    async def _final(self, link: ChannelLink, env: Envelope, function_id: str, h: str,
                     ftype: str | None, warnings: list[str]) -> dict[str, Any]:
        body = env.body
        if body.get("status") == "error":
            message = body.get("error") if isinstance(body.get("error"), str) else "unknown error"
            raise TaskError(f"{function_id} failed on {env.sender[:12]}…: {message}"
                            + _warning_suffix(warnings))
        obj = body.get("result_object")
        if obj is None and body.get("in_bucket") and ftype != "action":
            try:
                with anyio.fail_after(self.timeouts.bucket):
                    obj = decode_result_object(await link.bucket_get(task_result_path(link.channel, h)))
            except (BucketObjectMissing, TimeoutError, InvalidTaskResultError) as exc:
                raise TaskError(f"{function_id} finished on {env.sender[:12]}… but its result could "
                                f"not be read from the bucket: {exc!r}") from None
        try:
            res = self._accept(link, obj, function_id, h)
            if res.provider != env.sender:
                raise InvalidTaskResultError(
                    f"{env.sender[:12]}… finished the task with a result signed by {res.provider[:12]}…")
        except InvalidTaskResultError as exc:
            msg = f"ignored the result from {env.sender[:12]}…: {exc}"
            log.warning("%s", msg)
            warnings.append(msg)
            raise TaskError(f"{function_id}: no valid result" + _warning_suffix(warnings)) from None
        return _finished(link, res, from_cache=False, warnings=warnings)

    # ------------------------------------------------------------------ provider side
    def _offering_backend(self, channel: str, function_id: str) -> str | None:
        now = time.monotonic()
        for backend in self._backends.values():
            if backend.expires >= now or backend.polling:
                ftype = backend.offers(channel, function_id)
                if ftype:
                    return ftype
        return None

    async def _on_request(self, link: ChannelLink, env: Envelope) -> None:
        body = env.body
        request_id, function_id = body.get("request_id"), body.get("function_id")
        if "provide-tasks" not in link.roles or not isinstance(request_id, str) \
                or not isinstance(function_id, str) or not 8 <= len(request_id) <= 64:
            return
        ftype = self._offering_backend(link.channel, function_id)
        if ftype is None:
            return
        if not link.may(env.sender, "request-tasks"):
            log.info("ignoring a task request from %s: it may not request tasks on %s",
                     env.sender[:12], link.channel)
            return
        known = self._incoming.get((link.channel, request_id))
        if known is not None:
            if known.requester != env.sender:
                return
            if known.state == "offered":
                await self._publish(known, {"type": "offer", "function_id": function_id,
                                            "function_type": known.function_type})
            elif known.last_status is not None:
                await link.publish(STATUS_BAND, known.last_status)  # a retry: where it stands
            return
        accepted, outcome = self._executed.outcome(link.channel, request_id)
        if accepted:
            status = outcome or {
                "type": "taskStatus", "request_id": request_id, "status": "error",
                "error": "this request was accepted before but its outcome was lost (the provider "
                         "restarted); it is not run again"}
            await link.publish(STATUS_BAND, status)
            return
        kwargs, h = body.get("kwargs"), body.get("task_hash")
        try:
            # A requester may leave the type to the provider; one that names it must agree.
            if body.get("function_type", ftype) != ftype:
                raise TaskArgumentError(
                    f"{function_id} is a {ftype} here, not a {body.get('function_type')}")
            if not isinstance(kwargs, dict) or task_hash(function_id, kwargs) != h:
                raise TaskArgumentError("task_hash does not match the function ID and arguments")
        except TaskArgumentError as exc:
            await link.publish(STATUS_BAND, {"type": "taskStatus", "request_id": request_id,
                                             "status": "error", "error": str(exc)})
            return
        inc = _Incoming(secrets.token_hex(8), link, env.sender, request_id, function_id, ftype,
                        kwargs, h)
        self._incoming[(link.channel, request_id)] = inc
        self._by_key[inc.key] = inc
        await self._publish(inc, {"type": "offer", "function_id": function_id, "function_type": ftype})

    async def _on_assign(self, link: ChannelLink, env: Envelope) -> None:
        request_id = env.body.get("request_id")
        inc = self._incoming.get((link.channel, request_id)) if isinstance(request_id, str) else None
        if inc is None or inc.requester != env.sender or inc.state != "offered":
            return
        if env.body.get("provider") != link.node_id:
            self._forget(inc)  # another provider runs it
            return
        if not self._executed.accept(inc):
            return
        if inc.function_type == "pure-calculation":
            leader = self._computing.get((link.channel, inc.task_hash))
            if leader is not None and leader.state in ("queued", "running"):
                await self._follow(inc, leader)
                return
            self._computing[(link.channel, inc.task_hash)] = inc
        inc.state, inc.queued_at = "queued", time.monotonic()
        self._queue.append(inc)
        await self._status(inc, "queued")
        for backend in self._backends.values():
            backend.woken.set()

    async def _follow(self, inc: _Incoming, leader: _Incoming) -> None:
        """Answer ``inc`` from ``leader``'s computation of the same pure calculation."""
        log.info("%s (request %s) is already being computed here for request %s: answered from it",
                 inc.function_id, inc.request_id, leader.request_id)
        leader.followers.append(inc)
        inc.state, inc.queued_at = "queued", time.monotonic()
        await self._status(inc, "queued", note="the same calculation is already under way here")
        if leader.state == "running":
            inc.state = "running"
            extra = {k: v for k, v in (leader.last_status or {}).items() if k == "progress"}
            await self._status(inc, "running", **extra)

    async def _on_probe(self, link: ChannelLink, env: Envelope) -> None:
        if "provide-tasks" not in link.roles or not link.may(env.sender, "request-tasks"):
            return
        now = time.monotonic()
        functions = sorted({
            (fid, ftype) for b in self._backends.values() if b.expires >= now or b.polling
            for (ch, fid), ftype in b.functions.items() if ch in (None, link.channel)})
        if functions:
            await link.publish(STATUS_BAND, {
                "type": "taskFunctions", "request_id": env.body.get("request_id", ""),
                "functions": [{"function_id": f, "function_type": t} for f, t in functions]})

    async def _publish(self, inc: _Incoming, body: dict[str, Any]) -> None:
        try:
            await inc.link.publish(STATUS_BAND, {**body, "request_id": inc.request_id})
        except Exception as exc:  # the requester's retry or silence timeout deals with it
            log.info("publishing %s for %s on %s failed: %s", body.get("type"), inc.function_id,
                     inc.link.channel, exc)

    async def _status(self, inc: _Incoming, status: str, **extra: Any) -> None:
        body = {"type": "taskStatus", "request_id": inc.request_id, "status": status, **extra}
        inc.last_status = body
        if status in FINAL:
            inc.state = status
            inc.since = time.monotonic()
            self._executed.finish(inc.link.channel, inc.request_id, body)
            if self._computing.get((inc.link.channel, inc.task_hash)) is inc:
                del self._computing[(inc.link.channel, inc.task_hash)]
        await self._publish(inc, body)
        for follower in list(inc.followers):  # the same computation: the same news
            if follower.state not in FINAL:
                follower.state = status if status in ("queued", "running") else follower.state
                await self._status(follower, status, **extra)
        if status in FINAL:
            inc.followers.clear()

    def _forget(self, inc: _Incoming) -> None:
        self._incoming.pop((inc.link.channel, inc.request_id), None)
        self._by_key.pop(inc.key, None)
        if self._computing.get((inc.link.channel, inc.task_hash)) is inc:
            del self._computing[(inc.link.channel, inc.task_hash)]
        if inc in self._queue:
            self._queue.remove(inc)

    # ------------------------------------------------------------------ backends (local API)
    async def poll(self, backend_id: str, functions: list[dict[str, Any]], *, max_tasks: int,
                   running: list[str], timeout: float) -> list[dict[str, Any]]:
        """A backend's long-poll: (re)register its functions, return up to ``max_tasks`` tasks."""
        table = registration_table(functions)
        backend = self._backends.get(backend_id)
        if backend is None:
            backend = self._backends[backend_id] = _Backend(backend_id, table, 0.0)
            log.info("task backend %s registered %d function(s)", backend_id[:8], len(functions))
        backend.functions = table
        backend.held &= set(running)  # what the backend no longer runs, it finished or dropped
        backend.polling += 1
        try:
            with anyio.move_on_after(timeout):
                while True:
                    backend.woken = anyio.Event()
                    tasks = self._take(backend, max_tasks)
                    if tasks:
                        return tasks
                    await backend.woken.wait()
            return []
        finally:
            backend.polling -= 1
            backend.expires = time.monotonic() + self.timeouts.registration_grace

    def describe_backends(self) -> list[dict[str, Any]]:
        """The task backends registered now (``/api/status``): ID, function IDs, tasks held."""
        now = time.monotonic()
        return [{"backend_id": b.backend_id, "functions": sorted({fid for _ch, fid in b.functions}),
                 "running": len(b.held)}
                for b in self._backends.values() if b.polling or b.expires >= now]

    def backend_gone(self, backend_id: str) -> None:
        """The backend's poll connection closed: it stopped (no grace period)."""
        backend = self._backends.get(backend_id)
        if backend is not None and not backend.polling:
            backend.expires = 0.0

    def _take(self, backend: _Backend, max_tasks: int) -> list[dict[str, Any]]:
        taken = []
        for inc in list(self._queue):
            if len(taken) >= max_tasks:
                break
            if backend.offers(inc.link.channel, inc.function_id):
                self._queue.remove(inc)
                inc.state, inc.backend_id = "running", backend.backend_id
                backend.held.add(inc.key)
                taken.append({"task_key": inc.key, "channel": inc.link.channel,
                              "request_id": inc.request_id, "function_id": inc.function_id,
                              "function_type": inc.function_type, "kwargs": inc.kwargs,
                              "task_hash": inc.task_hash, "requester": inc.requester})
                assert self._tg is not None
                self._tg.start_soon(self._status, inc, "running")
        return taken

    async def update(self, backend_id: str, task_key: str, status: str, *, progress: Any = None,
                     result: Any = None, error: str | None = None) -> None:
        """A backend reports on a task it holds."""
        inc = self._by_key.get(task_key)
        if inc is None or inc.backend_id != backend_id or inc.state in FINAL:
            raise TaskError(f"no task {task_key!r} is running for this backend (the daemon may "
                            "have restarted, or the task was given to another backend)")
        if status == "running":
            extra = {} if progress is None else {"progress": progress}
            await self._status(inc, "running", **extra)
        elif status == "error":
            self._release(inc)
            await self._status(inc, "error", error=str(error or "the task function failed"))
        elif status == "finished":
            self._release(inc)
            await self._finish(inc, result)
        else:
            raise TaskArgumentError(f"unknown task status {status!r} (running, finished or error)")

    def _release(self, inc: _Incoming) -> None:
        backend = self._backends.get(inc.backend_id or "")
        if backend is not None:
            backend.held.discard(inc.key)

    async def _finish(self, inc: _Incoming, result: Any) -> None:
        try:
            obj = sign_result(inc.link.keypair, task_hash=inc.task_hash,
                              function_id=inc.function_id, result=result,
                              now_ms=int(time.time() * 1000))
        except TaskArgumentError as exc:
            await self._status(inc, "error", error=str(exc))
            return
        data = encode_result_object(obj)
        cache = inc.function_type != "action"
        if len(data) <= INLINE_RESULT_MAX_BYTES:
            # The requester gets the result at once; the bucket copy (for later requesters)
            # follows, off the requester's critical path.
            await self._status(inc, "finished", result_object=obj)
            if cache:
                await self._upload_result(inc, data)
        elif not cache:
            await self._status(inc, "error", error=(
                f"the result ({len(data)} bytes) is too large to send inline, and action results "
                "are not cached"))
        elif await self._upload_result(inc, data):
            await self._status(inc, "finished", in_bucket=True)
        else:
            await self._status(inc, "error", error=(
                f"the result ({len(data)} bytes) is too large to send inline and the upload to the "
                "bucket failed"))

    async def _upload_result(self, inc: _Incoming, data: bytes) -> bool:
        try:
            with anyio.fail_after(60):
                await inc.link.upload(task_result_path(inc.link.channel, inc.task_hash), data)
            return True
        except Exception as exc:
            log.warning("uploading the result of %s to %s failed: %s", inc.function_id,
                        inc.link.channel, exc)
            return False

    async def _maintenance_loop(self) -> None:
        while True:
            await anyio.sleep(min(1.0, self.timeouts.heartbeat))
            now = time.monotonic()
            for backend in list(self._backends.values()):
                if backend.polling or backend.expires >= now:
                    continue
                del self._backends[backend.backend_id]
                log.info("task backend %s stopped polling", backend.backend_id[:8])
                for key in backend.held:
                    inc = self._by_key.get(key)
                    if inc is not None and inc.state == "running":
                        await self._orphaned(inc)
            for inc in list(self._queue):
                waited = now - inc.queued_at
                if waited > self.timeouts.registration_grace \
                        and self._offering_backend(inc.link.channel, inc.function_id) is None:
                    self._queue.remove(inc)
                    await self._status(inc, "error", error=(
                        f"no task backend on this node offers {inc.function_id} any more (it "
                        "stopped before running the task)"))
            for inc in list(self._incoming.values()):
                age = now - inc.since
                expired = ((inc.state == "offered" and age > self.timeouts.offer_ttl)
                           or (inc.state in FINAL and age > self.timeouts.keep_finished))
                if expired:
                    self._forget(inc)
                elif inc.state in ("queued", "running") and inc.last_status is not None \
                        and age > self.timeouts.heartbeat:
                    inc.since = now
                    await self._publish(inc, inc.last_status)

    async def _orphaned(self, inc: _Incoming) -> None:
        """The backend running ``inc`` went away."""
        if inc.function_type == "action":
            await self._status(inc, "error", error=(
                "the task backend stopped while running this action; it is not run again "
                "(it may or may not have taken effect)"))
            return
        inc.state, inc.backend_id, inc.queued_at = "queued", None, time.monotonic()
        self._queue.append(inc)
        await self._status(inc, "queued", note="the task backend stopped; queued again")
        for backend in self._backends.values():
            backend.woken.set()


def registration_table(functions: Any) -> dict[tuple[str | None, str], str]:
    """A backend's ``functions`` (``[{function_id, function_type, channels?}]``) as
    ``{(channel or None, function_id): type}``; raises TaskArgumentError if malformed."""
    if not isinstance(functions, list) or not all(isinstance(f, dict) for f in functions):
        raise TaskArgumentError("'functions' must be a list of {function_id, function_type, channels?}")
    table: dict[tuple[str | None, str], str] = {}
    for f in functions:
        fid = validate_function_id(f.get("function_id"))
        ftype = validate_function_type(f.get("function_type"))
        channels = f.get("channels") or [None]
        if not isinstance(channels, list) or not all(ch is None or isinstance(ch, str) for ch in channels):
            raise TaskArgumentError("'channels' must be a list of channel names")
        for ch in channels:
            table[(ch, fid)] = ftype
    return table


def _finished(link: ChannelLink, res: TaskResult, *, from_cache: bool, warnings: list[str]) -> dict:
    return {"type": "finished", "result": res.result, "provider": res.provider,
            "computed_ms": res.time_ms, "channel": link.channel, "from_cache": from_cache,
            "stale": False, "warnings": warnings}


def _warning_suffix(warnings: list[str]) -> str:
    return "" if not warnings else " (also: " + "; ".join(warnings) + ")"

"""The local API's task endpoints (spec/tasks.md §8), mounted by ``local_api.build_app``.

=====================================  =======  ============================================
``POST /api/tasks/poll``               client   backend long-poll: register functions, get tasks
``POST /api/tasks/update``             client   backend reports running/progress, result, error
``POST /api/tasks/request``            client   NDJSON status lines, then a final line
=====================================  =======  ============================================
"""

from __future__ import annotations

from typing import Any

import anyio
import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ..errors import KacheryError
from ..protocol.task_messages import TaskArgumentError
from ..protocol.task_registrations import registration_table
from .local_api import ApiError, DaemonContext, _channel_arg, _json, _json_body, _node, _require

MAX_POLL_SECONDS = 15.0
MAX_REQUEST_SECONDS = 24 * 3600.0


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ApiError(400, f"'{name}' must be a number of seconds in [{low:g}, {high:g}]")
    return float(value)


def _string(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"missing '{name}'")
    return value


def task_routes(ctx: DaemonContext) -> list[Route]:
    async def poll(request: Request) -> Response:
        _require(ctx, request, "client")
        body = await _json_body(request)
        functions = body.get("functions")
        # Checked here, not only in poll(): an error raised inside the task group below would
        # reach the client as a 500 (wrapped in an exception group).
        registration_table(functions)
        running = body.get("running", [])
        if not isinstance(running, list) or not all(isinstance(k, str) for k in running):
            raise ApiError(400, "'running' must be a list of task keys")
        max_tasks = body.get("max_tasks", 1)
        if type(max_tasks) is not int or not 0 <= max_tasks <= 1000:
            raise ApiError(400, "'max_tasks' must be an integer in [0, 1000]")
        backend_id = _string(body, "backend_id")
        timeout = _number(body, "timeout", MAX_POLL_SECONDS, 0, MAX_POLL_SECONDS)
        tasks: list[dict[str, Any]] = []
        gone = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def watch_disconnect() -> None:
                # A backend that goes away stops being registered now, not at the poll's end.
                while (await request.receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()
                gone.set()

            tg.start_soon(watch_disconnect)
            tasks = await _node(ctx).tasks.poll(backend_id, functions, max_tasks=max_tasks,
                                                running=running, timeout=timeout)
            tg.cancel_scope.cancel()
        if gone.is_set():
            _node(ctx).tasks.backend_gone(backend_id)
        return _json({"tasks": tasks})

    async def update(request: Request) -> Response:
        _require(ctx, request, "client")
        body = await _json_body(request)
        error = body.get("error")
        if error is not None and not isinstance(error, str):
            raise ApiError(400, "'error' must be a string")
        await _node(ctx).tasks.update(
            _string(body, "backend_id"), _string(body, "task_key"), _string(body, "status"),
            progress=body.get("progress"), result=body.get("result"), error=error)
        return _json({"ok": True})

    async def request_task(request: Request) -> Response:
        """Stream NDJSON: ``{"type": "status", ...}`` lines, then ``finished`` or ``error``."""
        _require(ctx, request, "client")
        body = await _json_body(request)
        function_id = _string(body, "function_id")
        kwargs = body.get("kwargs", {})
        if not isinstance(kwargs, dict):
            raise ApiError(400, "'kwargs' must be a JSON object of keyword arguments")
        function_type = body.get("function_type")
        request_id = body.get("request_id")
        if request_id is not None and (not isinstance(request_id, str) or not 8 <= len(request_id) <= 64):
            raise ApiError(400, "'request_id' must be a string of 8 to 64 characters")
        timeout = _number(body, "timeout", 30.0, 0.1, MAX_REQUEST_SECONDS)
        links = _node(ctx).links(_channel_arg(body))
        exchange = _node(ctx).tasks
        send, receive = anyio.create_memory_object_stream[bytes](100)

        def emit(line: dict[str, Any]) -> None:
            try:
                send.send_nowait(orjson.dumps(line) + b"\n")
            except anyio.WouldBlock:
                pass  # a slow reader misses a status line, never the final one

        async def run() -> None:
            async with send:
                try:
                    with anyio.fail_after(timeout):
                        line = await exchange.request(
                            links, function_id, kwargs, function_type=function_type,
                            request_id=request_id, emit=emit)
                except TimeoutError:
                    line = {"type": "error", "kind": "TaskTimeoutError",
                            "error": f"{function_id}: no result within the {timeout:g} s timeout"}
                except (KacheryError, TaskArgumentError) as exc:
                    line = {"type": "error", "kind": type(exc).__name__, "error": str(exc)}
                await send.send(orjson.dumps(line) + b"\n")

        async def lines():
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                async with receive:
                    async for line in receive:
                        yield line

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    return [
        Route("/api/tasks/poll", poll, methods=["POST"]),
        Route("/api/tasks/update", update, methods=["POST"]),
        Route("/api/tasks/request", request_task, methods=["POST"]),
    ]

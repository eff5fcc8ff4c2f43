"""The local API's file endpoints, mounted by ``local_api.build_app`` (authentication, input
rules and error statuses: :mod:`.local_api`).

=====================================  =======  ============================================
``POST /api/files/fetch``              client   NDJSON progress lines while a file (or the
                                                chunks covering a ``range`` of it) is fetched
                                                from a channel, then its local path
``POST /api/files/upload``             client   upload a stored file to a channel's bucket
``GET  /api/files/read``               browser  ``?uri=&start=&end=&channel=`` bytes of a file,
                                                fetched first if not stored (web-safe limit)
=====================================  =======  ============================================

Web-safe limit (:class:`.local_api_browser.BrowserPolicy`): a file a page reads that this node
does not store yet is downloaded only up to ``browser_max_fetch_bytes`` (else 413 while fetching, the
partial download discarded).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import anyio
import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ..errors import CorruptedFileError, InvalidUriError, KacheryError, LinkedFileChangedError, NotFoundError
from ..storage.file_uris import FileUri, parse_uri
from ..storage.node_storage import Storage
from .local_api import ApiError, DaemonContext, _channel_arg, _int_param, _json, _json_body, _node, _require
from .uploads import upload_file

log = logging.getLogger("kachery.daemon.api")


def _range_arg(value: Any) -> tuple[int, int | None] | None:
    """The optional ``"range": {"start": int, "end": int | null}`` of a fetch, or answer 400."""
    if value is None:
        return None
    start, end = (value.get("start"), value.get("end")) if isinstance(value, dict) else (None, None)
    if not (type(start) is int and start >= 0 and (end is None or (type(end) is int and end >= start))):
        raise ApiError(400, "'range' must be {\"start\": int >= 0, \"end\": int >= start or null}")
    return start, end


def _file_uri(value: Any, *, chunk_allowed: bool = False) -> FileUri:
    """Parse the ``sha1://`` URI of a whole file (or, if ``chunk_allowed``, of a chunk:
    ``?chunkOf=``) from a request body, or answer 400 (before any stream starts)."""
    if not isinstance(value, str):
        raise ApiError(400, "missing 'uri' (sha1://<40 hex>/<name>)")
    try:
        key = parse_uri(value)
    except InvalidUriError as exc:
        raise ApiError(400, str(exc)) from exc
    except ValueError as exc:  # a decoder that still lets a ValueError out is the client's fault too
        raise ApiError(400, f"invalid URI {value[:200]!r}: {exc}") from exc
    if key.chunk_of is not None and not chunk_allowed:
        raise ApiError(400, f"{value} names a chunk of sha1://{key.chunk_of.file_sha1}; "
                            "name the file itself (with its ?manifest=)")
    return key


def _stored_path(storage: Storage, key: FileUri) -> str | None:
    try:
        return storage.load_file(key)
    except (NotFoundError, CorruptedFileError, LinkedFileChangedError):
        return None


async def _file_blocks(path: str, start: int, end: int):
    """The bytes [start, end) of a file in 1 MiB blocks (memory stays bounded)."""
    async with await anyio.open_file(path, "rb") as f:
        await f.seek(start)
        left = end - start
        while left > 0:
            block = await f.read(min(left, 1 << 20))
            if not block:
                return
            left -= len(block)
            yield block


async def _fetch_for_page(ctx: DaemonContext, uri: str, channel: str | None) -> str:
    """Fetch a file for a page: cancelled (413) as soon as its size, or what arrived, passes
    the policy's ``max_fetch_bytes`` (the partial download is discarded)."""
    limit = ctx.browser_policy.max_fetch_bytes
    node = _node(ctx)
    links = node.links(channel)
    seen = 0
    with anyio.CancelScope() as scope:
        def progress(done: int, total: int) -> None:  # called in the event loop's thread
            nonlocal seen
            seen = max(seen, done, total or 0)
            if seen > limit:
                scope.cancel()

        path = await node.files.fetch(links, uri, progress=progress)
    if scope.cancel_called:
        log.warning("refused a page's download of %s: %d bytes > browser_max_fetch_bytes %d",
                    uri, seen, limit)
        raise ApiError(413, f"{uri} is at least {seen} bytes, more than a page may make this node "
                            f"download ({limit} bytes, [daemon] browser_max_fetch_bytes in "
                            "config.toml); load it with the client (kn.load_file or "
                            "`kachery load`) first, then the page reads it from the node")
    return path


def file_routes(ctx: DaemonContext) -> list[Route]:
    """The routes of the file endpoints (table above) serving ``ctx``."""

    async def fetch_file(request: Request) -> Response:
        """Stream NDJSON: progress lines, then {"type": "finished", "path"} or an error line.
        With ``"range": {"start", "end"}`` only the chunks covering those bytes of a large file
        are fetched (into its partial copy, whose path is then returned)."""
        _require(ctx, request, "client")
        body = await _json_body(request)
        uri = body.get("uri")
        _file_uri(uri, chunk_allowed=True)
        byte_range = _range_arg(body.get("range"))
        links = _node(ctx).links(_channel_arg(body))
        send, receive = anyio.create_memory_object_stream[bytes](100)

        def progress(done: int, total: int) -> None:
            try:
                send.send_nowait(orjson.dumps({"type": "progress", "done": done, "total": total}) + b"\n")
            except anyio.WouldBlock:
                pass  # the client reads slowly: skip a progress line rather than block

        async def run_fetch() -> None:
            async with send:
                try:
                    files = _node(ctx).files
                    path = (await files.fetch(links, uri, progress=progress) if byte_range is None
                            else await files.fetch_range(links, uri, *byte_range, progress=progress))
                    line = {"type": "finished", "path": path}
                except KacheryError as exc:
                    line = {"type": "error", "error": str(exc), "kind": type(exc).__name__}
                except Exception as exc:  # a bug, not the request: still end the stream with a line
                    log.exception("fetching %s failed", uri)
                    line = {"type": "error", "error": f"internal error: {exc!r}", "kind": "InternalError"}
                await send.send(orjson.dumps(line) + b"\n")

        async def lines():
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_fetch)
                async with receive:
                    async for line in receive:
                        yield line

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def upload(request: Request) -> Response:
        _require(ctx, request, "client")
        body = await _json_body(request)
        uri, channel = body.get("uri"), _channel_arg(body)
        if not isinstance(uri, str) or channel is None:
            raise ApiError(400, "upload needs 'uri' and 'channel'")
        _file_uri(uri)
        (link,) = _node(ctx).links(channel)
        with anyio.fail_after(3600):
            result = await upload_file(ctx.storage, link, uri)
        return _json({"uri": uri, "channel": channel, **result})

    async def read_file(request: Request) -> Response:
        """Bytes ``[start, end)`` of a file, fetched from a channel first if this node does not
        store it, within the browser policy's download limit."""
        _require(ctx, request, "browser")
        uri = request.query_params.get("uri")
        key = _file_uri(uri)
        start = _int_param(request, "start", 0)
        end = _int_param(request, "end", None)
        if end is not None and end < start:
            raise ApiError(400, f"'end' ({end}) is before 'start' ({start})")
        path = await anyio.to_thread.run_sync(_stored_path, ctx.storage, key)
        if path is None:
            path = await _fetch_for_page(ctx, uri, request.query_params.get("channel") or None)
        size = os.stat(path).st_size
        end = size if end is None else min(end, size)
        start = min(start, end)
        return StreamingResponse(
            _file_blocks(path, start, end), media_type="application/octet-stream",
            headers={"Content-Length": str(end - start), "X-Kachery-File-Size": str(size),
                     "Cache-Control": "no-store"})

    return [
        Route("/api/files/fetch", fetch_file, methods=["POST"]),
        Route("/api/files/upload", upload, methods=["POST"]),
        Route("/api/files/read", read_file, methods=["GET"]),
    ]

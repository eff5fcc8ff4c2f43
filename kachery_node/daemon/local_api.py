"""The daemon's local HTTP API on 127.0.0.1, for the Python client, the CLI and local web pages.

Authentication (:mod:`.local_tokens`): requests carry ``Authorization: Bearer <token>``. The client
token allows everything and travels only in that header; the browser token allows only the
read-only endpoints marked ``browser`` below, and may also travel as ``?token=<token>`` (for
``EventSource``, which cannot set headers). The client token in a URL is refused (403): URLs end
up in logs, browser history and Referer headers. Requests whose ``Host`` is not a loopback name
are refused (DNS-rebinding defence), and browsers may call the API cross-origin only from
origins in the CORS allow-list.

Input: every number in a query or header is ASCII digits in [0, :data:`MAX_POSITION`] (anything
else is a 400 naming the parameter), and every URI is parsed before a streamed answer starts,
so that a bad request gets a 4xx, never a 500 or a stream cut in the middle. Typed errors map
to statuses: not joined / not found 404, missing role 403, other :class:`KacheryError` 400.

Endpoints (JSON unless noted):

=====================================  =======  ============================================
``GET  /probe``                        none     node ID and API version (is a daemon here?)
``GET  /api/status``                   client   node, storage, uptime, channels
``POST /api/stop``                     client   graceful shutdown
``GET  /api/feeds/messages``           browser  ``?uri=&start=&end=`` records of a subfeed
``GET  /api/feeds/stream``             browser  ``?uri=&start=`` Server-Sent Events, resumable
``POST /api/feeds/follow``             client   follow a remote subfeed on a channel
``POST /api/feeds/unfollow``           client   stop following a remote subfeed (messages stay)
``POST /api/feeds/published``          client   re-read published-feeds.json now; list what is kept current
``POST /api/files/fetch``              client   NDJSON progress lines while a file (or the
                                                chunks covering a ``range`` of it) is fetched
                                                from a channel, then its local path
``POST /api/files/upload``             client   upload a stored file to a channel's bucket
``GET  /viewer``                       none     the built-in live viewer page (HTML)
=====================================  =======  ============================================

The task endpoints (``/api/tasks/poll``, ``/update``, ``/request``) are in
:mod:`.local_api_tasks`, with their own table.

The original daemon's routes that kachery-client 1.2.0 uses (``/store``, ``/feed/*``,
``/mutable/*``, ...) are served by ``legacy_api.py`` with the original's credential.

The stream sends one SSE event per message: ``id`` is the message number (so a reconnecting
``EventSource`` resumes after the last one it saw through ``Last-Event-ID``) and ``data`` is the
record as JSON: ``{"number", "timestamp_ms", "payload", "metadata"}``.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import anyio
import orjson
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import kachery_feeds

from ..config import NodeConfig
from ..errors import InvalidUriError, KacheryError, NotFoundError
from ..storage.file_uris import FileUri, parse_uri
from ..storage.node_storage import Storage
from .local_tokens import token_matches
from .node_runtime import MissingRoleError, NodeRuntime, NotJoinedError
from .store_changes import ChangeBroadcaster
from .uploads import upload_file

log = logging.getLogger("kachery.daemon.api")

API_VERSION = 1
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}
STREAM_PAGE = 500
KEEPALIVE_SECONDS = 15.0
# The largest message number or position the API takes: 2**53 - 1, the largest integer a browser
# holds exactly (SSE ids go through JavaScript), far below SQLite's int64.
MAX_POSITION = 2**53 - 1
_ASCII_DIGITS = re.compile(r"[0-9]{1,16}")  # str.isdigit() and int() also take '²', '٣', '1_0', ' 1'


@dataclass
class DaemonContext:
    """What the request handlers share: storage, identity, credentials and shutdown."""

    storage: Storage
    config: NodeConfig
    client_token: str
    browser_token: str
    cors_origins: list[str]
    changes: ChangeBroadcaster
    shutdown: anyio.Event = field(default_factory=anyio.Event)
    started_at: float = field(default_factory=time.time)
    node: NodeRuntime | None = None
    #: kachery-client 1.2.0's credential (``<storage>/client-auth``), see legacy_api.py
    legacy_auth_code: str = ""


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _require(ctx: DaemonContext, request: Request, level: str) -> None:
    """Refuse the request unless its token allows ``level`` ("client" or "browser")."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        token = auth[7:].strip()
        if token_matches(token, ctx.client_token):
            return
    else:
        token = request.query_params.get("token")
        if token is not None and token_matches(token, ctx.client_token):
            # Logged by proxies and kept in history: the full-access token never goes in a URL.
            raise ApiError(403, "the client token is accepted only in the Authorization header, "
                                "never in a URL (only the read-only browser token may travel there)")
    if token is None:
        raise ApiError(
            401,
            "missing token: send 'Authorization: Bearer <token>' "
            f"(the token is in {ctx.storage.directory}/daemon-token)",
        )
    if level == "browser" and token_matches(token, ctx.browser_token):
        return
    raise ApiError(403, "this token does not allow that request")


def _subfeed(ctx: DaemonContext, request: Request) -> kachery_feeds.Subfeed:
    uri = request.query_params.get("uri")
    if not uri:
        raise ApiError(400, "missing 'uri' query parameter (feed://<feedId>/<subfeed>)")
    try:
        sf = ctx.storage.feeds.load_subfeed(uri)
    except kachery_feeds.InvalidUriError as exc:
        raise ApiError(400, str(exc)) from exc
    if ctx.node is not None:
        ctx.node.touch(sf.feed_id, sf.subfeed_hash)  # read: a followed subfeed is not idle
    return sf


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def _channel_arg(body: dict[str, Any]) -> str | None:
    channel = body.get("channel")
    if channel is not None and not isinstance(channel, str):
        raise ApiError(400, "'channel' must be a channel name")
    return channel


def _node(ctx: DaemonContext) -> NodeRuntime:
    if ctx.node is None:
        raise ApiError(503, "the daemon's network side is not running")
    return ctx.node


def _position(raw: str, name: str) -> int:
    """A non-negative integer written in ASCII digits, at most :data:`MAX_POSITION`."""
    if not _ASCII_DIGITS.fullmatch(raw) or int(raw) > MAX_POSITION:
        shown = raw if len(raw) <= 40 else raw[:40] + "..."
        raise ApiError(400, f"'{name}' must be an integer in [0, {MAX_POSITION}] written in "
                            f"ASCII digits, got {shown!r}")
    return int(raw)


def _int_param(request: Request, name: str, default: int | None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    return _position(raw, name)


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


def _record_json(r: kachery_feeds.MessageRecord) -> bytes:
    return orjson.dumps(
        {"number": r.number, "timestamp_ms": r.timestamp_ms, "payload": r.payload, "metadata": r.metadata}
    )


def build_app(ctx: DaemonContext) -> Starlette:
    """The ASGI application serving the local API for ``ctx``."""
    # The original daemon's API for kachery-client 1.2.0 (legacy_api.py): its /probe fields too.
    from .legacy_api import legacy_routes, probe_fields

    original_probe = probe_fields(ctx)

    async def probe(request: Request) -> Response:
        return _json(
            {"ok": True, "kachery_daemon": True, "api_version": API_VERSION,
             "node_id": ctx.config.node_id, **original_probe}
        )

    async def status(request: Request) -> Response:
        _require(ctx, request, "client")
        return _json(
            {
                "node_id": ctx.config.node_id,
                "label": ctx.config.label,
                "owner": ctx.config.owner,
                "storage_dir": str(ctx.storage.directory),
                "uptime_s": round(time.time() - ctx.started_at, 3),
                "channels": ctx.node.describe_channels() if ctx.node else [],
                "task_backends": ctx.node.tasks.describe_backends() if ctx.node else [],
            }
        )

    async def stop(request: Request) -> Response:
        _require(ctx, request, "client")
        log.info("stop requested through the local API")

        # Shut down after the answer is sent, so the caller sees it succeed.
        async def shut_down() -> None:
            ctx.shutdown.set()

        return JSONResponse({"ok": True}, background=BackgroundTask(shut_down))

    async def messages(request: Request) -> Response:
        _require(ctx, request, "browser")
        sf = _subfeed(ctx, request)
        start = _int_param(request, "start", 0)
        end = _int_param(request, "end", None)
        records = sf.get_records(start, end)
        body = (
            b'{"uri":'
            + orjson.dumps(sf.uri)
            + b',"messages":['
            + b",".join(_record_json(r) for r in records)
            + b"]}"
        )
        return Response(body, media_type="application/json")

    async def stream(request: Request) -> Response:
        _require(ctx, request, "browser")
        sf = _subfeed(ctx, request)
        last_id = request.headers.get("last-event-id", "")
        if last_id:  # EventSource reconnect: resume after the last one seen
            start = min(_position(last_id, "Last-Event-ID") + 1, MAX_POSITION)
        else:
            start = _int_param(request, "start", 0)

        async def events():
            position = start
            yield b"retry: 1000\n\n"
            while True:
                changed = ctx.changes.current()
                records = sf.get_records(position, position + STREAM_PAGE)
                if records:
                    chunk = b"".join(b"id: %d\ndata: %s\n\n" % (r.number, _record_json(r)) for r in records)
                    position = records[-1].number + 1
                    yield chunk
                    continue
                with anyio.move_on_after(KEEPALIVE_SECONDS) as scope:
                    await changed.wait()
                if scope.cancelled_caught:
                    yield b": keepalive\n\n"

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def follow(request: Request) -> Response:
        _require(ctx, request, "client")
        body = await _json_body(request)
        try:
            parsed = kachery_feeds.parse_feed_uri(body.get("uri"))
        except kachery_feeds.InvalidUriError as exc:
            raise ApiError(400, str(exc)) from exc
        if parsed.subfeed_hash is None:
            raise ApiError(400, "follow needs a subfeed URI (feed://<feedId>/<subfeed>)")
        if ctx.storage.feeds.has_private_key(parsed.feed_id):
            return _json({"following": [], "local": True})
        channels = _node(ctx).follow(parsed.feed_id, parsed.subfeed_hash, _channel_arg(body))
        return _json({"following": channels, "local": False})

    async def unfollow(request: Request) -> Response:
        _require(ctx, request, "client")
        body = await _json_body(request)
        try:
            parsed = kachery_feeds.parse_feed_uri(body.get("uri"))
        except kachery_feeds.InvalidUriError as exc:
            raise ApiError(400, str(exc)) from exc
        if parsed.subfeed_hash is None:
            raise ApiError(400, "unfollow needs a subfeed URI (feed://<feedId>/<subfeed>)")
        return _json({"unfollowed": _node(ctx).unfollow(parsed.feed_id, parsed.subfeed_hash)})

    async def published(request: Request) -> Response:
        """Take up a change of ``published-feeds.json`` now (not at the next poll); answer the
        published subfeeds that are kept current (on channels that are up)."""
        _require(ctx, request, "client")
        node = _node(ctx)
        node.reload_publications(force=True)
        return _json({"published": [{"channel": w.channel, "uri": w.uri}
                                    for w in node.feeds.providing.core.published()]})

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

    async def viewer(request: Request) -> Response:
        html = resources.files("kachery_node.daemon").joinpath("viewer.html").read_text()
        return HTMLResponse(html, headers={"Cache-Control": "no-cache"})

    routes = [
        Route("/probe", probe, methods=["GET"]),
        Route("/api/status", status, methods=["GET"]),
        Route("/api/stop", stop, methods=["POST"]),
        Route("/api/feeds/messages", messages, methods=["GET"]),
        Route("/api/feeds/stream", stream, methods=["GET"]),
        Route("/api/feeds/follow", follow, methods=["POST"]),
        Route("/api/feeds/unfollow", unfollow, methods=["POST"]),
        Route("/api/feeds/published", published, methods=["POST"]),
        Route("/api/files/fetch", fetch_file, methods=["POST"]),
        Route("/api/files/upload", upload, methods=["POST"]),
        Route("/viewer", viewer, methods=["GET"]),
    ]
    # The task endpoints live in local_api_tasks.py.
    from .local_api_tasks import task_routes

    routes += task_routes(ctx)
    routes += legacy_routes(ctx)

    async def api_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, ApiError):
            status = exc.status
        else:
            not_found = isinstance(exc, NotJoinedError | NotFoundError)
            status = 404 if not_found else 403 if isinstance(exc, MissingRoleError) else 400
        log.info("%s %s -> %d %s", request.method, request.url.path, status, exc)
        return _json({"error": str(exc), "kind": type(exc).__name__}, status=status)

    app = Starlette(
        routes=routes,
        exception_handlers={ApiError: api_error, KacheryError: api_error},
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=ctx.cors_origins,
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            )
        ],
    )
    return _LoopbackOnly(app)


class _LoopbackOnly:
    """ASGI wrapper refusing requests whose Host header is not a loopback name.

    A web page on another origin can point a DNS name at 127.0.0.1 (DNS rebinding); checking
    Host keeps such pages from reaching the daemon as if they were same-origin.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
            if name not in _LOOPBACK_HOSTS:
                response = JSONResponse({"error": f"Host {host!r} is not a loopback address"}, 403)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

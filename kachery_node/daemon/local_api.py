"""The daemon's local HTTP API on 127.0.0.1, for the Python client, the CLI and local web pages.

Authentication (:mod:`.local_tokens`): requests carry ``Authorization: Bearer <token>``. The client
token allows everything and travels only in that header; the browser token allows only the
read-only endpoints marked ``browser`` in the tables, and may also travel as ``?token=<token>``
(for ``EventSource``, which cannot set headers). The client token in a URL is refused (403): URLs
end up in logs, browser history and Referer headers. Requests whose ``Host`` is not a loopback
name are refused (DNS-rebinding defence), and a request from a web page on an origin not in the
allow-list (``Origin`` header) is refused with 403 ``OriginNotAllowed`` and logged; what the
browser token may make the node download is limited (web-safe policy). Both:
:mod:`.local_api_browser`.

Input: every number in a query or header is ASCII digits in [0, :data:`MAX_POSITION`] (anything
else is a 400 naming the parameter), and every URI is parsed before a streamed answer starts,
so that a bad request gets a 4xx, never a 500 or a stream cut in the middle. Typed errors map
to statuses: not joined / not found 404, missing role 403, other :class:`KacheryError` 400.

Endpoints served here (JSON unless noted):

=====================================  =======  ============================================
``GET  /probe``                        none     node ID and API version (is a daemon here?)
``GET  /api/status``                   client   node, storage, uptime, channels
``POST /api/stop``                     client   graceful shutdown
``GET  /js/<file>``                     none     kachery.js (``js/src``), ES modules for pages
``GET  /viewer``                       none     the built-in live viewer page (HTML)
=====================================  =======  ============================================

The other endpoints are in their own modules, each with its table:

* :mod:`.local_api_feeds`: ``/api/feeds/messages``, ``/stream`` (Server-Sent Events),
  ``/follow``, ``/catch-up``, ``/unfollow``, ``/published``;
* :mod:`.local_api_files`: ``/api/files/fetch``, ``/upload``, ``/read``;
* :mod:`.local_api_tasks`: ``/api/tasks/poll``, ``/update``, ``/request``.

The original daemon's routes that kachery-client 1.2.0 uses (``/store``, ``/feed/*``,
``/mutable/*``, ...) are served by ``legacy_api.py`` with the original's credential.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import orjson
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ..config import NodeConfig
from ..errors import KacheryError, NotFoundError
from ..storage.node_storage import Storage
from .local_api_browser import BrowserPolicy, LoopbackOnly, OriginAllowList
from .local_tokens import token_matches
from .node_runtime import MissingRoleError, NodeRuntime, NotJoinedError
from .store_changes import ChangeBroadcaster

log = logging.getLogger("kachery.daemon.api")

API_VERSION = 1
# The largest message number or position the API takes: 2**53 - 1, the largest integer a browser
# holds exactly (SSE ids go through JavaScript), far below SQLite's int64.
MAX_POSITION = 2**53 - 1
#: js/ of the repository (a symlink in the package, so that wheels carry it: pyproject.toml)
_JS_DIR = Path(__file__).resolve().parent / "kachery_js"
_JS_PATH = re.compile(r"(src|vendor|web)/[A-Za-z0-9_-]{1,64}\.js")
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
    browser_policy: BrowserPolicy = field(default_factory=BrowserPolicy)
    #: (feed ID, subfeed hash) pages made this node follow (counted against max_follows)
    page_follows: set[tuple[str, str]] = field(default_factory=set)


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

    async def kachery_js(request: Request) -> Response:
        """kachery.js for pages (the viewer, examples): ES modules, unbundled, public code."""
        path = request.path_params["path"]
        if not _JS_PATH.fullmatch(path):
            raise ApiError(404, f"no kachery.js module {path[:100]!r} (/js/src/<name>.js)")
        try:
            text = (_JS_DIR / path).read_bytes()
        except FileNotFoundError:
            raise ApiError(404, f"no kachery.js module {path!r}") from None
        return Response(text, media_type="text/javascript; charset=utf-8",
                        headers={"Cache-Control": "no-cache"})

    async def viewer(request: Request) -> Response:
        html = resources.files("kachery_node.daemon").joinpath("viewer.html").read_text()
        return HTMLResponse(html, headers={"Cache-Control": "no-cache"})

    # The feed, file and task endpoints live in their own modules (they import this one).
    from .local_api_feeds import feed_routes
    from .local_api_files import file_routes
    from .local_api_tasks import task_routes

    routes = [
        Route("/probe", probe, methods=["GET"]),
        Route("/api/status", status, methods=["GET"]),
        Route("/api/stop", stop, methods=["POST"]),
        *feed_routes(ctx),
        *file_routes(ctx),
        Route("/viewer", viewer, methods=["GET"]),
        Route("/js/{path:path}", kachery_js, methods=["GET"]),
    ]
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
    return LoopbackOnly(OriginAllowList(app, ctx.cors_origins))

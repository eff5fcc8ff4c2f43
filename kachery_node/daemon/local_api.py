"""The daemon's local HTTP API on 127.0.0.1, for the Python client, the CLI and local web pages.

Authentication (:mod:`.local_tokens`): requests carry ``Authorization: Bearer <token>``. The client
token allows everything and travels only in that header; the browser token allows only the
read-only endpoints marked ``browser`` below, and may also travel as ``?token=<token>`` (for
``EventSource``, which cannot set headers). The client token in a URL is refused (403): URLs end
up in logs, browser history and Referer headers. Requests whose ``Host`` is not a loopback name
are refused (DNS-rebinding defence), and a request from a web page on an origin not in the
allow-list (``Origin`` header) is refused with 403 ``OriginNotAllowed`` and logged.

Web-safe policy (:class:`BrowserPolicy`): what the browser token may make the node download is
limited: a file it does not store yet at most ``browser_max_fetch_bytes`` (default 100 MB, else
413 while fetching, the partial download discarded), and at most ``browser_max_follows`` remote
subfeeds followed for pages per run (else 429). Uploads, grants, tasks, stopping: client only.

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
``GET  /api/feeds/stream``             browser  ``?uri=&start=&follow=&channel=`` Server-Sent
                                                Events, resumable; ``follow=1`` follows a
                                                remote subfeed first (web-safe limit)
``POST /api/feeds/follow``             client   follow a remote subfeed on a channel
``POST /api/feeds/catch-up``           client   ``{"feed", "channel"?}``: follow every subfeed
                                                of a feed the channels know, and say the newest
                                                known count of each (fork-safe restore)
``POST /api/feeds/unfollow``           client   stop following a remote subfeed (messages stay)
``POST /api/feeds/published``          client   re-read published-feeds.json now; list what is kept current
``POST /api/files/fetch``              client   NDJSON progress lines while a file (or the
                                                chunks covering a ``range`` of it) is fetched
                                                from a channel, then its local path
``POST /api/files/upload``             client   upload a stored file to a channel's bucket
``GET  /api/files/read``               browser  ``?uri=&start=&end=&channel=`` bytes of a file,
                                                fetched first if not stored (web-safe limit)
``GET  /js/<file>``                     none     kachery.js (``js/src``), ES modules for pages
``GET  /viewer``                       none     the built-in live viewer page (HTML)
=====================================  =======  ============================================

The task endpoints (``/api/tasks/poll``, ``/update``, ``/request``) are in
:mod:`.local_api_tasks`, with their own table.

The original daemon's routes that kachery-client 1.2.0 uses (``/store``, ``/feed/*``,
``/mutable/*``, ...) are served by ``legacy_api.py`` with the original's credential.

The stream sends one SSE event per message: ``id`` is the message number (so a reconnecting
``EventSource`` resumes after the last one it saw through ``Last-Event-ID``) and ``data`` is the
record as JSON: ``{"number", "timestamp_ms", "payload", "metadata", "wire"}``, where ``wire`` is
the message's signed wire line (spec/feeds.md §3) as a string, so that a page verifies what it
shows (kachery.js ``followFromDaemon``) instead of trusting the other fields. Each batch of events
ends at a signed message (a batch signature covers the messages before it).
"""

from __future__ import annotations

import logging
import os
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
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import kachery_feeds

from ..config import NodeConfig
from ..errors import CorruptedFileError, InvalidUriError, KacheryError, LinkedFileChangedError, NotFoundError
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
#: js/ of the repository (a symlink in the package, so that wheels carry it: pyproject.toml)
_JS_DIR = Path(__file__).resolve().parent / "kachery_js"
_JS_PATH = re.compile(r"(src|vendor|web)/[A-Za-z0-9_-]{1,64}\.js")
_ASCII_DIGITS = re.compile(r"[0-9]{1,16}")  # str.isdigit() and int() also take '²', '٣', '1_0', ' 1'


@dataclass(frozen=True)
class BrowserPolicy:
    """What a page holding the read-only browser token may make this node do (web-safe limits:
    a page must not trigger huge downloads). Set in ``[daemon]`` of config.toml."""

    #: bytes a page may make the node download for one request (a file not stored here yet)
    max_fetch_bytes: int = 100_000_000
    #: remote subfeeds pages may make the node follow during one daemon run
    max_follows: int = 64


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


def _wire_event(wire: bytes) -> tuple[int, bytes]:
    """(message number, the SSE ``data`` of a stored wire line): the record's fields for old
    clients plus ``wire``, the signed line itself, which a page verifies (kachery.js)."""
    body = wire[: wire.rindex(b"\t")]  # stored lines are well-formed: verified when written
    d = orjson.loads(body)
    data = orjson.dumps({"number": d["n"], "timestamp_ms": d["ts"], "payload": d["payload"],
                         "metadata": d.get("meta"), "wire": wire.decode()})
    return d["n"], data


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

    def follow_for_page(sf: kachery_feeds.Subfeed, channel: str | None) -> None:
        """``?follow=1``: a page asks the node to follow a remote subfeed (within the policy)."""
        key = (sf.feed_id, sf.subfeed_hash)
        if ctx.storage.feeds.has_private_key(sf.feed_id) or key in ctx.page_follows:
            return
        if len(ctx.page_follows) >= ctx.browser_policy.max_follows:
            raise ApiError(429, f"pages already made this node follow {len(ctx.page_follows)} "
                                "remote subfeeds since it started, the limit for pages "
                                "([daemon] browser_max_follows in config.toml); follow this one "
                                "with the client (kn.load_subfeed) or raise the limit")
        _node(ctx).follow(sf.feed_id, sf.subfeed_hash, channel)
        ctx.page_follows.add(key)

    async def stream(request: Request) -> Response:
        _require(ctx, request, "browser")
        sf = _subfeed(ctx, request)
        follow_flag = request.query_params.get("follow", "")
        if follow_flag not in ("", "0", "1"):
            raise ApiError(400, "'follow' is 1 (follow this remote subfeed first) or 0")
        if follow_flag == "1":
            follow_for_page(sf, request.query_params.get("channel") or None)
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
                # Extended to end at a signed message, so a page can verify every event it got.
                events = [_wire_event(w) for w in sf.get_signed_messages(position, position + STREAM_PAGE)]
                if events:
                    yield b"".join(b"id: %d\ndata: %s\n\n" % e for e in events)
                    position = events[-1][0] + 1
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

    async def catch_up(request: Request) -> Response:
        """Follow every subfeed of a feed known on the channels (also one whose key this store
        holds: it may be restoring) and answer their newest known counts (spec/feeds.md §8)."""
        from .feed_catch_up import newest_known_heads

        _require(ctx, request, "client")
        body = await _json_body(request)
        try:
            raw = body.get("feed")
            feed_id = kachery_feeds.normalize_feed_id(raw if isinstance(raw, str) else "")
        except kachery_feeds.InvalidUriError as exc:
            raise ApiError(400, f"catch-up needs a feed ID: {exc}") from exc
        links = _node(ctx).links(_channel_arg(body))
        heads, unreachable = await newest_known_heads(links, feed_id)
        for head in heads:
            _node(ctx).feeds.follow([link for link in links if link.channel == head.channel],
                                    feed_id, head.subfeed_hash)
        return _json({"feed": feed_id, "channels": [link.channel for link in links],
                      "heads": [{"channel": h.channel, "subfeed_hash": h.subfeed_hash, "count": h.count}
                                for h in heads],
                      "unreachable": unreachable})

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

    routes = [
        Route("/probe", probe, methods=["GET"]),
        Route("/api/status", status, methods=["GET"]),
        Route("/api/stop", stop, methods=["POST"]),
        Route("/api/feeds/messages", messages, methods=["GET"]),
        Route("/api/feeds/stream", stream, methods=["GET"]),
        Route("/api/feeds/follow", follow, methods=["POST"]),
        Route("/api/feeds/catch-up", catch_up, methods=["POST"]),
        Route("/api/feeds/unfollow", unfollow, methods=["POST"]),
        Route("/api/feeds/published", published, methods=["POST"]),
        Route("/api/files/fetch", fetch_file, methods=["POST"]),
        Route("/api/files/upload", upload, methods=["POST"]),
        Route("/api/files/read", read_file, methods=["GET"]),
        Route("/viewer", viewer, methods=["GET"]),
        Route("/js/{path:path}", kachery_js, methods=["GET"]),
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
    return _LoopbackOnly(_OriginAllowList(app, ctx.cors_origins))


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


class _OriginAllowList:
    """ASGI wrapper refusing requests from web pages on origins not in the allow-list.

    A request with an ``Origin`` header (browsers send it on cross-origin requests) is served
    only if the origin is the daemon's own (its viewer) or in ``cors_origins``; otherwise it is
    refused with 403 and a JSON error naming the setting, logged once per origin. The refusal
    carries ``Access-Control-Allow-Origin`` for that origin so that the page can read why (it
    holds no data), instead of seeing a bare network error and retrying forever.
    """

    MAX_LOGGED = 1000  # distinct origins remembered for log-once

    def __init__(self, app: Any, allowed: list[str]) -> None:
        self.app = app
        self.allowed = {o.rstrip("/") for o in allowed}
        self.logged: set[str] = set()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or [])
            origin = headers.get(b"origin", b"").decode("latin-1")
            own = "http://" + headers.get(b"host", b"").decode("latin-1")
            if origin and origin != own and origin not in self.allowed:
                if origin not in self.logged and len(self.logged) < self.MAX_LOGGED:
                    self.logged.add(origin)
                    log.warning("refused requests from web origin %r: not in the allow-list "
                                "([daemon] cors_origins in config.toml or KACHERY_CORS_ORIGINS)",
                                origin)
                response = JSONResponse(
                    {"error": f"this kachery daemon does not allow pages from {origin}: add it to "
                              "[daemon] cors_origins in the storage's config.toml (or "
                              "KACHERY_CORS_ORIGINS) and restart the daemon",
                     "kind": "OriginNotAllowed"},
                    403, headers={"Access-Control-Allow-Origin": origin, "Vary": "Origin"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

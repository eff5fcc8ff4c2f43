"""The local API's feed endpoints, mounted by ``local_api.build_app`` (authentication, input
rules and error statuses: :mod:`.local_api`).

=====================================  =======  ============================================
``GET  /api/feeds/messages``           browser  ``?uri=&start=&end=`` records of a subfeed
``GET  /api/feeds/stream``             browser  ``?uri=&start=&follow=&channel=`` Server-Sent
                                                Events, resumable; ``follow=1`` follows a
                                                remote subfeed first (web-safe limit)
``POST /api/feeds/follow``             client   ``{"uri", "channel"?}``: follow a remote subfeed
                                                (on a channel, or every joined one);
                                                ``{"uris": [...], "channel"?}``: many at once
                                                (at most :data:`MAX_FOLLOW_URIS`, one write)
``POST /api/feeds/catch-up``           client   ``{"feed", "channel"?}``: follow every subfeed
                                                of a feed the channels know, and say the newest
                                                known count of each (fork-safe restore)
``POST /api/feeds/unfollow``           client   stop following a remote subfeed (messages stay)
``POST /api/feeds/published``          client   re-read published-feeds.json now; list what is kept current
=====================================  =======  ============================================

The stream sends one SSE event per message: ``id`` is the message number (so a reconnecting
``EventSource`` resumes after the last one it saw through ``Last-Event-ID``) and ``data`` is the
record as JSON: ``{"number", "timestamp_ms", "payload", "metadata", "wire"}``, where ``wire`` is
the message's signed wire line (spec/feeds.md §3) as a string, so that a page verifies what it
shows (kachery.js ``followFromDaemon``) instead of trusting the other fields. Each batch of events
ends at a signed message (a batch signature covers the messages before it).

Web-safe limit (:class:`.local_api_browser.BrowserPolicy`): ``follow=1`` makes the node follow
at most ``browser_max_follows`` remote subfeeds for pages per run (else 429).
"""

from __future__ import annotations

import anyio
import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

import kachery_feeds

from .local_api import (
    MAX_POSITION,
    ApiError,
    DaemonContext,
    _channel_arg,
    _int_param,
    _json,
    _json_body,
    _node,
    _position,
    _require,
)

STREAM_PAGE = 500
MAX_FOLLOW_URIS = 100_000  # URIs in one bulk follow request (~10 MB of JSON)
KEEPALIVE_SECONDS = 15.0


def _subfeed_uri_arg(body: dict, verb: str) -> kachery_feeds.FeedUri:
    """The request's ``uri``, which must name a subfeed (400 otherwise)."""
    try:
        parsed = kachery_feeds.parse_feed_uri(body.get("uri"))
    except kachery_feeds.InvalidUriError as exc:
        raise ApiError(400, str(exc)) from exc
    if parsed.subfeed_hash is None:
        raise ApiError(400, f"{verb} needs a subfeed URI (feed://<feedId>/<subfeed>)")
    return parsed


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



def feed_routes(ctx: DaemonContext) -> list[Route]:
    """The routes of the feed endpoints (table above) serving ``ctx``."""

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
        """Follow one subfeed (``uri``: answers ``{"following": channels, "local": bool}``) or
        many (``uris``: answers ``{"following": channels, "followed": n, "local": [uris]}``,
        the local ones being this node's own feeds, which need no following). Every URI is
        checked before any is followed: one bad URI follows none."""
        _require(ctx, request, "client")
        body = await _json_body(request)
        if "uris" not in body:
            parsed = _subfeed_uri_arg(body, "follow")
            if ctx.storage.feeds.has_private_key(parsed.feed_id):
                return _json({"following": [], "local": True})
            channels = _node(ctx).follow(parsed.feed_id, parsed.subfeed_hash, _channel_arg(body))
            return _json({"following": channels, "local": False})
        uris = body["uris"]
        if "uri" in body or not isinstance(uris, list) or len(uris) > MAX_FOLLOW_URIS:
            raise ApiError(400, f"'uris' must be a list of at most {MAX_FOLLOW_URIS} subfeed URIs "
                                "(and no 'uri' beside it)")
        parsed_all = [_subfeed_uri_arg({"uri": uri}, "follow") for uri in uris]
        owned: dict[str, bool] = {}
        local, remote = [], []
        for uri, parsed in zip(uris, parsed_all, strict=True):
            if parsed.feed_id not in owned:
                owned[parsed.feed_id] = ctx.storage.feeds.has_private_key(parsed.feed_id)
            if owned[parsed.feed_id]:
                local.append(uri)
            else:
                remote.append((parsed.feed_id, parsed.subfeed_hash))
        channels = _node(ctx).follow_many(remote, _channel_arg(body)) if remote else []
        return _json({"following": channels, "followed": len(set(remote)), "local": local})

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
        parsed = _subfeed_uri_arg(body, "unfollow")
        return _json({"unfollowed": _node(ctx).unfollow(parsed.feed_id, parsed.subfeed_hash)})

    async def published(request: Request) -> Response:
        """Take up a change of ``published-feeds.json`` now (not at the next poll); answer the
        published subfeeds that are kept current (on channels that are up)."""
        _require(ctx, request, "client")
        node = _node(ctx)
        node.reload_publications(force=True)
        return _json({"published": [{"channel": w.channel, "uri": w.uri}
                                    for w in node.feeds.providing.core.published()]})

    return [
        Route("/api/feeds/messages", messages, methods=["GET"]),
        Route("/api/feeds/stream", stream, methods=["GET"]),
        Route("/api/feeds/follow", follow, methods=["POST"]),
        Route("/api/feeds/catch-up", catch_up, methods=["POST"]),
        Route("/api/feeds/unfollow", unfollow, methods=["POST"]),
        Route("/api/feeds/published", published, methods=["POST"]),
    ]

"""Bounds on what an HTTP request may cost the hub before anyone is authenticated.

Signed requests are checked only once their body is read, so the body must be bounded first:

* **Size.** Each route has a body limit that fits its largest legitimate request
  (:func:`body_limit`); a ``Content-Length`` over it is answered ``413 too_large`` before a
  byte of the body is read, and a streamed (chunked) body is refused as soon as it passes it.
  Bucket uploads have no limit here: their signed URL carries their size, which the bucket
  enforces the same way.
* **Time.** A body must keep coming: by ``grace_s + received / min_rate`` seconds after the
  request's headers, ``received`` bytes must have arrived, else ``408 request_timeout`` and the
  connection closes. (Headers themselves must be complete within ``header_timeout_s`` of the
  connection opening or of the previous response: Hypercorn's keep-alive timeout, set by
  hub/server.py, as is the bound on concurrent connections.)

:class:`RequestLimits` is a plain ASGI middleware: it wraps ``receive``, so refusals raised while
a handler reads the body are :class:`~kachery_node.errors.ChannelProtocolError`\\ s,
answered like any other refusal. WebSocket traffic passes untouched (the relay bounds it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import trio
from starlette.responses import JSONResponse

from ..errors import ChannelProtocolError, TooLargeError

log = logging.getLogger("kachery.hub")
KiB = 1024

# Largest legitimate bodies, by route (POST). /api/node: upload_urls with 1000 objects of the
# longest layout path (a subfeed segment: ~165 characters) and the largest size is ~200 KiB.
# /api/user: create/configure_channel with a GCS service-account key (~2.4 KB) and a NATS seed.
# /api/register-node: a few IDs and a 20-character label (< 1 KiB).
API_BODY_LIMITS: dict[str, int] = {
    "/api/node": 256 * KiB,
    "/api/witness": 4096 * KiB,  # wire lines to witness: one largest message (1 MiB), JSON-escaped
    "/api/user": 64 * KiB,
    "/api/register-node": 16 * KiB,
}
DEFAULT_BODY_LIMIT = 64 * KiB  # any other route (the web UI's JSON, or a body nobody expects)


@dataclass(frozen=True)
class HttpLimits:
    """The HTTP bounds of ``kachery hub serve`` (spec/hub.md §10)."""

    header_timeout_s: float = 10.0  # request headers complete within this (also idle keep-alive)
    body_grace_s: float = 10.0  # a body may take this long before its rate is held against it
    body_min_rate: int = 16 * KiB  # bytes/s a body must average after the grace
    max_connections: int = 4096  # concurrent TCP connections (relay WebSockets included)


class RequestTimeoutError(ChannelProtocolError):
    """A request's body arrived too slowly (or stopped)."""

    status, code = 408, "request_timeout"


def body_limit(method: str, path: str) -> int | None:
    """The body limit of a request, in bytes; None for bucket uploads (bounded by their URL)."""
    if method == "PUT" and path.startswith("/bucket/"):
        return None
    return API_BODY_LIMITS.get(path, DEFAULT_BODY_LIMIT)


def _content_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:  # h11 refuses these before the app is called; be safe anyway
                return None
    return None


class RequestLimits:
    """ASGI middleware enforcing :class:`HttpLimits`' body size and rate on every HTTP request."""

    def __init__(self, app: Any, limits: HttpLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(scope["method"], scope["path"])
        declared = _content_length(scope)
        if limit is not None and declared is not None and declared > limit:
            exc = TooLargeError(f"request body of {declared} bytes is over this endpoint's {limit}")
            log.warning("refused %s %s (%d %s): %s", scope["method"], scope["path"], exc.status, exc.code,
                        exc.message)
            response = JSONResponse(exc.to_json(), exc.status, headers={"Connection": "close"})
            await response(scope, receive, send)
            return
        await self.app(scope, _BoundedReceive(receive, limit, self.limits), send)


class _BoundedReceive:
    """``receive`` for one request: counts the body, and waits for each part of it only until
    the body's deadline; once the body is complete it is a plain ``receive`` (a response may
    wait for ``http.disconnect`` as long as it streams)."""

    def __init__(self, receive: Any, limit: int | None, limits: HttpLimits) -> None:
        self._receive = receive
        self._limit = limit
        self._limits = limits
        self._start = trio.current_time()
        self._received = 0
        self._complete = False

    async def __call__(self) -> dict[str, Any]:
        if self._complete:
            return await self._receive()
        deadline = self._start + self._limits.body_grace_s + self._received / self._limits.body_min_rate
        with trio.move_on_at(deadline):
            message = await self._receive()
            if message["type"] == "http.request":
                self._received += len(message.get("body", b""))
                if self._limit is not None and self._received > self._limit:
                    raise TooLargeError(f"request body over this endpoint's {self._limit} bytes")
                self._complete = not message.get("more_body", False)
            else:
                self._complete = True  # http.disconnect
            return message
        raise RequestTimeoutError(
            f"request body too slow: {self._received} bytes in {trio.current_time() - self._start:.0f} s "
            f"(at least {self._limits.body_min_rate} bytes/s after {self._limits.body_grace_s:.0f} s)")

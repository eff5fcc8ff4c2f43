"""What web pages may do with the local API: the web-safe policy of the read-only browser token
and the checks that keep pages on other sites out, applied by ``local_api.build_app``.

* :class:`BrowserPolicy`: what the browser token may make the node download is limited: a file
  it does not store yet at most ``browser_max_fetch_bytes`` (default 100 MB, else 413 while
  fetching, the partial download discarded: :mod:`.local_api_files`), and at most
  ``browser_max_follows`` remote subfeeds followed for pages per run (else 429:
  :mod:`.local_api_feeds`). Uploads, grants, tasks, stopping: client token only.
* :class:`LoopbackOnly`: requests whose ``Host`` is not a loopback name are refused (DNS-rebinding
  defence).
* :class:`OriginAllowList`: a request from a web page on an origin not in the allow-list
  (``Origin`` header) is refused with 403 ``OriginNotAllowed`` and logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse

log = logging.getLogger("kachery.daemon.api")

_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}


@dataclass(frozen=True)
class BrowserPolicy:
    """What a page holding the read-only browser token may make this node do (web-safe limits:
    a page must not trigger huge downloads). Set in ``[daemon]`` of config.toml."""

    #: bytes a page may make the node download for one request (a file not stored here yet)
    max_fetch_bytes: int = 100_000_000
    #: remote subfeeds pages may make the node follow during one daemon run
    max_follows: int = 64



class LoopbackOnly:
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


class OriginAllowList:
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

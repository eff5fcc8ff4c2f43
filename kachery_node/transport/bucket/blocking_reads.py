"""Blocking reads of a bucket over HTTP(S), for a process with no event loop of its own to run
them in (a script with no daemon: :mod:`kachery_node.channel_buckets`).

The same two paths as the daemon's downloads (:mod:`.http_transfer`): straight off a socket
(:mod:`.direct_get`), or through httpx when that cannot be done (a proxy, a chunked or encoded
answer, a server that ignores ``Range``), here in the caller's thread. Timeouts are bounded:
``connect_timeout`` to connect, ``read_timeout`` without a byte (a stalled bucket fails, a long
download does not). TLS as every other connection of a node
(:func:`~kachery_node.transport.tls.ssl_context`: ``--ca-file`` / ``$KACHERY_CA_FILE`` count).

Failures are typed as in :mod:`.http_transfer`: NotFoundError (404), HubRequestError (another
refusal, a body cut short, or the bucket unreachable: code ``unreachable``).
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from ...errors import NotFoundError
from ...protocol.signed_urls import validate_object_key
from ..tls import ssl_context
from .direct_get import DirectGet, DirectGetUnsupported, range_header
from .http_transfer import PIECE_BYTES, BodyRange, raise_for_status, unreachable

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0

#: ``write(piece)``: where downloaded bytes go, piece by piece, in order (the piece may be a view
#: of a buffer that is reused once ``write`` returns).
Write = Callable[[bytes | memoryview], object]


class BlockingBucketReader:
    """``GET <read_url>/<key>`` (whole, or bytes ``[start, end)``), blocking the caller's thread."""

    def __init__(self, read_url: str, *, connect_timeout: float = CONNECT_TIMEOUT,
                 read_timeout: float = READ_TIMEOUT) -> None:
        self.read_url = read_url.rstrip("/")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout

    def url(self, key: str) -> str:
        """The URL of the object ``key`` (InvalidPathError if the key is malformed)."""
        return f"{self.read_url}/{validate_object_key(key)}"

    def read(self, key: str, write: Write, start: int | None = None, end: int | None = None,
             progress: Callable[[int, int], None] | None = None) -> int:
        """Hand the object's bytes (or those of the range) to ``write`` in order; returns how
        many there were."""
        if end is not None and end == (start or 0):
            return 0  # an empty range: HTTP cannot ask for it
        url = self.url(key)
        try:
            get = DirectGet(url, connect_timeout=self.connect_timeout,
                            read_timeout=self.read_timeout, start=start, end=end)
            return get.run(write, progress)
        except DirectGetUnsupported:  # nothing was written: the general client does it
            return self._with_httpx(url, write, start, end, progress)
        except OSError as exc:  # a network failure or a timeout
            raise unreachable(f"GET {url}", exc) from exc

    def _with_httpx(self, url: str, write: Write, start: int | None, end: int | None,
                    progress: Callable[[int, int], None] | None) -> int:
        wanted = range_header(start, end)
        timeout = httpx.Timeout(self.read_timeout, connect=self.connect_timeout)
        try:
            with httpx.Client(timeout=timeout, verify=ssl_context()) as client, client.stream(
                    "GET", url, headers={"Range": wanted} if wanted else {}) as resp:
                if resp.status_code == 404:
                    raise NotFoundError(f"{url}: no such object")
                if resp.status_code >= 400:
                    resp.read()
                    raise_for_status(resp, f"GET {url}")
                body = BodyRange(resp, start, end, ranged=bool(wanted))
                for piece in resp.iter_bytes(PIECE_BYTES):
                    if piece := body.keep(piece):
                        write(piece)
                        if progress is not None:
                            progress(body.done, body.total)
                    if body.complete:
                        break
        except httpx.HTTPError as exc:
            raise unreachable(f"GET {url}", exc) from exc
        return body.done

"""Blocking reads of single small objects from a channel's bucket, without a daemon (spec/bucket.md
§5: ``GET <read_url>/<key>``, public for every backend). Nothing read is trusted: callers verify.
"""

from __future__ import annotations

import httpx

from ...errors import RemoteProtocolError
from ..tls import ssl_context

READ_TIMEOUT_SECONDS = 10.0


class BucketReadError(RemoteProtocolError):
    """The bucket could not be read, or answered something unusable (too big, an HTTP error)."""


class PublicBucketReader:
    """One HTTP client for several reads (use as a context manager)."""

    def __init__(self, timeout: float = READ_TIMEOUT_SECONDS) -> None:
        self._http = httpx.Client(timeout=timeout, verify=ssl_context())

    def __enter__(self) -> PublicBucketReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def get(self, read_url: str, key: str, max_bytes: int) -> bytes | None:
        """The object ``key`` (None if absent); raises :class:`BucketReadError`."""
        url = f"{read_url.rstrip('/')}/{key}"
        try:
            resp = self._http.get(url)
        except httpx.HTTPError as exc:
            raise BucketReadError(f"reading {url}: {type(exc).__name__}: {exc}") from None
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise BucketReadError(f"reading {url}: HTTP {resp.status_code}")
        if len(resp.content) > max_bytes:
            raise BucketReadError(f"{key} is over {max_bytes} bytes")
        return resp.content

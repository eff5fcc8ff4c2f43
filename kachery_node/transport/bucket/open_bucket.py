"""The node's bucket client for a channel, chosen by what the hub's ``channel_info`` says.

``info["bucket"]`` is ``{"backend": "embedded" | "gcs" | "s3", "read_url": ..., ...}`` (never a secret:
reads are public, writes need signed URLs from the hub). Hubs older than the backend choice send
only ``bucket_url``: that is the embedded bucket.
"""

from __future__ import annotations

from typing import Any

import httpx

from ...errors import MalformedRequestError
from .http_bucket import HttpBucket


def bucket_spec(info: dict[str, Any]) -> dict[str, Any]:
    """The bucket part of a channel's info, with the embedded default filled in."""
    return info.get("bucket") or {"backend": "embedded", "read_url": info["bucket_url"]}


def open_bucket(info: dict[str, Any], client: httpx.AsyncClient | None = None) -> HttpBucket:
    """A bucket client for the channel described by ``info`` (a ``channel_info`` answer)."""
    spec = bucket_spec(info)
    backend = spec.get("backend")
    if backend == "embedded":
        return HttpBucket(spec["read_url"], client)
    if backend == "gcs":
        from .gcs_backend import GcsBucket

        return GcsBucket(spec["read_url"], spec["api_url"], client)
    if backend == "s3":
        from .s3_backend import S3Bucket

        return S3Bucket(spec["read_url"], client)
    raise MalformedRequestError(f"unknown bucket backend {backend!r} (known: embedded, gcs, s3)")

"""The bucket interfaces. A channel's bucket is publicly readable over HTTP (GET with byte
ranges, HEAD) and writable only through signed upload URLs that the hub makes. Backends:
``embedded`` (the hub's filesystem-backed store) and ``gcs`` (Google Cloud Storage, V4 signed
URLs), chosen by the channel's config ``{"bucket": {"backend": ...}}``; nodes get their client
from :func:`kachery_node.transport.bucket.open_bucket.open_bucket`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

#: ``progress(bytes done, bytes total)``, called in the event loop's thread as a transfer goes.
ProgressCallback = Callable[[int, int], None]


@runtime_checkable
class ByteSink(Protocol):
    """Where a download's bytes can go instead of a new file: :meth:`write_blocking` is called
    with each piece in order, from a worker thread (the piece may be a view of a buffer that is
    reused once it returns). Example: the chunk sink of a partial file, which writes each piece at
    its place in the file being fetched and hashes it as it goes."""

    def write_blocking(self, data: bytes | memoryview) -> None:
        """Take the next piece (blocking is fine: this runs in a worker thread)."""


#: A download's destination: a sink, or the path of a file to create (it must not exist).
Destination = ByteSink | str | os.PathLike


@dataclass(frozen=True)
class FileRange:
    """Bytes ``[start, end)`` of the file at ``path``, to upload as they are read, a piece at a
    time (no buffer of the range's size: a provider's 20 MB chunks). ``unchanged(fstat)``, if
    given, is asked about the open file before its first byte is read and after its last: False
    fails the upload (:class:`~kachery_node.errors.LinkedFileChangedError`) before its body is
    complete, so the bucket stores nothing of it."""

    path: Path
    start: int
    end: int
    unchanged: Callable[[os.stat_result], bool] | None = None

    @property
    def size(self) -> int:
        return self.end - self.start


#: What an upload sends: bytes, a whole file's content, or a range of a file (both streamed).
UploadData = bytes | Path | FileRange


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD says about an object."""

    key: str
    size: int
    etag: str


class BucketBackend(ABC):
    """Hub side: where a channel's objects are read, and signing upload URLs for them.

    A GCS backend would return ``https://storage.googleapis.com/<bucket>`` and V4 signed URLs
    made with the channel's service-account key.
    """

    name: str

    @abstractmethod
    def read_base_url(self) -> str:
        """Objects are read at ``<read_base_url>/<key>`` (key = ``<channel>/<path>``)."""

    def node_info(self) -> dict:
        """What a node needs to read the bucket (``channel_info["bucket"]``); never a secret."""
        return {"backend": self.name, "read_url": self.read_base_url()}

    @abstractmethod
    def signed_upload_url(self, key: str, *, max_size: int, expires: int, node_id: str) -> str:
        """A URL allowing one PUT of at most ``max_size`` bytes at ``key`` until ``expires`` (unix s)."""


class Bucket(ABC):
    """Node side: read objects, and write them with signed URLs."""

    @abstractmethod
    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of the object (all of it by default), in memory (small objects:
        a head, a segment); NotFoundError if absent."""

    @abstractmethod
    async def download(self, key: str, dest: Destination, *, start: int | None = None,
                       end: int | None = None, progress: ProgressCallback | None = None) -> int:
        """Stream the object, or its bytes ``[start, end)``, into ``dest`` (a :class:`ByteSink`,
        or the path of a new file) without holding it in memory; returns how many bytes came.
        NotFoundError if absent, HubRequestError if refused or cut short."""

    @abstractmethod
    async def head(self, key: str) -> ObjectInfo | None:
        """Size and ETag of the object, or None if it does not exist."""

    @abstractmethod
    async def put(self, signed_url: str, data: UploadData, *,
                  progress: ProgressCallback | None = None) -> None:
        """Upload ``data`` (bytes, or a file's whole content or a range of it, streamed) with a
        signed URL; raises HubRequestError if refused."""

    @abstractmethod
    async def list(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix`` (``<channel>/...``)."""

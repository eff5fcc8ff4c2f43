"""The embedded bucket: filesystem-backed objects over HTTP, served by ``kachery hub serve``.

Behaves like a public cloud bucket with signed upload URLs (GCS V4 style):

* ``GET``/``HEAD /bucket/<key>``: public, with ``Range``, ``ETag``, ``Content-Length``, readable
  by web pages from any origin (CORS, answering ``OPTIONS`` preflights).
* ``PUT /bucket/<key>?expires=&max_size=&node=&sig=``: only with a hub-signed URL for exactly
  this key, before its expiry, within its size (checked against ``Content-Length`` first, then
  while streaming). Objects under ``<channel>/sha1/`` must hash to the SHA-1 their name ends
  with; a mismatch is refused (the cloud cannot check this, we can).
* ``GET /bucket-list?prefix=<channel>/...``: keys under a prefix (GCS lists public buckets too).

Writes are atomic: the body streams into ``<root>/.tmp/`` (a name no object key can take, since
key segments never start with ``.``) and is renamed into place only when complete and
verified, so a reader sees the old object, or the whole new one, never a partial one. A GET
answers from the file it opened once: headers and body of one version, however often the object
is replaced meanwhile. Where each object lives on disk is
:class:`~kachery_node.hub.object_files.ObjectFiles`' concern; sizes and access times are
:class:`~kachery_node.hub.object_index.ObjectIndex`'s, and each channel's
quota (evicting re-fetchable objects to make room) :class:`~kachery_node.hub.bucket_quota.BucketQuota`'s.
A write to a channel that does not exist (any more) is refused ``404 unknown_channel``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import BinaryIO

import anyio
import anyio._backends._trio  # see below
import anyio._core._fileio
import trio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.types import Receive, Scope, Send

from ..errors import (
    HashMismatchError,
    InvalidPathError,
    MalformedRequestError,
    TooLargeError,
)
from ..protocol.signed_urls import verify_upload
from .bucket_quota import BucketQuota, QuotaOf
from .http_limits import HttpLimits
from .object_files import ObjectFiles
from .object_index import ObjectIndex
from .object_sendfile import BodySender

# anyio imports its parts on first use: the two above would otherwise be imported by the first
# bucket read (its trio backend and file wrapper, ~13 ms of CPU), on the event loop that relays
# live messages (kachery_node/loop_stalls.py found it). Imported with the hub instead.

log = logging.getLogger("kachery.hub.bucket")
MAX_LIST = 10_000
WRITE_BLOCK = 4 << 20
#: The last blocks of an upload are written in a worker thread too from this size on (a subfeed
#: head is ~0.5 MB: ~0.25 ms of CPU on the event loop); smaller ones are not worth a thread hop.
THREAD_WRITE_MIN = 64 << 10


#: Objects are public (spec/hub.md §7): any web page may read them, so that a page verifies a
#: channel's files and feeds with no daemon (kachery.js). Only reads: PUT sends no CORS headers.
CORS_READ_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "Content-Range, Content-Length, ETag, Accept-Ranges",
}
_CORS_PREFLIGHT_HEADERS = {
    **CORS_READ_HEADERS,
    "Access-Control-Allow-Methods": "GET, HEAD",
    "Access-Control-Allow-Headers": "Range, If-None-Match, If-Match",
    "Access-Control-Max-Age": "86400",
}


class _OpenFileResponse(FileResponse):
    """Starlette's FileResponse (Range → 206/416, multiple ranges, If-Range, HEAD, ETag,
    Last-Modified) over a file opened once: headers and body both come from that descriptor.

    FileResponse alone stats the path and opens it again later; a mutable object (a subfeed's
    ``head``) renamed over in between gave a body of another version than its Content-Length (a
    truncated answer, or a mix). An open descriptor keeps its version, whatever is renamed over
    the path or evicted meanwhile. The response owns ``file`` and closes it when it has been
    sent (or abandoned).

    A whole object's body (200, not HEAD) goes out with ``sendfile`` where the connection allows
    (:mod:`.object_sendfile`), else in 4 MiB reads.
    """

    chunk_size = 4 << 20  # 64 KiB (the default) costs a thread hop and an ASGI event per chunk

    def __init__(self, file: BinaryIO, headers: Mapping[str, str], limits: HttpLimits) -> None:
        self._file = file
        self._limits = limits
        self._scope: Scope | None = None
        # The path is only a name here (Starlette needs one); nothing below opens it.
        super().__init__(file.name, media_type="application/octet-stream", headers=headers,
                         stat_result=os.fstat(file.fileno()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # "pathsend" would hand the server the path to open itself: the race again.
        extensions = {k: v for k, v in scope.get("extensions", {}).items() if k != "http.response.pathsend"}
        self._scope = scope
        try:
            await super().__call__({**scope, "extensions": extensions}, receive, send)
        finally:
            self._file.close()

    async def _handle_simple(self, send: Send, send_header_only: bool, send_pathsend: bool) -> None:
        sender = None
        if not send_header_only and self._scope is not None:
            sender = BodySender.for_scope(self._scope, self._limits)
        if sender is None:
            await super()._handle_simple(send, send_header_only, send_pathsend)
            return
        assert self.stat_result is not None
        size = self.stat_result.st_size
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        if not sender.ready_for(size):  # not a Content-Length body as h11 keeps it: read it out
            self._file.seek(0)
            while chunk := await anyio.to_thread.run_sync(self._file.read, self.chunk_size):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        elif not await sender.send_body(self._file, size):
            return  # the connection was aborted: nothing more can be sent on it
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @asynccontextmanager
    async def _open_file(self) -> AsyncIterator[anyio.AsyncFile[bytes]]:
        # Starlette (>= 1.10, pinned in pyproject.toml) opens every body through this hook, once
        # per response; the ranged paths seek, the whole-file one reads from the current offset.
        self._file.seek(0)
        yield anyio.wrap_file(self._file)  # closed by __call__, not here


class FilesystemBucket:
    """The bucket's HTTP endpoints over :class:`ObjectFiles` under ``root``; keys come from the
    URL and are validated, never trusted."""

    def __init__(self, root: Path | str, hub_id: str, quota_of: QuotaOf = lambda channel: None,
                 limits: HttpLimits | None = None) -> None:
        self.limits = limits or HttpLimits()  # a GET's body must keep moving at their rate
        self.files = ObjectFiles(root)
        self.index = ObjectIndex(self.files)
        self.quota = BucketQuota(self.files, self.index, quota_of)
        self.hub_id = hub_id

    def close(self) -> None:
        self.index.close()

    def remove_channel(self, channel: str) -> None:
        """Delete every object of a deleted channel (a new channel of that name starts empty)."""
        self.files.remove_channel(channel)
        self.index.forget_channel(channel)

    async def get(self, request: Request) -> Response:
        key = request.path_params["key"]
        path = self.files.path_of(key)
        try:
            # Opened once: this version is what the answer describes and sends (_OpenFileResponse).
            file = open(path, "rb")  # noqa: SIM115 (the response closes it once sent)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            file = None
        if file is not None and not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            file.close()
            file = None
        if file is None:
            return JSONResponse({"error": {"code": "not_found", "message": f"no object {key}"}}, 404,
                                headers=CORS_READ_HEADERS)
        try:
            self.index.note_access(key)  # GET and HEAD: the object is in use (kept from eviction)
            return _OpenFileResponse(file, headers=CORS_READ_HEADERS, limits=self.limits)
        except BaseException:
            file.close()
            raise

    async def preflight(self, request: Request) -> Response:
        """A browser's CORS preflight (``OPTIONS``) before a cross-origin read with ``Range``."""
        return Response(status_code=204, headers=_CORS_PREFLIGHT_HEADERS)

    async def put(self, request: Request) -> Response:
        key = request.path_params["key"]
        grant = verify_upload(self.hub_id, key, request.query_params, now_s=time.time())
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                declared_n = int(declared)
            except ValueError:
                raise MalformedRequestError("Content-Length is not a number") from None
            if declared_n > grant.max_size:
                raise TooLargeError(f"upload of {declared_n} bytes is over the signed size {grant.max_size}")
        parts = key.split("/")
        channel = parts[0]
        self.quota.check(channel, key, declared_n if declared is not None else 0)
        want_sha1 = parts[-1] if len(parts) >= 3 and parts[1] == "sha1" else None
        if want_sha1 is not None and (len(want_sha1) != 40 or want_sha1.strip("0123456789abcdef")):
            raise InvalidPathError("objects under sha1/ must be named by their 40-hex SHA-1")
        h = hashlib.sha1() if want_sha1 else None
        tmp = self.files.new_tmp()
        size = 0
        try:
            with open(tmp, "wb") as f:

                def absorb(blocks: list[bytes]) -> None:
                    for block in blocks:  # no join: one copy less per byte
                        if h is not None:
                            h.update(block)
                        f.write(block)

                # Hashing and writing run in a worker thread (both release the GIL) while the
                # event loop receives the next megabytes: the two cores work at once.
                pending: list[bytes] = []
                pending_n = 0
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > grant.max_size:
                        raise TooLargeError(f"upload is over the signed size {grant.max_size}")
                    pending.append(chunk)
                    pending_n += len(chunk)
                    if pending_n >= WRITE_BLOCK:
                        await trio.to_thread.run_sync(absorb, pending)
                        pending, pending_n = [], 0
                if pending_n >= THREAD_WRITE_MIN:
                    await trio.to_thread.run_sync(absorb, pending)
                elif pending:
                    absorb(pending)
            if h is not None and h.hexdigest() != want_sha1:
                raise HashMismatchError(f"content hashes to {h.hexdigest()}, not {want_sha1}")
            # No await from here to the index update: the quota decision, the evictions and the
            # rename happen together, whatever other uploads of the channel are in flight.
            evicted = self.quota.make_room(channel, key, size)
            self.files.commit(tmp, key)
            self.index.record(key, size)
        except ClientDisconnect:  # nobody is left to answer: nothing stored, no error to log
            log.info("bucket upload of %s cut short by its client after %d bytes", key, size)
            return Response(status_code=400)
        finally:
            tmp.unlink(missing_ok=True)
        # A live subfeed's head is rewritten every half second: its objects (feeds/...) at INFO
        # wrote ~40 MB of log a day for each (a hub runs for months); files and task results
        # are stored once each.
        log.log(logging.DEBUG if parts[1:2] == ["feeds"] else logging.INFO,
                "bucket stored %s (%d bytes) for node %s…", key, size, grant.node[:12])
        return JSONResponse({"key": key, "size": size, **({"evicted": len(evicted)} if evicted else {})})

    async def list(self, request: Request) -> Response:
        prefix = request.query_params.get("prefix", "")
        if not prefix.split("/", 1)[0]:
            raise InvalidPathError("prefix must start with <channel>/")
        keys, truncated = self.files.keys(prefix, MAX_LIST)
        return JSONResponse({"keys": keys, "truncated": truncated})

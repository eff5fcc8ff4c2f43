"""Streamed transfers between a node and a bucket over HTTP, shared by every HTTP bucket client
(the hub's embedded store, Google Cloud Storage).

* **Downloads** go straight off the socket in a worker thread (:mod:`.direct_get`: a third of
  httpx's CPU for large objects), and through httpx when that cannot be done (a proxy, a chunked
  or encoded answer, a server that ignores ``Range``). Either way the bytes go, piece by piece,
  to a :class:`~.bucket_interface.ByteSink` or into a new file, and are never held whole in
  memory; ``progress(done, total)`` follows them.
* **Uploads** are PUTs to a signed URL, with the exact ``Content-Length`` (a signed URL allows
  one size) and live progress: a file (or a range of one) straight onto the socket in a worker
  thread (:mod:`.direct_put`, with ``sendfile``), bytes and what that cannot do (a proxy)
  through httpx, in 1 MiB pieces.

Failures are typed: :class:`~kachery_node.errors.NotFoundError` (404),
:class:`~kachery_node.errors.HubRequestError` (another refusal, a body cut short, or the bucket
unreachable: code ``unreachable``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import anyio.from_thread
import anyio.to_thread
import httpx

from ...errors import HubRequestError, LinkedFileChangedError, NotFoundError
from ..tls import require_secure_url
from .bucket_interface import ByteSink, Destination, FileRange, ProgressCallback, UploadData
from .direct_get import DirectGet, DirectGetUnsupported, range_header
from .direct_put import DirectPut, DirectPutUnsupported
from .xml_errors import xml_error

log = logging.getLogger("kachery.bucket")

HTTP_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
PIECE_BYTES = 1 << 20
#: How often a direct transfer's worker thread reports its progress to the event loop at most.
PROGRESS_INTERVAL_S = 0.05

Write = Callable[[bytes | memoryview], object]


class BodyRange:
    """Which bytes of a GET's body are wanted, piece by piece: all of them (a whole object, or a
    ``206`` that is the range), or bytes ``[start, end)`` of a ``200`` from a server that ignored
    the ``Range`` header and sends the whole object. ``total`` is how many will be kept (for
    progress), ``done`` how many were."""

    def __init__(self, resp: httpx.Response, start: int | None, end: int | None, ranged: bool) -> None:
        ignored = ranged and resp.status_code == 200
        self._skip = (start or 0) if ignored else 0
        self._limit = end - (start or 0) if ignored and end is not None else None
        length = max(int(resp.headers.get("content-length", 0)) - self._skip, 0)
        self.total = length if self._limit is None else min(length, self._limit)
        self.done = 0

    def keep(self, piece: bytes) -> bytes:
        """The part of the body's next ``piece`` that is wanted (counted in ``done``)."""
        if self._skip:
            cut = min(self._skip, len(piece))
            piece, self._skip = piece[cut:], self._skip - cut
        if self._limit is not None:
            piece = piece[: max(self._limit - self.done, 0)]
        self.done += len(piece)
        return piece

    @property
    def complete(self) -> bool:
        """The range's last byte was kept: the rest of the body is not wanted."""
        return self._limit is not None and self.done >= self._limit


def raise_for_status(resp: httpx.Response, what: str) -> None:
    """Raise :class:`HubRequestError` for an error answer, with the bucket's own code and message
    when it gave them (the embedded bucket's ``{"error": {"code", "message"}}``, or an S3-style
    XML ``<Error><Code>…``)."""
    if resp.status_code < 400:
        return
    try:
        err = resp.json()["error"]
        raise HubRequestError(resp.status_code, err["code"], err["message"])
    except (ValueError, KeyError, TypeError):
        pass
    s3 = xml_error(resp.content)
    if s3 is not None:  # an object store's own refusal: keep its code (SignatureDoesNotMatch, …)
        raise HubRequestError(resp.status_code, s3[0], f"{what}: {s3[1]}") from None
    raise HubRequestError(resp.status_code, "http_error", f"{what}: HTTP {resp.status_code}") from None


def unreachable(what: str, exc: BaseException) -> HubRequestError:
    """The error for a bucket that could not be reached or broke off (a network failure)."""
    return HubRequestError(0, "unreachable", f"{what}: {type(exc).__name__}: {exc}")


@contextmanager
def _writer(dest: Destination) -> Iterator[Write]:
    """A blocking ``write(piece)`` for ``dest``: the sink's own, or a new file's."""
    if isinstance(dest, ByteSink):
        yield dest.write_blocking
        return
    with open(os.fspath(dest), "xb") as f:
        yield f.write


async def download(client: httpx.AsyncClient, url: str, dest: Destination, *,
                   start: int | None = None, end: int | None = None,
                   progress: ProgressCallback | None = None,
                   timeout: httpx.Timeout = HTTP_TIMEOUT) -> int:
    """Stream ``url`` (bytes ``[start, end)`` of it if given) into ``dest``; returns the byte count."""
    if end is not None and end == (start or 0):
        return 0  # an empty range: HTTP cannot ask for it, and there is nothing to fetch
    with _writer(dest) as write:
        try:
            return await _direct(url, write, start, end, progress, timeout)
        except DirectGetUnsupported as why:
            log.debug("downloading %s with httpx: %s", url, why)  # nothing was written
        return await _with_httpx(client, url, write, start, end, progress)


def _progress_from_thread(progress: ProgressCallback) -> Callable[[int, int], None]:
    """A progress callback for a transfer's worker thread that calls ``progress`` in the event
    loop's thread: the first report, then at most one each PROGRESS_INTERVAL_S, and the last
    (``done == total``). Each call waits for the event loop; one per MiB (the direct transfers'
    pace) was ~10% of a fetching daemon's time holding the GIL at 300 MB/s."""
    last = -PROGRESS_INTERVAL_S

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if done < total and now - last < PROGRESS_INTERVAL_S:
            return
        last = now
        anyio.from_thread.run_sync(progress, done, total)

    return report


async def _direct(url: str, write: Write, start: int | None, end: int | None,
                  progress: ProgressCallback | None, timeout: httpx.Timeout) -> int:
    get = DirectGet(url, connect_timeout=timeout.connect or 10.0, read_timeout=timeout.read or 60.0,
                    start=start, end=end)
    report = None if progress is None else _progress_from_thread(progress)
    try:
        return await anyio.to_thread.run_sync(get.run, write, report, abandon_on_cancel=True)
    except OSError as exc:  # a network failure or a timeout
        get.abort()
        raise unreachable(f"GET {url}", exc) from exc
    except BaseException:
        get.abort()  # cancelled: the abandoned thread neither writes nor reports any more
        raise


async def _with_httpx(client: httpx.AsyncClient, url: str, write: Write, start: int | None,
                      end: int | None, progress: ProgressCallback | None) -> int:
    wanted = range_header(start, end)
    headers = {"Range": wanted} if wanted else {}
    try:
        async with client.stream("GET", url, headers=headers) as resp:
            if resp.status_code == 404:
                raise NotFoundError(f"{url}: no such object")
            if resp.status_code >= 400:
                await resp.aread()
                raise_for_status(resp, f"GET {url}")
            body = BodyRange(resp, start, end, ranged=bool(wanted))
            async for piece in resp.aiter_bytes(PIECE_BYTES):
                if piece := body.keep(piece):
                    await anyio.to_thread.run_sync(write, piece)
                    if progress:
                        progress(body.done, body.total)
                if body.complete:
                    break
    except httpx.HTTPError as exc:
        raise unreachable(f"GET {url}", exc) from exc
    return body.done


async def put(client: httpx.AsyncClient, url: str, data: UploadData, *,
              progress: ProgressCallback | None = None, what: str = "PUT") -> None:
    """PUT ``data`` (bytes, the whole content of a file, or a range of one) to a signed upload
    URL, streamed; only where :func:`~kachery_node.transport.tls.require_secure_url` allows
    (checked before connecting)."""
    require_secure_url(url, "a signed upload")
    size = upload_size(data)
    # A file's bytes go straight onto the socket (sendfile). Bytes (a segment, a head: at most a
    # few MB) stay with httpx: uploaded from worker threads, they left the serving daemon of a
    # 1M-message catch-up at 110 MB RSS instead of 76 (bench/network/run.py --only memory).
    if not isinstance(data, bytes):
        try:
            await _direct_put(url, data, size, progress, what)
            return
        except DirectPutUnsupported as why:
            log.debug("uploading to %s with httpx: %s", url, why)  # no byte of the body was sent
    # Streamed in 1 MiB pieces either way, so progress (and stall detection) is live.
    if isinstance(data, bytes):
        content = _byte_pieces(data, progress)
    elif isinstance(data, FileRange):
        content = _range_pieces(data, progress)
    else:
        content = _file_pieces(Path(data), size, progress)
    try:
        resp = await client.put(url, content=content, headers={
            "Content-Type": "application/octet-stream", "Content-Length": str(size)})
    except httpx.HTTPError as exc:
        raise unreachable(what, exc) from exc
    raise_for_status(resp, what)


async def _direct_put(url: str, data: Path | FileRange, size: int, progress: ProgressCallback | None,
                      what: str, timeout: httpx.Timeout = HTTP_TIMEOUT) -> None:
    source = data if isinstance(data, FileRange) else FileRange(Path(data), 0, size)
    upload = DirectPut(url, source, connect_timeout=timeout.connect or 10.0,
                       read_timeout=timeout.read or 60.0)
    report = None if progress is None else _progress_from_thread(progress)
    try:
        await anyio.to_thread.run_sync(upload.run, report, abandon_on_cancel=True)
    except OSError as exc:  # a network failure or a timeout
        upload.abort()
        raise unreachable(what, exc) from exc
    except BaseException:
        upload.abort()  # cancelled: the abandoned thread sends nothing more
        raise


async def _byte_pieces(data: bytes, progress: ProgressCallback | None) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for pos in range(0, len(data), PIECE_BYTES):
        piece = view[pos : pos + PIECE_BYTES]
        yield bytes(piece)
        if progress:
            progress(pos + len(piece), len(data))
    if not data and progress:
        progress(0, 0)


def upload_size(data: UploadData) -> int:
    """How many bytes an upload of ``data`` sends (a file's size as it is now)."""
    if isinstance(data, bytes):
        return len(data)
    if isinstance(data, FileRange):
        return data.size
    return Path(data).stat().st_size


async def _range_pieces(source: FileRange, progress: ProgressCallback | None) -> AsyncIterator[bytes]:
    """The range's bytes, read a piece at a time in a worker thread. The file must pass
    ``source.unchanged`` when opened and again before its last piece goes out: a file that
    changed meanwhile ends the body short, and the bucket stores nothing of it."""
    size, done = source.size, 0
    with open(source.path, "rb", buffering=0) as f:
        await anyio.to_thread.run_sync(_require_unchanged, source, f)
        await anyio.to_thread.run_sync(f.seek, source.start)
        while done < size:
            piece = await anyio.to_thread.run_sync(f.read, min(PIECE_BYTES, size - done))
            if not piece:
                raise LinkedFileChangedError(f"{source.path} ends before byte {source.end}")
            done += len(piece)
            if done == size:
                await anyio.to_thread.run_sync(_require_unchanged, source, f)
            yield piece
            if progress:
                progress(done, size)
    if not size and progress:
        progress(0, 0)


def _require_unchanged(source: FileRange, f) -> None:
    if source.unchanged is not None and not source.unchanged(os.fstat(f.fileno())):
        raise LinkedFileChangedError(
            f"{source.path} changed while bytes [{source.start}, {source.end}) of it were uploaded")


async def _file_pieces(path: Path, size: int, progress: ProgressCallback | None) -> AsyncIterator[bytes]:
    done = 0
    with open(path, "rb") as f:
        while chunk := await anyio.to_thread.run_sync(f.read, PIECE_BYTES):
            done += len(chunk)
            if progress:
                progress(done, size)
            yield chunk

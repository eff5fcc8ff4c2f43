"""Bucket uploads (a PUT to a signed URL) straight onto a socket, in a worker thread.

Why not httpx for these: the provider of a large file uploads it in chunks of 20 MB or more, each
a PUT whose body httpx sends in 1 MiB pieces read in a worker thread and passed through the event
loop, httpcore and h11; measured on this machine (bench/network/run.py --only file), the
providing daemon spent 1.4-1.6 CPU-s per GiB doing so, and 1.0 this way. Here a file, or a range
of one, goes out with ``sendfile`` (no copy into the process at all). Bytes (segments, heads: at
most a few MB) stay with httpx (:func:`.http_transfer.put` says why).

Over ``http`` the file goes out with ``sendfile``, over ``https`` by ``sendall`` of pieces read
from it (the TLS record layer needs the bytes). A proxy configured is left to the general HTTP
client: :class:`DirectPutUnsupported` is raised before anything is sent, and the caller uses
httpx instead (:mod:`.http_transfer` does both). Once the body is sent, the answer's status
decides, whatever its shape (an HTTP/1.x answer; its body is not needed). Each upload has a
connection of its own, closed after the answer (``Connection: close``): an upload is megabytes,
a connection set-up microseconds.

A range of a file whose ``unchanged`` check fails when it is opened, or before its last piece,
is cut short: the socket is closed with the body incomplete, so the bucket stores nothing of it,
and :class:`~kachery_node.errors.LinkedFileChangedError` is raised.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from ...errors import HubRequestError, LinkedFileChangedError
from .bucket_interface import FileRange
from .direct_http import DirectAborted, DirectExchange, DirectUnsupported, content_length

# Sent at a time, progress reported after each (as httpx's path does: a slow link's progress, and
# the daemon's stall detection, stay live); one sendfile call a MiB costs ~10 ms a GiB.
PIECE_BYTES = 1 << 20


class DirectPutUnsupported(DirectUnsupported):
    """This upload needs a full HTTP client (a proxy, an unusual answer, ...)."""


class DirectPutAborted(DirectAborted):
    """:meth:`DirectPut.abort` was called: the upload stopped."""


class DirectPut(DirectExchange):
    """One PUT of ``source`` (a file's bytes ``[start, end)``; a whole file is the range of its
    size) to ``url``; :meth:`run` blocks (call it in a worker thread), :meth:`abort` stops it from
    any thread."""

    method = "PUT"
    unsupported = DirectPutUnsupported
    aborted = DirectPutAborted

    def __init__(self, url: str, source: FileRange, *, connect_timeout: float, read_timeout: float) -> None:
        super().__init__(url, connect_timeout=connect_timeout, read_timeout=read_timeout)
        self._source = source

    def run(self, progress: Callable[[int, int], None] | None = None) -> bytes:
        """Send the body and read the answer; returns the answer's body (a 2xx status).

        Raises HubRequestError (an error status, or the connection ending before an answer),
        LinkedFileChangedError, DirectPutUnsupported (no byte of the body sent), DirectPutAborted
        or OSError (a network failure, a timeout)."""
        source = self._source
        with open(source.path, "rb", buffering=0) as f:
            _require_unchanged(source, f)
            sock = self._connect()
            try:
                self._hold(sock)
                sock.sendall(self._request_head([
                    "Content-Type: application/octet-stream", f"Content-Length: {source.size}",
                    "Connection: close", "User-Agent: kachery"]))
                try:
                    self._send_range(sock, f, source, progress)
                except (BrokenPipeError, ConnectionResetError):
                    # The bucket answered early (a refusal) and stopped reading: say what it said.
                    self._check_aborted()
                    raise self._early_answer(sock) from None
                # The body is sent: whatever the answer's shape, its status decides (its body,
                # read as it comes, is only the bucket's note or its error).
                try:
                    status, headers, body = self._read_head(sock, codings_allowed=True)
                except DirectPutUnsupported as why:  # not HTTP/1.x: too late for another client
                    raise HubRequestError(502, "http_error", f"{self._what}: {why}") from None
                length = content_length(headers) if "transfer-encoding" not in headers else None
                if status >= 400:
                    raise self._error(sock, status, headers, body, length)
                if not 200 <= status < 300:
                    raise HubRequestError(502, "http_error", f"{self._what}: HTTP {status}")
                return self._read_rest(sock, body, length)
            finally:
                with self._lock:
                    self._sock = None
                sock.close()

    # ------------------------------------------------------------------ pieces
    def _send_range(self, sock: socket.socket, f, source: FileRange,
                    progress: Callable[[int, int], None] | None) -> None:
        done, size = 0, source.size
        plain = not self._https
        while done < size:
            self._check_aborted()
            n = min(PIECE_BYTES, size - done)
            if done + n == size:
                _require_unchanged(source, f)  # before the last piece, as http_transfer does
            if plain:
                # socket.sendfile: os.sendfile, waiting (up to the socket's timeout) whenever the
                # socket's buffer is full; it stops short, without an error, at the file's end.
                if sock.sendfile(f, source.start + done, n) < n:
                    raise LinkedFileChangedError(f"{source.path} ends before byte {source.end}")
            else:
                piece = os.pread(f.fileno(), n, source.start + done)
                if len(piece) < n:
                    raise LinkedFileChangedError(f"{source.path} ends before byte {source.end}")
                sock.sendall(piece)
            done += n
            if progress is not None:
                progress(done, size)

    def _early_answer(self, sock: socket.socket) -> Exception:
        """The bucket's answer to a body it stopped reading, if it sent one (a refusal)."""
        try:
            status, headers, body = self._read_head(sock, codings_allowed=True)
        except (OSError, HubRequestError):
            return HubRequestError(0, "unreachable", f"{self._what}: the connection broke off")
        if status >= 400:
            return self._error(sock, status, headers, body, content_length(headers))
        return HubRequestError(502, "http_error", f"{self._what}: HTTP {status} before the body was sent")

    def _read_rest(self, sock: socket.socket, body: bytes, length: int | None) -> bytes:
        """The answer's body (small: the bucket's JSON), to its length or the connection's end."""
        while length is None or len(body) < length:
            piece = sock.recv(65536)
            if not piece:
                if length is not None:
                    raise HubRequestError(502, "http_error", f"{self._what}: answer cut short")
                break
            body += piece
            if len(body) > (1 << 20):
                raise HubRequestError(502, "http_error", f"{self._what}: answer too long")
        return body


def _require_unchanged(source: FileRange, f) -> None:
    if source.unchanged is not None and not source.unchanged(os.fstat(f.fileno())):
        raise LinkedFileChangedError(
            f"{source.path} changed while bytes [{source.start}, {source.end}) of it were uploaded")

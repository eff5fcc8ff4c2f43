"""A small WebSocket client (RFC 6455) on trio streams: the node's connection to the hub's relay.

What the relay client needs and nothing more: one connection, no extensions, no subprotocol,
whole messages up to a size limit. The caller's own task reads (:meth:`WebSocketConnection.
receive_messages`), so a received frame reaches the relay client with no task switch of ours;
pings are answered and the close handshake is done along the way. Frames are parsed and built
by :mod:`kachery_node.transport.websocket_frames`.

Sending: a frame is written whole, under one send lock, so frames never interleave. While the
lock is free, :meth:`WebSocketConnection.send_message` writes the frame straight into the socket
from the calling task with one non-blocking write (no task switch before the bytes leave: the
relay client's publish fast path); what the socket does not take at once is sent by the same
task, still under the lock and shielded from cancellation so a frame is never cut (at most
:data:`REST_TIMEOUT_S`; after that the connection is aborted, since its stream can no longer be
framed). Over TLS the frame goes through the SSL stream the same way, without the raw write.

Failures are typed: :class:`WebSocketHandshakeError` (no connection: the server refused or
botched the opening handshake, or did not finish it within the timeout) and
:class:`WebSocketClosed` (the connection is over: closed by either side, or lost). Both are
:class:`~kachery_node.errors.HubRequestError`, so what handles the relay's refusals handles them.

Example::

    async with connect_websocket("ws://127.0.0.1:8080/pubsub", max_message_bytes=16 << 20) as ws:
        await ws.send_message(b'["hello"]', binary=False)
        for opcode, payload in await ws.receive_messages():
            ...
"""

from __future__ import annotations

import base64
import hashlib
import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import trio

from ...errors import HubRequestError
from ..tls import describe_tls_failure
from ..websocket_frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    MessageReader,
    close_payload,
    encode_frame,
    parse_close,
)

CONNECT_TIMEOUT_S = 10.0  # the TCP connection
HANDSHAKE_TIMEOUT_S = 10.0  # then TLS and the HTTP upgrade
CLOSE_TIMEOUT_S = 2.0  # how long closing waits for the server's close frame
REST_TIMEOUT_S = 10.0  # how long the rest of a frame begun in the socket may take to go out
RECEIVE_BYTES = 65536  # one read (below malloc's mmap threshold: cheap for small frames)
MAX_RESPONSE_HEAD_BYTES = 16384
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3


class WebSocketHandshakeError(HubRequestError):
    """No WebSocket connection: the server refused the upgrade (``status``: its HTTP status), sent
    an answer that is not a valid acceptance (502), or did not answer in time (0). ``code``:
    ``websocket_refused``, ``websocket_handshake_invalid``, ``websocket_handshake_timeout`` or
    ``tls_failed``."""


class WebSocketClosed(HubRequestError):
    """The connection is over (code ``connection_closed``): ``close_code`` and ``reason`` are the
    close frame's (1006 and a description if the connection was lost without one)."""

    def __init__(self, close_code: int | None, reason: str, message: str) -> None:
        super().__init__(400, "connection_closed", message)
        self.close_code = close_code
        self.reason = reason


def accept_key(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` value a server must answer to ``Sec-WebSocket-Key: key``."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


class WebSocketConnection:
    """One open client connection. Use :func:`connect_websocket`.

    One task at a time calls :meth:`receive_messages`; any number may send."""

    def __init__(self, stream: trio.abc.Stream, url: str, max_message_bytes: int,
                 received: bytes = b"") -> None:
        self.stream = stream
        #: The connection's socket (trio) over plain TCP; None over TLS.
        self.socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._fd = self.socket.fileno() if self.socket is not None else -1
        self.url = url
        self._reader = MessageReader(masked=False, max_message_bytes=max_message_bytes)
        self._received = received  # bytes that came with the handshake's answer
        self._send_lock = trio.StrictFIFOLock()
        self._receiving = False
        self._drained = False  # the last read of the socket took all there was
        self._close_sent = False
        self._closed: WebSocketClosed | None = None  # set once the connection is over
        self._frame_error: FrameError | None = None  # the server's, raised after what preceded it
        self._close_received = trio.Event()  # the server's close frame, or the end of the stream

    # ------------------------------------------------------------------ receiving
    async def receive_messages(self) -> list[tuple[int, bytes]]:
        """The next data messages, ``(OP_TEXT or OP_BINARY, payload)``, in order (at least one).
        Pings are answered with pongs meanwhile. Raises WebSocketClosed when the connection is
        over, and FrameError when the server broke the framing (the connection is then closed
        with the error's code; the data messages it completed before the fault are returned
        first, and the next call raises)."""
        if self._frame_error is not None:
            raise self._frame_error
        if self._closed is not None:
            raise self._closed
        self._receiving = True
        try:
            while True:
                if self._received:
                    data, self._received = self._received, b""
                else:
                    data = await self._receive_some()
                try:
                    messages = self._reader.feed(data)
                except FrameError as exc:
                    await self._fail(exc.close_code, str(exc))
                    # what the server sent before it broke the framing goes to the consumer
                    # first; the next call raises (the connection is closed meanwhile)
                    messages = [(op, payload) for op, payload in exc.messages if not op & 0x8]
                    if not messages:
                        raise
                    self._frame_error = exc
                    return messages
                for opcode, _ in messages:
                    if opcode & 0x8:  # a control frame: rare, so the common case builds no list
                        messages = await self._handle_control(messages)
                        break
                if messages:
                    return messages
        finally:
            self._receiving = False

    async def _receive_some(self) -> bytes:
        try:
            if self._fd >= 0:
                data = await self._read_socket()
            else:
                data = await self.stream.receive_some(RECEIVE_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise self._lost(f"the connection to {self.url} was lost ({exc or type(exc).__name__})") from None
        if not data:
            raise self._lost(f"{self.url} closed the connection without a close frame")
        return data

    async def _read_socket(self) -> bytes:
        """One read of the plain socket. A read that did not fill the buffer drained the socket
        (a live push is one small frame), so the next one waits until it is readable before
        reading, instead of trying first as trio's ``receive_some`` does: that try would fail
        (EAGAIN) almost every time, a system call and an exception per frame."""
        while True:
            if self._drained:
                await trio.lowlevel.wait_readable(self.socket)
            else:
                await trio.lowlevel.checkpoint()  # a flood must not starve the consumer
            fd = self.socket.fileno()  # -1 once closed (by another task meanwhile): never a stale fd
            if fd < 0:
                raise trio.ClosedResourceError
            try:
                data = os.read(fd, RECEIVE_BYTES)
            except BlockingIOError:
                self._drained = True
                continue
            self._drained = len(data) < RECEIVE_BYTES
            return data

    async def _handle_control(self, messages: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        data: list[tuple[int, bytes]] = []
        for opcode, payload in messages:
            if opcode in (OP_TEXT, OP_BINARY):
                data.append((opcode, payload))
            elif opcode == OP_PING and not self._close_sent:  # nothing more after our close
                try:
                    await self._send_frame(encode_frame(OP_PONG, payload, mask=True))
                except WebSocketClosed:
                    pass  # the reading finds out why
            elif opcode == OP_CLOSE:
                try:
                    code, reason = parse_close(payload)
                except FrameError as exc:
                    await self._fail(exc.close_code, str(exc))
                    raise
                await self._closed_by_server(code, reason)
                if data:  # what came before the close first; the next call raises
                    return data
                raise self._closed  # type: ignore[misc]
            # OP_PONG: we send no pings; an unsolicited pong is allowed and ignored
        return data

    async def _closed_by_server(self, code: int | None, reason: str) -> None:
        """The server's close frame came: answer it (unless ours went first) and close the stream."""
        self._closed = self._closed or WebSocketClosed(
            code, reason, f"the relay closed the connection ({code}: {reason})")
        self._close_received.set()
        if not self._close_sent:
            with trio.move_on_after(CLOSE_TIMEOUT_S) as scope:
                scope.shield = True
                await self._send_close(code if code is not None else 1000, "")
        await trio.aclose_forcefully(self.stream)

    def _lost(self, why: str) -> WebSocketClosed:
        self._closed = self._closed or WebSocketClosed(1006, why, f"the relay connection ended (1006: {why})")
        self._close_received.set()
        return self._closed

    async def _fail(self, code: int, why: str) -> None:
        """We end the connection for the server's fault: a close frame with ``code``, no wait."""
        self._closed = self._closed or WebSocketClosed(code, why,
                                                       f"the relay connection was closed ({code}: {why})")
        self._close_received.set()
        with trio.move_on_after(CLOSE_TIMEOUT_S) as scope:
            scope.shield = True
            await self._send_close(code, why)
        await trio.aclose_forcefully(self.stream)

    # ------------------------------------------------------------------ sending
    def idle(self) -> bool:
        """Whether a frame sent now goes straight into the socket: nothing else is being sent,
        and the connection is open."""
        return not self._send_lock.locked() and self._closed is None and not self._close_sent

    async def send_message(self, payload: bytes, *, binary: bool = True) -> None:
        """Send ``payload`` as one message (binary, or text: UTF-8 bytes). Raises
        WebSocketClosed if the connection is over or breaks."""
        if self._closed is not None or self._close_sent:
            raise self._closed or WebSocketClosed(1000, "", "the relay connection is closing")
        await self._send_frame(encode_frame(OP_BINARY if binary else OP_TEXT, payload, mask=True))

    async def _send_frame(self, frame: bytes) -> None:
        lock = self._send_lock
        if lock.locked():
            await lock.acquire()
        else:
            lock.acquire_nowait()  # no checkpoint before the write: the fast path
        try:
            await self._write(frame)
        finally:
            lock.release()

    async def _write(self, frame: bytes) -> None:
        """Write the whole ``frame`` (the caller holds the send lock)."""
        sent = 0
        if self._fd >= 0:
            fd = self.socket.fileno()  # -1 once closed: never a stale fd
            if fd < 0:
                raise self._lost(f"the connection to {self.url} is closed")
            try:
                sent = os.write(fd, frame)
            except BlockingIOError:
                pass
            except OSError as exc:
                raise self._lost(f"writing to {self.url} failed: {exc}") from None
            if sent == len(frame):
                return
        with trio.CancelScope(shield=True, deadline=trio.current_time() + REST_TIMEOUT_S) as scope:
            try:
                await self.stream.send_all(memoryview(frame)[sent:] if sent else frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise self._lost(f"writing to {self.url} failed: {exc or type(exc).__name__}") from None
        if scope.cancelled_caught:  # a frame cut short: nothing more can be framed on this stream
            err = self._lost(f"{self.url} did not read a frame within {REST_TIMEOUT_S:g} s; "
                             "connection aborted")  # the reason, before the reader sees the close
            await trio.aclose_forcefully(self.stream)
            raise err

    async def _send_close(self, code: int, reason: str) -> None:
        if self._close_sent:
            return
        self._close_sent = True
        try:
            await self._send_frame(encode_frame(OP_CLOSE, close_payload(code, reason), mask=True))
        except WebSocketClosed:
            pass

    # ------------------------------------------------------------------ closing
    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """The close handshake: send a close frame, wait for the server's (at most
        :data:`CLOSE_TIMEOUT_S`), then close the stream. Safe to call more than once, and while
        another task is in :meth:`receive_messages` (which then raises WebSocketClosed)."""
        with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_TIMEOUT_S):
            if self._closed is None:
                await self._send_close(code, reason)
                if self._receiving:  # the reading task sees the answer
                    await self._close_received.wait()
                else:
                    await self._drain_until_close()
        if self._closed is None:
            self._closed = WebSocketClosed(code, reason,
                                           f"the relay connection was closed ({code}: {reason})")
        await trio.aclose_forcefully(self.stream)

    async def _drain_until_close(self) -> None:
        try:
            while True:
                await self.receive_messages()  # data after our close frame is dropped
        except (WebSocketClosed, FrameError):
            pass


def _host_header(host: str, port: int, default_port: int) -> str:
    name = f"[{host}]" if ":" in host else host
    return name if port == default_port else f"{name}:{port}"


async def _read_response_head(stream: trio.abc.Stream, url: str) -> tuple[bytes, bytes]:
    """The server's answer up to its blank line, and the bytes after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_RESPONSE_HEAD_BYTES:
            raise WebSocketHandshakeError(502, "websocket_handshake_invalid",
                                          f"{url} answered the WebSocket upgrade with over "
                                          f"{MAX_RESPONSE_HEAD_BYTES} bytes of headers")
        try:
            chunk = await stream.receive_some(4096)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise _tls_or(exc, url, WebSocketHandshakeError(
                502, "websocket_handshake_invalid",
                f"{url} broke the connection during the WebSocket upgrade ({exc or type(exc).__name__})"
            )) from exc
        if not chunk:
            raise WebSocketHandshakeError(502, "websocket_handshake_invalid",
                                          f"{url} closed the connection during the WebSocket upgrade")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _check_response(head: bytes, key: bytes, url: str) -> None:
    """Raise WebSocketHandshakeError unless ``head`` accepts the upgrade (RFC 6455 §4.1)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise WebSocketHandshakeError(502, "websocket_handshake_invalid",
                                      f"{url} did not answer the WebSocket upgrade with HTTP: "
                                      f"{lines[0][:80]!r}")
    status = int(parts[1])
    if status != 101:
        reason = parts[2] if len(parts) > 2 else ""
        raise WebSocketHandshakeError(status, "websocket_refused",
                                      f"{url} refused the WebSocket upgrade: HTTP {status} {reason}".rstrip())
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise WebSocketHandshakeError(502, "websocket_handshake_invalid",
                                          f"{url} sent a malformed header line {line[:80]!r}")
        headers.setdefault(name.strip().lower(), []).append(value.strip())

    def invalid(why: str) -> WebSocketHandshakeError:
        return WebSocketHandshakeError(502, "websocket_handshake_invalid",
                                       f"{url} accepted the WebSocket upgrade wrongly: {why}")

    if [v.lower() for v in headers.get("upgrade", [])] != ["websocket"]:
        raise invalid(f"Upgrade: {', '.join(headers.get('upgrade', [])) or '(none)'}")
    tokens = {t.strip().lower() for v in headers.get("connection", []) for t in v.split(",")}
    if "upgrade" not in tokens:
        raise invalid(f"Connection: {', '.join(headers.get('connection', [])) or '(none)'}")
    if headers.get("sec-websocket-accept") != [accept_key(key).decode()]:
        raise invalid("a wrong Sec-WebSocket-Accept")
    if any(headers.get("sec-websocket-extensions", [])):
        raise invalid(f"it selected extensions none were offered: "
                      f"{', '.join(headers['sec-websocket-extensions'])}")
    if any(headers.get("sec-websocket-protocol", [])):
        raise invalid(f"it selected a subprotocol none was offered: "
                      f"{', '.join(headers['sec-websocket-protocol'])}")


def _tls_or(exc: BaseException, url: str, other: WebSocketHandshakeError) -> WebSocketHandshakeError:
    """A ``tls_failed`` error if ``exc`` comes from TLS (what to do about it), else ``other``
    (raise it ``from exc``)."""
    tls = describe_tls_failure(exc, url)
    return WebSocketHandshakeError(0, "tls_failed", tls) if tls else other


async def _open_stream(url: str, ssl_context: ssl.SSLContext | None,
                       connect_timeout: float) -> tuple[trio.abc.Stream, str, str]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"{url!r} is not a ws:// or wss:// URL")
    secure = scheme == "wss"
    default_port = 443 if secure else 80
    port = parts.port or default_port
    with trio.move_on_after(connect_timeout) as scope:
        tcp = await trio.open_tcp_stream(parts.hostname, port)
    if scope.cancelled_caught:
        raise WebSocketHandshakeError(0, "websocket_handshake_timeout",
                                      f"no TCP connection to {url} within {connect_timeout:g} s")
    stream: trio.abc.Stream = tcp
    if secure:
        stream = trio.SSLStream(tcp, ssl_context or ssl.create_default_context(),
                                server_hostname=parts.hostname, https_compatible=True)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return stream, _host_header(parts.hostname, port, default_port), target


@asynccontextmanager
async def connect_websocket(url: str, *, ssl_context: ssl.SSLContext | None = None,
                            max_message_bytes: int = 16 << 20,
                            connect_timeout: float = CONNECT_TIMEOUT_S,
                            handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
                            ) -> AsyncIterator[WebSocketConnection]:
    """Open a WebSocket to ``url`` (``ws://`` or ``wss://`` with ``ssl_context``), yield it, and
    close it (the close handshake) on the way out. Raises OSError when the host cannot be
    reached and WebSocketHandshakeError when it does not accept the upgrade in time; messages
    over ``max_message_bytes`` from the server end the connection (close code 1009)."""
    stream, host, target = await _open_stream(url, ssl_context, connect_timeout)
    try:
        with trio.move_on_after(handshake_timeout) as scope:
            if isinstance(stream, trio.SSLStream):
                try:
                    await stream.do_handshake()
                except (trio.BrokenResourceError, OSError) as exc:
                    raise _tls_or(exc, url, WebSocketHandshakeError(
                        0, "tls_failed", f"TLS with {url} failed ({exc})")) from exc
            key = base64.b64encode(os.urandom(16))
            request = (f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                       f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
                       "Sec-WebSocket-Version: 13\r\n\r\n").encode()
            try:
                await stream.send_all(request)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise _tls_or(exc, url, WebSocketHandshakeError(
                    502, "websocket_handshake_invalid", f"{url} broke the connection before the "
                    f"WebSocket upgrade ({exc or type(exc).__name__})")) from exc
            head, rest = await _read_response_head(stream, url)
            _check_response(head, key, url)
        if scope.cancelled_caught:
            raise WebSocketHandshakeError(0, "websocket_handshake_timeout",
                                          f"{url} did not complete the WebSocket handshake "
                                          f"within {handshake_timeout:g} s")
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    ws = WebSocketConnection(stream, url, max_message_bytes, rest)
    try:
        yield ws
    finally:
        await ws.aclose()

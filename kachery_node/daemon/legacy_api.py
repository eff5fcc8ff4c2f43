"""The original daemon's local API, as far as kachery-client 1.2.0 uses it for files, mutables
and feeds, mapped onto this node (spec/legacy.md §3). Mounted by ``local_api.build_app``.

An unmodified kachery-client 1.2.0 script finds this daemon as it found the original: it probes
``GET /probe`` on ``$KACHERY_DAEMON_PORT`` (default 20431, the same), reads the node ID from
``<storage>/kachery-node-id`` and its credential from ``<storage>/client-auth``, which the daemon
writes when it starts (:func:`write_client_files`), and sends it in the
``KACHERY-CLIENT-AUTH-CODE`` header. The code is new at every start (the original rotated it);
the file is readable by its owner only.

==================================  =============================================================
``GET  /probe``                     ``success, daemonVersion, nodeId, kacheryStorageDir`` (added to
                                    this daemon's own probe answer, in local_api)
``POST /store``                     the file's bytes as the body → ``{success, error, sha1,
                                    manifestSha1}`` (stored as by ``kn.store_file``)
``POST /linkFile``                  ``{localFilePath, size, mtime}`` → the same; also writes the
                                    ``.link`` file the client checks for and loads through
``POST /loadFile``                  ``{fileKey, channelName?}`` → json-socket frames
                                    (``<length>#<json>``): ``progress``, ``finished``
                                    (``localFilePath``) or ``error``; from the channel when the
                                    file is not here
``POST /mutable/get|set|delete``    the node's mutables (the same as ``kn.get``/``kn.set``)
``POST /feed/createFeed``           ``{feedName?}`` → ``{success, feedId}``
``POST /feed/deleteFeed``           ``{feedId}`` → ``{success}``
``POST /feed/getFeedInfo``          ``{feedId}`` → ``{success, isWriteable}``
``POST /feed/getNumLocalMessages``  ``{feedId, subfeedHash}`` → ``{success, numMessages}``
``POST /feed/appendMessages``       ``{feedId, subfeedHash, messages}`` → ``{success}``
``POST /feed/watchForNewMessages``  ``{subfeedWatches, waitMsec, maxNumMessages?, signed?}`` →
                                    ``{success, messages: {watch name: [...]}}``
==================================  =============================================================

Feeds are this node's (spec/feeds.md): a subfeed the client names by its hash is the subfeed
``~<hash>``, the same one the original's name hashes to, so ``feed://<id>/primes`` written by
either side is one subfeed. ``signed: true`` answers with this format's signed messages
(``{"body", "signature"}``), which the original's verifier cannot check. Errors are HTTP 4xx/5xx
with a JSON body: the client raises an exception carrying it (the original answered 500).
Tasks (``/task/*``) and uploads (``/createSignedFileUploadUrl``) are not served: those need the
original's network, and scripts use ``kn.request_task`` and ``kn.upload_file`` instead.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import secrets
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

import kachery_feeds

from .. import DISTRIBUTION
from ..errors import InvalidDataError, KacheryError, NotFoundError
from ..legacy.feed_names import feed_id_for_name, name_in_original_key
from ..legacy.link_files import write_link_file
from ..legacy.storage_dir import NODE_ID_FILE, write_text_atomic
from ..storage.file_uris import build_uri, parse_uri
from .local_api import ApiError, DaemonContext, _json, _json_body, _node

log = logging.getLogger("kachery.daemon.legacy")

CLIENT_AUTH_FILE = "client-auth"
AUTH_HEADER = "kachery-client-auth-code"
LOCAL_CHANNEL = "*local*"
MAX_WAIT_MSEC = 3_600_000  # one long poll waits at most an hour (the client sends 10 ms to 5 s)
MAX_WATCHES = 1000
_HEX40 = re.compile(r"[0-9a-fA-F]{40}")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def write_client_files(storage_dir: Path, node_id: str) -> str:
    """Write ``client-auth`` (a new code) and ``kachery-node-id`` where kachery-client 1.2.0
    looks for them; return the code. The original daemon wrote the same two files at start."""
    code = secrets.token_hex(16)
    write_text_atomic(Path(storage_dir) / CLIENT_AUTH_FILE, code)  # no newline: sent as read
    node_id_path = Path(storage_dir) / NODE_ID_FILE
    try:
        current = node_id_path.read_text()
    except OSError:
        current = None
    if current != node_id:
        if current is not None:
            log.warning("%s said %s; replaced with this node's ID %s (kachery-client checks it)",
                        node_id_path, current.strip()[:64], node_id)
        write_text_atomic(node_id_path, node_id)
    return code


def probe_fields(ctx: DaemonContext) -> dict[str, Any]:
    """What the original's ``/probe`` answered, for kachery-client."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        daemon_version = f"{DISTRIBUTION}-{version(DISTRIBUTION)}"
    except PackageNotFoundError:
        daemon_version = DISTRIBUTION
    return {"success": True, "daemonVersion": daemon_version, "nodeId": ctx.config.node_id,
            "kacheryStorageDir": str(ctx.storage.directory)}


def _authorize(ctx: DaemonContext, request: Request) -> None:
    code = request.headers.get(AUTH_HEADER)
    if code is None:
        raise ApiError(403, "Missing client auth code (the KACHERY-CLIENT-AUTH-CODE header, from "
                            f"{ctx.storage.directory / CLIENT_AUTH_FILE})")
    if not ctx.legacy_auth_code or not hmac.compare_digest(code.encode(), ctx.legacy_auth_code.encode()):
        raise ApiError(403, "Incorrect or invalid client authorization code.")


def _hex(body: dict[str, Any], name: str, pattern: re.Pattern[str]) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ApiError(400, f"'{name}' must be {'64' if pattern is _HEX64 else '40'} hex characters")
    return value.lower()


def _count(value: Any, name: str, high: int) -> int:
    if type(value) is not int or not 0 <= value <= high:
        if isinstance(value, float) and value.is_integer() and 0 <= value <= high:
            return int(value)  # the client computes some of these (timeout_sec * 1000)
        raise ApiError(400, f"'{name}' must be an integer in [0, {high}]")
    return value


def _frame(obj: dict[str, Any]) -> bytes:
    """One json-socket frame: ``<decimal byte length>#<JSON>``."""
    data = orjson.dumps(obj)
    return str(len(data)).encode() + b"#" + data


def _file_uri(file_key: Any) -> tuple[str, tuple[str, int, int] | None]:
    """The ``sha1://`` URI of a FileKey and, for a chunk, ``(file sha1, start, end)``."""
    if not isinstance(file_key, dict):
        raise ApiError(400, "'fileKey' must be an object {sha1, manifestSha1?, chunkOf?}")
    sha1 = _hex(file_key, "sha1", _HEX40)
    manifest = _hex(file_key, "manifestSha1", _HEX40) if file_key.get("manifestSha1") else None
    chunk_of = file_key.get("chunkOf")
    if chunk_of is None:
        return build_uri(sha1, None, manifest), None
    if not isinstance(chunk_of, dict) or not isinstance(chunk_of.get("fileKey"), dict):
        raise ApiError(400, "'chunkOf' must be {fileKey: {sha1}, startByte, endByte}")
    parent = _hex(chunk_of["fileKey"], "sha1", _HEX40)
    start = _count(chunk_of.get("startByte"), "startByte", 2**53)
    end = _count(chunk_of.get("endByte"), "endByte", 2**53)
    if end < start:
        raise ApiError(400, "'endByte' is before 'startByte'")
    return build_uri(sha1), (parent, start, end)


def legacy_routes(ctx: DaemonContext) -> list[Route]:
    """The routes of the module docstring, for ``ctx``."""
    storage = ctx.storage
    followed: set[tuple[str, str, str]] = set()  # (feed, subfeed hash, channel) asked to follow

    async def authorized_body(request: Request) -> dict[str, Any]:
        _authorize(ctx, request)
        return await _json_body(request)

    # -- files -----------------------------------------------------------------------------------
    async def store(request: Request) -> Response:
        _authorize(ctx, request)
        declared = request.headers.get("content-length", "")
        if not declared.isascii() or not declared.isdigit():
            raise ApiError(411, "POST /store needs a Content-Length")
        chunks_in, chunks_out = anyio.create_memory_object_stream[bytes](8)
        failure: list[str] = []  # why the body is incomplete, set by pump()

        class _Body:
            """The request body as a file for the storage's ingest (in a worker thread); a body
            that ends early raises, so nothing is stored from it."""

            def __init__(self) -> None:
                self._buffer, self._ended = b"", False

            def read(self, n: int = -1) -> bytes:
                while not self._buffer and not self._ended:
                    try:
                        self._buffer = anyio.from_thread.run(chunks_out.receive)
                    except anyio.EndOfStream:
                        if failure:
                            raise InvalidDataError(failure[0]) from None
                        self._ended = True
                size = len(self._buffer) if n is None or n < 0 else n
                out, self._buffer = self._buffer[:size], self._buffer[size:]
                return out

        async def pump() -> None:
            received = 0
            async with chunks_in:
                try:
                    async for chunk in request.stream():
                        received += len(chunk)
                        if chunk:
                            await chunks_in.send(chunk)
                except anyio.BrokenResourceError:
                    return  # the ingest failed and stopped reading; its error is reported
                except Exception as exc:  # the client went away mid-body
                    failure.append(f"the upload was cut off after {received} bytes: {exc!r}")
                    return
                if received != int(declared):
                    failure.append(f"received {received} bytes, not the {declared} declared")

        outcome: dict[str, Any] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(pump)
            try:  # caught here: raised inside the task group it would become an exception group
                outcome["uri"] = await anyio.to_thread.run_sync(lambda: storage.store_stream(_Body()))
            except Exception as exc:
                outcome["error"] = exc
            finally:
                chunks_out.close()
        if "error" in outcome:
            raise outcome["error"]
        return _stored(outcome["uri"])

    def _stored(uri: str) -> Response:
        key = parse_uri(uri)
        return _json({"success": True, "error": None, "sha1": key.sha1,
                      "manifestSha1": key.manifest_sha1})

    async def link(request: Request) -> Response:
        body = await authorized_body(request)
        path = body.get("localFilePath")
        if not isinstance(path, str) or not os.path.isabs(path):
            raise ApiError(400, "'localFilePath' must be an absolute path")
        size = body.get("size")

        def link_it() -> str:
            try:
                uri = storage.link_file(path)
            except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
                raise InvalidDataError(f"cannot link {path}: {exc}") from exc
            key = parse_uri(uri)
            if size is not None and os.stat(path).st_size != size:
                raise InvalidDataError(f"{path} has changed size while it was being linked")
            stored = storage.path_for(key.sha1)
            if not stored.exists():  # the client checks for the stored copy or the .link file
                write_link_file(stored, os.path.abspath(path), key.manifest_sha1)
            return uri

        return _stored(await anyio.to_thread.run_sync(link_it))

    async def load(request: Request) -> Response:
        body = await authorized_body(request)
        uri, chunk = _file_uri(body.get("fileKey"))
        channel = body.get("channelName")
        if channel is not None and not isinstance(channel, str):
            raise ApiError(400, "'channelName' must be a channel name")
        frames_in, frames_out = anyio.create_memory_object_stream[bytes](100)

        def progress(done: int, total: int) -> None:
            try:
                frames_in.send_nowait(_frame({"type": "progress", "bytesLoaded": done,
                                              "bytesTotal": total}))
            except anyio.WouldBlock:
                pass  # a slow reader misses a progress frame rather than slowing the download

        async def run() -> None:
            async with frames_in:
                try:
                    if chunk:
                        path = await _chunk(uri, chunk, channel, progress)
                    else:
                        path = await _local_or_fetched(uri, channel, progress)
                    frame = {"type": "finished", "localFilePath": path}
                except KacheryError as exc:
                    frame = {"type": "error", "error": str(exc)}
                except Exception as exc:  # a bug: still end the stream with a frame
                    log.exception("loadFile %s failed", uri)
                    frame = {"type": "error", "error": f"internal error: {exc!r}"}
                await frames_in.send(_frame(frame))

        async def frames():
            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                async with frames_out:
                    async for frame in frames_out:
                        yield frame

        return StreamingResponse(frames(), media_type="application/octet-stream")

    async def _local_or_fetched(uri: str, channel: str | None, progress) -> str:
        try:
            return await anyio.to_thread.run_sync(storage.load_file, uri)
        except NotFoundError:
            if channel is None or channel == LOCAL_CHANNEL:
                raise NotFoundError(
                    f"{uri} is not stored on this node, and no channel was named to load it "
                    "from (kachery-client: load_file(uri, channel=...))", uri=uri) from None
        node = _node(ctx)
        return await node.files.fetch(node.links(channel), uri, progress=progress)

    async def _chunk(uri: str, chunk: tuple[str, int, int], channel: str | None, progress) -> str:
        """A chunk of a file: cut from the whole file when it is here; else the chunk itself from
        the channel (uploads put each chunk in the bucket under its own SHA-1); else the whole
        file from the channel, then cut."""
        parent = build_uri(chunk[0])
        if not await anyio.to_thread.run_sync(storage.has_file, parent):
            try:
                return await _local_or_fetched(uri, channel, progress)
            except NotFoundError:
                await _local_or_fetched(parent, channel, progress)
        return await anyio.to_thread.run_sync(_chunk_file, uri, chunk)

    def _chunk_file(uri: str, chunk: tuple[str, int, int]) -> str:
        """Store bytes [start, end) of a local file as the chunk named by ``uri`` (the client
        reads chunks as files); refused unless they hash to the chunk's SHA-1."""
        parent, start, end = chunk
        data = storage.load_bytes(build_uri(parent), start, end)
        stored = storage.store_bytes(data, fetchable=True)
        if parse_uri(stored).sha1 != parse_uri(uri).sha1:
            raise InvalidDataError(f"bytes {start}-{end} of sha1://{parent} are not {uri}")
        return storage.load_file(stored)

    # -- mutables --------------------------------------------------------------------------------
    def _key(body: dict[str, Any]) -> Any:
        if "key" not in body:
            raise ApiError(400, "missing 'key'")
        return body["key"]

    async def mutable_get(request: Request) -> Response:
        body = await authorized_body(request)
        key = _key(body)
        name = name_in_original_key(key)
        if name is not None:  # kachery-client's get_feed_id: either kind of name (legacy/feed_names)
            feed_id = feed_id_for_name(storage, name)
            if feed_id is None:
                return _json({"success": True, "found": False, "value": ""})
            return _json({"success": True, "found": True, "value": feed_id})
        try:
            value = storage.mutables.get(key)
        except NotFoundError:
            return _json({"success": True, "found": False, "value": ""})
        return _json({"success": True, "found": True, "value": value})

    async def mutable_set(request: Request) -> Response:
        body = await authorized_body(request)
        if "value" not in body:
            raise ApiError(400, "missing 'value'")
        update = body.get("update", True)
        if not isinstance(update, bool):
            raise ApiError(400, "'update' must be true or false")
        written = storage.mutables.set(_key(body), body["value"], overwrite=update)
        return _json({"success": written})

    async def mutable_delete(request: Request) -> Response:
        body = await authorized_body(request)
        return _json({"success": storage.mutables.delete(_key(body))})

    # -- feeds -----------------------------------------------------------------------------------
    def _subfeed(body: dict[str, Any]) -> kachery_feeds.Subfeed:
        feed_id, sh = _hex(body, "feedId", _HEX64), _hex(body, "subfeedHash", _HEX40)
        return storage.feeds.load_feed(feed_id).load_subfeed("~" + sh)

    async def create_feed(request: Request) -> Response:
        body = await authorized_body(request)
        name = body.get("feedName")
        return _json({"success": True, "feedId": storage.feeds.create_feed(name).feed_id})

    async def delete_feed(request: Request) -> Response:
        body = await authorized_body(request)
        storage.feeds.delete_feed(_hex(body, "feedId", _HEX64))
        return _json({"success": True})

    async def feed_info(request: Request) -> Response:
        body = await authorized_body(request)
        return _json({"success": True,
                      "isWriteable": storage.feeds.has_private_key(_hex(body, "feedId", _HEX64))})

    async def num_messages(request: Request) -> Response:
        body = await authorized_body(request)
        return _json({"success": True, "numMessages": _subfeed(body).get_num_local_messages()})

    async def append(request: Request) -> Response:
        body = await authorized_body(request)
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise ApiError(400, "'messages' must be a list")
        sf = _subfeed(body)
        if messages:
            await anyio.to_thread.run_sync(sf.append_messages, messages)
        return _json({"success": True})

    async def watch(request: Request) -> Response:
        body = await authorized_body(request)
        watches = body.get("subfeedWatches")
        if not isinstance(watches, dict) or len(watches) > MAX_WATCHES:
            raise ApiError(400, f"'subfeedWatches' must map at most {MAX_WATCHES} names to watches")
        wait_msec = _count(body.get("waitMsec", 0), "waitMsec", MAX_WAIT_MSEC)
        max_num = _count(body.get("maxNumMessages", 0) or 0, "maxNumMessages", 2**31)
        signed = body.get("signed", False)
        if not isinstance(signed, bool):
            raise ApiError(400, "'signed' must be true or false")
        items: dict[str, tuple[kachery_feeds.Subfeed, int]] = {}
        for name, w in watches.items():
            if not isinstance(w, dict):
                raise ApiError(400, f"watch {name!r} must be {{feedId, subfeedHash, position}}")
            sf = _subfeed(w)
            items[name] = (sf, _count(w.get("position", 0), "position", 2**53))
            channel = w.get("channelName", LOCAL_CHANNEL)
            if not isinstance(channel, str):
                raise ApiError(400, "'channelName' must be a channel name or '*local*'")
            wanted = (sf.feed_id, sf.subfeed_hash, channel)
            if channel != LOCAL_CHANNEL and wanted not in followed and not sf.is_writeable:
                _node(ctx).follow(sf.feed_id, sf.subfeed_hash, channel)
                followed.add(wanted)
        deadline = anyio.current_time() + wait_msec / 1000
        while True:
            changed = ctx.changes.current()  # before reading: a change meanwhile is not lost
            found = storage.feeds.new_messages(items, max_num_messages=max_num, signed=signed)
            remaining = deadline - anyio.current_time()
            if found or remaining <= 0:
                return _json({"success": True, "messages": found})
            with anyio.move_on_after(remaining):
                await changed.wait()

    def feed_errors(handler):
        """kachery_feeds errors are the client's fault (or a missing feed): 4xx, with the text."""
        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except kachery_feeds.UnknownFeedError as exc:
                raise ApiError(404, str(exc)) from exc
            except kachery_feeds.NotWriteableError as exc:
                raise ApiError(403, f"Cannot append messages to a readonly feed: {exc}") from exc
            except kachery_feeds.FeedError as exc:
                raise ApiError(400, str(exc)) from exc
        return wrapped

    return [
        Route("/store", store, methods=["POST"]),
        Route("/linkFile", link, methods=["POST"]),
        Route("/loadFile", load, methods=["POST"]),
        Route("/mutable/get", mutable_get, methods=["POST"]),
        Route("/mutable/set", mutable_set, methods=["POST"]),
        Route("/mutable/delete", mutable_delete, methods=["POST"]),
        Route("/feed/createFeed", feed_errors(create_feed), methods=["POST"]),
        Route("/feed/deleteFeed", feed_errors(delete_feed), methods=["POST"]),
        Route("/feed/getFeedInfo", feed_errors(feed_info), methods=["POST"]),
        Route("/feed/getNumLocalMessages", feed_errors(num_messages), methods=["POST"]),
        Route("/feed/appendMessages", feed_errors(append), methods=["POST"]),
        Route("/feed/watchForNewMessages", feed_errors(watch), methods=["POST"]),
    ]


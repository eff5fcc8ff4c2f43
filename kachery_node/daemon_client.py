"""Talking to the local daemon: find it, authenticate, start, stop, ask for its status, and
every request of the CLI, the Python API, task backends and task requests.

:class:`DaemonClient` is the one HTTP client of the daemon's local API (spec/node-protocol.md,
Local API): :meth:`~DaemonClient.request` for a JSON answer, :meth:`~DaemonClient.stream` for a
streamed one (NDJSON lines: a fetch's progress, a task's statuses). All of a process's requests
share one connection pool. Every request has a timeout; failures are typed: a daemon that is not
running raises :class:`DaemonNotRunningError` (with the command that starts one), one that drops
the connection :class:`DaemonConnectionLostError`, an error answer :class:`DaemonError` with its
HTTP ``status``.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson

from .config import default_storage_dir, load_node_config
from .daemon.local_tokens import read_browser_token, read_client_token
from .daemon.paths import INFO_FILE, storage_is_held
from .errors import DaemonConnectionLostError, DaemonError, DaemonNotRunningError, KacheryError
from .transport import http_connections
from .transport.http_connections import TRANSPORT_ERRORS, ConnectFailed

DEFAULT_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0

def daemon_address(storage_dir: Path) -> tuple[str, int] | None:
    """Where the daemon of ``storage_dir`` said it listens (its daemon.json), or None.

    Only this storage's own daemon.json is read: a well-known port may be another storage's
    daemon (another person's on a shared server), which must never get this storage's token.
    """
    try:
        info = json.loads((Path(storage_dir) / INFO_FILE).read_text())
        return str(info["host"]), int(info["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _expected_node_id(storage_dir: Path) -> str | None:
    """The node ID of ``storage_dir`` (its config), else the one its daemon.json names."""
    try:
        return load_node_config(storage_dir).node_id
    except KacheryError:
        pass
    try:
        return str(json.loads((storage_dir / INFO_FILE).read_text())["node_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


#: (storage directory, base URL) pairs whose daemon's node ID was checked in this process.
_verified: set[tuple[str, str]] = set()


class DaemonClient:
    """A connection to the daemon serving ``storage_dir`` (default: ``$KACHERY_STORAGE_DIR``)."""

    def __init__(self, storage_dir: str | os.PathLike | None = None, *, port: int | None = None) -> None:
        self.storage_dir = Path(storage_dir) if storage_dir else default_storage_dir()
        found = daemon_address(self.storage_dir)
        host, found_port = found if found else ("127.0.0.1", None)
        self.host, self.port = host, port or found_port
        self.base_url = (f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"
                         if self.port else None)

    def _not_running(self, why: str = "") -> DaemonNotRunningError:
        return DaemonNotRunningError(
            f"no daemon is running for {self.storage_dir}{why}: start one with `kachery node start`")

    def _ready(self, path: str, timeout: float) -> str:
        """The URL for ``path``, once it is known that this storage's own daemon answers there:
        before this storage's token leaves the process, the node ID at ``/probe`` must be this
        storage's (not another storage's daemon that took the port since)."""
        if self.base_url is None:
            raise self._not_running()
        key = (str(self.storage_dir), self.base_url)
        if path != "/probe" and key not in _verified:
            answer = self.probe(timeout=min(timeout, 5.0)) if timeout else self.probe()
            if answer.get("node_id") != _expected_node_id(self.storage_dir):
                raise self._not_running(f" (the daemon at {self.base_url} serves another node; "
                                        "this storage's daemon.json is out of date)")
            _verified.add(key)
        return path

    def _headers(self, json_body: bool = False, path: str = "") -> dict[str, str]:
        # /probe is asked before the daemon is known to be ours: it never gets the token.
        token = read_client_token(self.storage_dir) if path != "/probe" else None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if json_body:
            headers["Content-Type"] = "application/json"
        return headers

    @staticmethod
    def _encode(json_body: Any) -> bytes | None:
        # orjson: numpy values in task arguments and results serialize; anything else that is not
        # JSON raises TypeError here, before a request is sent.
        return None if json_body is None else orjson.dumps(json_body, option=orjson.OPT_SERIALIZE_NUMPY)

    def _failure(self, exc: BaseException, what: str) -> DaemonError:
        """The typed error for a request that did not get an answer."""
        if isinstance(exc, ConnectFailed):
            _verified.discard((str(self.storage_dir), self.base_url))
            return self._not_running(f" (nothing answers at {self.base_url})")
        if isinstance(exc, TimeoutError):
            return DaemonError(f"the daemon at {self.base_url} did not answer {what} in time ({exc})")
        # Reset or closed mid-request: the daemon died (or is dying) while answering. If nothing
        # listens any more it is simply not running (a connection the kernel had queued for a
        # daemon killed a moment ago is reset, not refused).
        if not self._listening():
            return DaemonNotRunningError(
                f"no kachery daemon at {self.base_url} for {self.storage_dir} (it stopped during "
                f"{what}): start one with `kachery node start`")
        return DaemonConnectionLostError(f"the daemon at {self.base_url} dropped the connection "
                                         f"during {what}: {exc!r}")

    def _listening(self) -> bool:
        """Whether something accepts connections on the daemon's port now."""
        try:
            with socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT):
                return True
        except OSError:  # refused, unreachable, or no answer in time
            return False

    @staticmethod
    def _refusal(status: int, body: bytes, method: str, path: str) -> DaemonError:
        text = body.decode("utf-8", "replace")
        try:
            message = str(json.loads(text).get("error", text))
        except (ValueError, AttributeError):
            message = text
        return DaemonError(f"daemon refused {method} {path}: {message}", status=status, reason=message)

    @property
    def _origin(self) -> http_connections.Origin:
        return (False, self.host, self.port)

    def _send(self, method: str, target: str, body: bytes | None, headers: dict[str, str],
              connect_timeout: float, read_timeout: float | None
              ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send one request on one of the process's pooled connections
        (:func:`~.transport.http_connections.send`: plain HTTP, no proxy, since the daemon is
        this machine's); the caller reads the answer, then calls :meth:`_done`."""
        return http_connections.send(self._origin, method, target, body, headers, connect_timeout,
                                     read_timeout)

    def _done(self, conn: http.client.HTTPConnection, answer: http.client.HTTPResponse) -> None:
        """Give back a connection whose answer was read whole, unless it is to be closed."""
        http_connections.done(self._origin, conn, answer)

    def request(self, method: str, path: str, *, json_body: Any = None,
                params: dict | None = None, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """One request; its JSON answer. Raises DaemonError (``status`` set for an error answer)."""
        target = self._ready(path, timeout) + (f"?{urlencode(params)}" if params else "")
        try:
            status, body = http_connections.exchange(self._origin, method, target, self._encode(json_body),
                                                     self._headers(json_body is not None, path),
                                                     timeout, timeout)
        except (ConnectFailed, *TRANSPORT_ERRORS) as exc:
            raise self._failure(exc, f"{method} {path}") from exc
        if status >= 400:
            raise self._refusal(status, body, method, path)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise DaemonError(f"the daemon's answer to {method} {path} is not JSON") from exc

    @contextmanager
    def stream(self, method: str, path: str, *, json_body: Any = None,
               read_timeout: float | None = 120.0) -> Iterator[Iterator[dict[str, Any]]]:
        """A streamed answer, as an iterator of its NDJSON lines (decoded), inside a ``with``::

            with client.stream("POST", "/api/files/fetch", json_body={"uri": uri}) as lines:
                for line in lines: ...

        ``read_timeout``: the longest silence between two lines (None: no limit); the whole
        stream may last longer. An error answer raises :class:`DaemonError` (``status`` set)
        before anything is yielded; a connection lost midway, :class:`DaemonConnectionLostError`.
        """
        what = f"{method} {path}"
        target = self._ready(path, CONNECT_TIMEOUT)
        try:
            conn, answer = self._send(method, target, self._encode(json_body),
                                      self._headers(json_body is not None, path), CONNECT_TIMEOUT,
                                      read_timeout)
        except (ConnectFailed, *TRANSPORT_ERRORS) as exc:
            raise self._failure(exc, what) from exc
        try:
            if answer.status >= 400:
                try:
                    body = answer.read()
                except TRANSPORT_ERRORS as exc:
                    raise self._failure(exc, what) from exc
                raise self._refusal(answer.status, body, method, path)
            yield self._lines(answer, what)
        finally:
            self._done(conn, answer)  # reused only if every line was read

    def _lines(self, answer: http.client.HTTPResponse, what: str) -> Iterator[dict[str, Any]]:
        while True:
            try:
                raw = answer.readline()
            except TRANSPORT_ERRORS as exc:  # here, not around the caller's loop: its own
                raise self._failure(exc, what) from exc  # OSErrors are not the daemon's
            if not raw:
                return
            if raw.strip():
                try:
                    yield orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    raise DaemonError(f"the daemon's answer to {what} has a line that is not JSON") from exc

    def probe(self, timeout: float = 2.0) -> dict:
        """The daemon's ``/probe`` answer; raises DaemonNotRunningError if nothing answers."""
        return self.request("GET", "/probe", timeout=timeout)

    def is_running(self) -> bool:
        """Whether this storage's own daemon answers now (another storage's daemon on the
        recorded port, or one that drops the connection, does not count)."""
        if self.base_url is None:
            return False
        try:
            answer = self.probe()
        except DaemonError:
            return False
        return bool(answer.get("kachery_daemon")) and answer.get("node_id") == _expected_node_id(
            self.storage_dir)

    def status(self) -> dict:
        return self.request("GET", "/api/status")

    def stop(self, timeout: float = 15.0) -> None:
        """Ask the daemon to stop and wait until it has: it no longer answers, and it has
        closed its storage (released the storage's lock), so that the storage can be copied
        or served by a new daemon at once."""
        self.request("POST", "/api/stop")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not storage_is_held(self.storage_dir) and not self.is_running():
                return
            time.sleep(0.02)
        raise DaemonError(f"the daemon at {self.base_url} did not stop within {timeout} s")

    def viewer_url(self, uri: str) -> str:
        """A link to the built-in live viewer for subfeed ``uri`` (read-only browser token)."""
        from urllib.parse import quote

        token = read_browser_token(self.storage_dir)
        if not token:
            raise DaemonNotRunningError(
                f"no browser token in {self.storage_dir}: the daemon writes it when it starts; "
                "start it with `kachery node start`")
        return f"{self.base_url}/viewer?uri={quote(uri, safe='')}#token={token}"


def start_daemon(storage_dir: str | os.PathLike | None = None, *, port: int | None = None,
                 timeout: float = 20.0) -> dict:
    """Start a detached daemon for ``storage_dir`` and wait until it answers; returns its status.

    Its log goes to ``<storage>/daemon.log``.
    """
    storage_dir = Path(storage_dir) if storage_dir else default_storage_dir()
    client = DaemonClient(storage_dir, port=port)
    if client.is_running():
        raise DaemonError(f"a daemon is already running for {storage_dir}, at {client.base_url}")
    log_path = storage_dir / "daemon.log"
    # -P: the directory the command was run from is not put on the daemon's sys.path (a
    # person's own trio.py or h2.py there made the daemon import it, and exit at start).
    # The daemon logs into daemon.log itself, rotated; its stdout and stderr go there too (what
    # comes before its logging is set up: a failed import, a crash at start).
    cmd = [sys.executable, "-P", "-m", "kachery_node.daemon", "--storage-dir", str(storage_dir),
           "--log-file", str(log_path)]
    if port is not None:
        cmd += ["--port", str(port)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise DaemonError("the daemon exited at start: " + " | ".join(tail))
        client = DaemonClient(storage_dir, port=port)
        if client.is_running():
            return client.status()
        time.sleep(0.05)
    proc.terminate()
    raise DaemonError(f"the daemon did not answer within {timeout} s (see {log_path})")

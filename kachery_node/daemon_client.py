"""Talking to the local daemon: find it, authenticate, start, stop, ask for its status.

Used by the CLI and the Python API. Every request has a timeout; a daemon that is not running
raises :class:`DaemonNotRunningError` with the command that starts one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from .config import default_storage_dir
from .daemon.local_tokens import read_browser_token, read_client_token
from .daemon.paths import INFO_FILE, default_port
from .errors import DaemonConnectionLostError, DaemonError, DaemonNotRunningError

DEFAULT_TIMEOUT = 10.0


def daemon_address(storage_dir: Path) -> tuple[str, int]:
    """Where the daemon for ``storage_dir`` listens: its daemon.json, else the default port."""
    try:
        info = json.loads((Path(storage_dir) / INFO_FILE).read_text())
        return info["host"], int(info["port"])
    except (FileNotFoundError, ValueError, KeyError):
        return "127.0.0.1", default_port()


class DaemonClient:
    """A connection to the daemon serving ``storage_dir`` (default: ``$KACHERY_STORAGE_DIR``)."""

    def __init__(self, storage_dir: str | os.PathLike | None = None, *, port: int | None = None) -> None:
        self.storage_dir = Path(storage_dir) if storage_dir else default_storage_dir()
        host, found_port = daemon_address(self.storage_dir)
        self.host, self.port = host, port or found_port
        self.base_url = f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    def _headers(self) -> dict[str, str]:
        token = read_client_token(self.storage_dir)
        return {"Authorization": f"Bearer {token}"} if token else {}

    def request(self, method: str, path: str, *, json_body: Any = None,
                params: dict | None = None, timeout: float = DEFAULT_TIMEOUT) -> Any:
        try:
            r = httpx.request(method, self.base_url + path, json=json_body, params=params,
                              headers=self._headers(), timeout=timeout)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise DaemonNotRunningError(
                f"no kachery daemon at {self.base_url} for {self.storage_dir}: "
                "start one with `kachery node start`"
            ) from exc
        except httpx.TimeoutException as exc:
            raise DaemonError(f"the daemon at {self.base_url} did not answer within {timeout} s") from exc
        except httpx.TransportError as exc:
            # Reset or closed mid-request: the daemon died (or is dying) while answering.
            raise DaemonConnectionLostError(
                f"the daemon at {self.base_url} dropped the connection: {exc}"
            ) from exc
        if r.status_code >= 400:
            try:
                message = r.json().get("error", r.text)
            except ValueError:
                message = r.text
            raise DaemonError(f"daemon refused {method} {path}: {message}", status=r.status_code)
        return r.json()

    def probe(self, timeout: float = 2.0) -> dict:
        """The daemon's ``/probe`` answer; raises DaemonNotRunningError if nothing answers."""
        return self.request("GET", "/probe", timeout=timeout)

    def is_running(self) -> bool:
        """Whether a daemon answers the probe now (one that drops the connection does not)."""
        try:
            return bool(self.probe().get("kachery_daemon"))
        except DaemonError:
            return False

    def status(self) -> dict:
        return self.request("GET", "/api/status")

    def stop(self, timeout: float = 15.0) -> None:
        """Ask the daemon to stop and wait until it no longer answers."""
        self.request("POST", "/api/stop")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.is_running():
                return
            time.sleep(0.05)
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
    if client.is_running() and client.probe().get("node_id"):
        raise DaemonError(f"a daemon is already answering at {client.base_url}")
    cmd = [sys.executable, "-m", "kachery_node.daemon", "--storage-dir", str(storage_dir)]
    if port is not None:
        cmd += ["--port", str(port)]
    log_path = storage_dir / "daemon.log"
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

"""The daemon's local credentials: files in the storage directory only their owner can read.

* ``daemon-token``: full access to the local API (the Python client, the CLI, task backends).
* ``browser-token``: read-only access (subfeed streams and the built-in viewer) for local web
  pages; it cannot append, store, stop the daemon or change anything.

Both are 32 random bytes as hex, created when the daemon first starts and kept across restarts
so running clients and open pages keep working.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

CLIENT_TOKEN_FILE = "daemon-token"
BROWSER_TOKEN_FILE = "browser-token"


def _load_or_create(path: Path) -> str:
    try:
        token = path.read_text().strip()
        if len(token) == 64:
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_hex(32)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, path)
    return token


def load_or_create_tokens(storage_dir: Path) -> tuple[str, str]:
    """(client token, browser token), creating either file if missing."""
    return (
        _load_or_create(Path(storage_dir) / CLIENT_TOKEN_FILE),
        _load_or_create(Path(storage_dir) / BROWSER_TOKEN_FILE),
    )


def read_client_token(storage_dir: Path) -> str | None:
    """The client token, or None if the daemon never ran or the file is unreadable to us."""
    try:
        return (Path(storage_dir) / CLIENT_TOKEN_FILE).read_text().strip() or None
    except (FileNotFoundError, PermissionError):
        return None


def read_browser_token(storage_dir: Path) -> str | None:
    try:
        return (Path(storage_dir) / BROWSER_TOKEN_FILE).read_text().strip() or None
    except (FileNotFoundError, PermissionError):
        return None


def token_matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())

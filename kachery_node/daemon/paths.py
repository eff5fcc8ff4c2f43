"""Where a daemon is found: its port and the files it keeps in the storage directory."""

from __future__ import annotations

import os

DEFAULT_PORT = 20431
LOCK_FILE = "daemon.lock"
INFO_FILE = "daemon.json"


def default_port() -> int:
    """``$KACHERY_DAEMON_PORT``, or 20431 as in the original."""
    raw = os.environ.get("KACHERY_DAEMON_PORT")
    return int(raw) if raw else DEFAULT_PORT

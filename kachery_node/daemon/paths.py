"""Where a daemon is found: its port and the files it keeps in the storage directory."""

from __future__ import annotations

import os
import re

from ..errors import ConfigError

DEFAULT_PORT = 20431
LOCK_FILE = "daemon.lock"
INFO_FILE = "daemon.json"


def default_port() -> int:
    """``$KACHERY_DAEMON_PORT``, or 20431 as in the original."""
    raw = os.environ.get("KACHERY_DAEMON_PORT")
    if not raw:
        return DEFAULT_PORT
    # ASCII digits only: int() also takes '²', '٣' and ' 1_0'.
    if not re.fullmatch(r"[0-9]{1,5}", raw) or not 1 <= int(raw) <= 65535:
        raise ConfigError(f"KACHERY_DAEMON_PORT must be a port number in [1, 65535], got {raw!r}")
    return int(raw)

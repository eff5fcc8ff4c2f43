"""Where a daemon is found: its port and the files it keeps in the storage directory.

A daemon is found only through its own storage directory: it writes ``daemon.json`` there
(pid, host, port, node ID) and clients read nothing else (no well-known port is ever probed on
the chance that it is ours; :mod:`kachery_node.daemon_client` checks the node ID before it sends
a token).
"""

from __future__ import annotations

import os
import re

from ..errors import ConfigError

DEFAULT_PORT = 20431
LOCK_FILE = "daemon.lock"
INFO_FILE = "daemon.json"


def default_port() -> int:
    """``$KACHERY_DAEMON_PORT``, or 20431 as in the original."""
    configured = configured_port()
    return DEFAULT_PORT if configured is None else configured


def configured_port() -> int | None:
    """``$KACHERY_DAEMON_PORT`` if set (a port the person chose: the daemon insists on it), or
    None (the daemon takes 20431 if free, else any free loopback port)."""
    raw = os.environ.get("KACHERY_DAEMON_PORT")
    if not raw:
        return None
    # ASCII digits only: int() also takes '²', '٣' and ' 1_0'.
    if not re.fullmatch(r"[0-9]{1,5}", raw) or not 1 <= int(raw) <= 65535:
        raise ConfigError(f"KACHERY_DAEMON_PORT must be a port number in [1, 65535], got {raw!r}")
    return int(raw)

"""The kachery node daemon: a long-running trio process serving a local API on 127.0.0.1.

Start it with ``kachery node start``; talk to it with :class:`DaemonClient`. Names are imported
lazily: scripts that only need the error classes do not pay for the server's imports.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import DaemonConnectionLostError, DaemonError, DaemonNotRunningError

_LAZY = {"DaemonClient": ".client", "daemon_address": ".client", "start_daemon": ".client"}

__all__ = [
    "DaemonClient",
    "DaemonConnectionLostError",
    "DaemonError",
    "DaemonNotRunningError",
    "daemon_address",
    "start_daemon",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(name)

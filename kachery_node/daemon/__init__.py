"""The kachery node daemon: a long-running trio process serving a local API on 127.0.0.1.

Start it with ``kachery node start``; talk to it with :class:`DaemonClient`.
"""

from .client import DaemonClient, daemon_address, start_daemon
from .errors import DaemonError, DaemonNotRunningError

__all__ = ["DaemonClient", "DaemonError", "DaemonNotRunningError", "daemon_address", "start_daemon"]

"""Where a daemon is found: its port and the files it keeps in the storage directory.

A daemon is found only through its own storage directory: it writes ``daemon.json`` there
(pid, host, port, node ID) and clients read nothing else (no well-known port is ever probed on
the chance that it is ours; :mod:`kachery_node.daemon_client` checks the node ID before it sends
a token).
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from pathlib import Path

from ..errors import ConfigError, DaemonError

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


def storage_is_held(storage_dir: str | os.PathLike) -> bool:
    """Whether a daemon still holds ``storage_dir`` (its ``flock`` on daemon.lock).

    A daemon releases the lock as the last thing it does, after its storage is closed and its
    log has its last line: a stopped daemon's storage may be copied, moved or served again.
    The probe takes a shared lock for an instant; :class:`StorageHold` retries past it."""
    try:
        fd = os.open(Path(storage_dir) / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock taken above
    return False


class StorageHold:
    """The exclusive ``flock`` a daemon holds on ``<storage>/daemon.lock`` for its whole life."""

    # A client asking whether a daemon still holds the storage holds a shared lock for an
    # instant (storage_is_held): a daemon starting at that instant tries again, this long.
    RETRY_SECONDS = 0.2

    def __init__(self, storage_dir: str | os.PathLike) -> None:
        path = Path(storage_dir) / LOCK_FILE
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.RETRY_SECONDS
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(self._fd)
                    raise DaemonError(f"another kachery daemon is already running for "
                                      f"{path.parent} (see `kachery node status`)") from None
                time.sleep(0.01)

    def release(self) -> None:
        os.close(self._fd)

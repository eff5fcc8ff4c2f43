"""Errors about reaching and running the local daemon."""

from __future__ import annotations

from ..errors import KacheryError


class DaemonError(KacheryError):
    """The daemon answered with an error, or could not be started or stopped."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class DaemonNotRunningError(DaemonError):
    """No daemon answers for this storage directory: start one with `kachery node start`."""


class DaemonConnectionLostError(DaemonError):
    """The daemon dropped the connection before answering (it was stopped or killed meanwhile)."""

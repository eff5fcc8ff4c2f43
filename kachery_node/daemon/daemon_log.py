"""The daemon's log: a file it rotates itself, and a limit on lines that repeat.

A daemon runs for months, and what it logs is partly decided by others: a member of a channel
that floods it with messages it drops gets one INFO line per message. So the log is bounded twice:
:class:`DaemonLogFile` rotates ``<storage>/daemon.log`` (the disk), and :class:`RepeatLimit` keeps
at most :data:`RepeatLimit.BURST` lines of one kind (one logger, one message template) per
:data:`RepeatLimit.WINDOW_SECONDS`, saying how many it left out (the CPU of writing them, and a
log one can still read).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import threading
import time

#: ``daemon.log`` is rotated at this size, and this many older files are kept (daemon.log.1 ... .3).
LOG_MAX_BYTES = 8 << 20
LOG_BACKUPS = 3


class DaemonLogFile(logging.handlers.RotatingFileHandler):
    """The detached daemon's log file, which is also its stdout and stderr (what Python itself
    writes there, a traceback that escaped everything): at each rotation those follow the log
    to its new file, so nothing keeps writing into daemon.log.1."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS)

    def doRollover(self) -> None:
        super().doRollover()
        if self.stream is not None:
            for fd in (1, 2):
                os.dup2(self.stream.fileno(), fd)


class _Window:
    __slots__ = ("count", "left_out", "start")

    def __init__(self, start: float) -> None:
        self.start, self.count, self.left_out = start, 0, 0


class RepeatLimit(logging.Filter):
    """Lets through at most :data:`BURST` records of one kind (logger name and message template,
    before its arguments) per :data:`WINDOW_SECONDS`; the first of the next window says how many
    were left out."""

    BURST = 20
    WINDOW_SECONDS = 60.0
    KINDS_KEPT = 1024  # a message built with an f-string is a kind of its own: forget them all past this

    def __init__(self) -> None:
        super().__init__()
        self._windows: dict[tuple[str, object], _Window] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = time.monotonic()
        with self._lock:
            window = self._windows.get(key)
            left_out = 0
            if window is None or now - window.start >= self.WINDOW_SECONDS:
                if window is not None:
                    left_out = window.left_out
                elif len(self._windows) >= self.KINDS_KEPT:
                    self._windows.clear()
                window = self._windows[key] = _Window(now)
            window.count += 1
            if window.count > self.BURST:
                window.left_out += 1
                return False
        if left_out:
            record.msg = (f"{record.msg} [and {left_out} more like this in the "
                          f"{self.WINDOW_SECONDS:.0f} s before, not logged]")
        return True

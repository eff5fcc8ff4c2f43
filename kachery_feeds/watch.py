"""Cross-process change notification for a store: wake followers within milliseconds.

Every process that commits to a store rewrites one byte of the store's *notify file*
(``<db>-notify``) after the commit returns. On Linux a follower watches that file with inotify
and so wakes a few microseconds after any process (or thread) commits; the byte is written
after the commit, so the follower is guaranteed to see the new rows when it wakes. Where inotify
is missing (other systems, or the per-user instance limit reached) the watcher polls. Waits are
also capped (:data:`SAFETY_RECHECK_SECONDS`) so that a store written by a tool that does not
touch the notify file (the sqlite3 shell) is still noticed, a little later.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import time
from pathlib import Path

SAFETY_RECHECK_SECONDS = 1.0
POLL_INTERVAL_SECONDS = 0.02  # used only without inotify

_IN_MODIFY = 0x00000002
_IN_ATTRIB = 0x00000004
_IN_CLOSE_WRITE = 0x00000008
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_READ_BYTES = 65536
# struct inotify_event (16 bytes) and the longest name it can carry (NAME_MAX + 1); a watch of
# a file, as here, reports no name at all
_LARGEST_EVENT = 16 + 256

_libc = None
try:  # pragma: no branch
    # The process's own symbols (dlopen(NULL)) include the C library's: no ctypes.util, whose
    # find_library imports subprocess and runs ldconfig (~10 ms at every import).
    _libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(_libc, "inotify_init1"):  # not Linux: poll instead
        _libc = None
except OSError:  # pragma: no cover - exotic systems
    _libc = None


def notify_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + "-notify")


class ChangeNotifier:
    """Held by each Store: tells watchers in any process that a commit happened."""

    def __init__(self, db_path: Path) -> None:
        path = notify_path(db_path)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if os.fstat(self._fd).st_size == 0:
            os.pwrite(self._fd, b"0", 0)

    def notify(self) -> None:
        # pwrite at offset 0 raises IN_MODIFY without growing the file.
        os.pwrite(self._fd, b"1", 0)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class ChangeWatcher:
    """Waits until some process commits to the store. Create it *before* reading, then wait.

    Usable from threads (:meth:`wait`) and from trio or asyncio (:meth:`wait_async`), by one
    waiter at a time (each follower makes its own).
    """

    def __init__(self, db_path: Path) -> None:
        self._fd = -1
        self._poller: select.poll | None = None  # wait()'s, made at its first use
        if _libc is None:
            return
        fd = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:  # e.g. EMFILE: the per-user inotify instance limit; fall back to polling
            return
        wd = _libc.inotify_add_watch(
            fd, os.fsencode(notify_path(db_path)), _IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE
        )
        if wd < 0:
            os.close(fd)
            return
        self._fd = fd

    @property
    def uses_inotify(self) -> bool:
        return self._fd >= 0

    def _drain(self) -> None:
        """Read every queued event. A read returns as many whole events as fit, so one that
        left room for another event took them all: usually one read, no second read that
        fails with EAGAIN (this runs once per commit in every watching process)."""
        while True:
            try:
                if len(os.read(self._fd, _READ_BYTES)) <= _READ_BYTES - _LARGEST_EVENT:
                    return
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    return
                raise

    def wait(self, timeout: float | None) -> bool:
        """Block until a change is signalled or ``timeout`` seconds pass (capped for safety).
        Returns whether the kernel watch signalled a commit (False after a timeout, and always
        without inotify, where waiting is polling)."""
        limit = SAFETY_RECHECK_SECONDS if timeout is None else min(timeout, SAFETY_RECHECK_SECONDS)
        if limit <= 0:
            return False
        if self._fd < 0:
            time.sleep(min(limit, POLL_INTERVAL_SECONDS))
            return False
        if self._poller is None:
            self._poller = select.poll()
            self._poller.register(self._fd, select.POLLIN)
        if self._poller.poll(limit * 1000):
            self._drain()
            return True
        return False

    async def wait_async(self, timeout: float | None) -> bool:
        """Async version of :meth:`wait` for trio or asyncio (via anyio)."""
        import anyio  # here: a script that only reads and appends never imports it
        limit = SAFETY_RECHECK_SECONDS if timeout is None else min(timeout, SAFETY_RECHECK_SECONDS)
        if limit <= 0:
            await anyio.sleep(0)
            return False
        if self._fd < 0:
            await anyio.sleep(min(limit, POLL_INTERVAL_SECONDS))
            return False
        with anyio.move_on_after(limit):
            await anyio.wait_readable(self._fd)
            self._drain()
            return True
        return False

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._poller = None

    def __enter__(self) -> ChangeWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

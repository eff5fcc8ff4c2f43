"""No process a test starts outlives it, pass or fail (issue 11: one failed run left 17 hubs and
daemons running).

Three layers:

1. *Owners*: objects that start a server process (:class:`~tests.nodes.TestNode` daemons,
   :class:`~tests.hub.conftest.HubProcess` hubs, task backends) :func:`register` themselves.
   The autouse fixture ``_end_test_processes`` (tests/conftest.py) stops, when a test ends,
   every owner created during that test; owners made by module or session fixtures are stopped
   by those fixtures.
2. *Session end* (:func:`end_all`, also run at interpreter exit): every owner still registered is
   stopped, every child process of this one is killed, and so is every process whose command
   line names a path under this session's base temporary directory (detached daemons are not
   our children, but their ``--storage-dir`` is in our tmp_path).
3. *The daemon itself* stops when its storage directory is deleted (kachery_node/daemon/process.py),
   which pytest does to old base temporary directories, but only days later when the killed
   run left its ``.lock`` behind.
4. *Killed runs* (:func:`end_orphans_of_dead_sessions`, at each session's start): a process
   whose command line names a path under another session's base temporary directory, whose
   ``.lock`` names a process that no longer exists, was left by a run killed before its own
   session end; it is stopped. Live sessions (other checkouts' suites running meanwhile) are
   left alone.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
from pathlib import Path
from typing import Protocol

import psutil

log = logging.getLogger("tests.processes")


class ProcessOwner(Protocol):
    """Starts a process and ends it with ``stop()`` (which waits for its exit). It may also have
    ``begin_stop()``: ask the process to end without waiting, so that several end side by side."""

    def stop(self) -> None: ...


_owners: list[ProcessOwner] = []
_basetemp: Path | None = None


def register(owner: ProcessOwner) -> None:
    """Record ``owner`` so that its process is stopped with the test (or session) that made it."""
    _owners.append(owner)


def mark() -> int:
    """A position in the registry: :func:`stop_since` stops the owners registered after it."""
    return len(_owners)


def stop_since(position: int) -> None:
    """Stop (newest first) and forget the owners registered since ``position``: first ask each
    that can (``begin_stop``) to end, then wait for each, so that their exits overlap."""
    created = _owners[position:]
    del _owners[position:]
    for owner in reversed(created):
        begin_stop = getattr(owner, "begin_stop", None)
        if begin_stop is not None:
            try:
                begin_stop()
            except Exception:
                log.exception("asking %r to stop failed", owner)
    for owner in reversed(created):
        try:
            owner.stop()
        except Exception:
            log.exception("stopping %r failed", owner)


def set_basetemp(path: Path) -> None:
    global _basetemp
    _basetemp = Path(path).resolve()


def terminate(proc: psutil.Process, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout)
    except psutil.TimeoutExpired:
        try:
            proc.kill()
            proc.wait(timeout)
        except (psutil.NoSuchProcess, psutil.TimeoutExpired):
            pass
    except psutil.NoSuchProcess:
        pass


def naming(folder: Path) -> list[psutil.Process]:
    """Processes (this one aside) whose command line names a path under ``folder``."""
    prefix = str(folder) + os.sep
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.pid != os.getpid() and any(arg.startswith(prefix) for arg in cmdline):
            found.append(proc)
    return found


def _ours_by_path() -> list[psutil.Process]:
    """Processes whose command line names a path under this session's base temporary directory."""
    return [] if _basetemp is None else naming(_basetemp)


def end_all() -> None:
    """Stop every registered owner, then kill whatever this session started and left running."""
    stop_since(0)
    leftovers = {p.pid: p for p in psutil.Process().children(recursive=True)}
    leftovers.update({p.pid: p for p in _ours_by_path()})
    for proc in leftovers.values():
        try:
            log.warning("killing a process the tests left running: %s %s", proc.pid,
                        " ".join(proc.cmdline())[:200])
        except psutil.Error:
            continue
        terminate(proc, timeout=5)


def end_orphans_of_dead_sessions(root: Path) -> list[int]:
    """Stop the processes that name a path under a ``root/pytest-N`` directory whose ``.lock``
    (pytest writes its session's pid there) names a process that is gone; their pids."""
    dead = []
    for numbered in root.glob("pytest-[0-9]*"):
        try:
            pid = int((numbered / ".lock").read_text())
        except (OSError, ValueError):
            continue  # no lock: pytest already judged it, or it is not a session's directory
        if not psutil.pid_exists(pid):
            dead.append(str(numbered.resolve()) + os.sep)
    if not dead:
        return []
    ended = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if any(arg.startswith(prefix) for arg in cmdline for prefix in dead):
            log.warning("stopping a process a killed test run left: %s %s", proc.pid,
                        " ".join(cmdline)[:200])
            terminate(proc, timeout=5)
            ended.append(proc.pid)
    return ended


def numbered_root(basetemp: Path) -> Path | None:
    """The folder holding pytest's ``pytest-N`` session directories, from a session's (or an
    xdist worker's) base temporary directory; None with an explicit ``--basetemp``."""
    for folder in [basetemp, *basetemp.parents]:
        if folder.name.startswith("pytest-") and folder.name[7:].isdigit():
            return folder.parent
    return None


atexit.register(end_all)

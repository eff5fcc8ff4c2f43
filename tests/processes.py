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
   which pytest does to old base temporary directories: even a killed test run's daemons end.
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
    """Stop (newest first) and forget the owners registered since ``position``."""
    created = _owners[position:]
    del _owners[position:]
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


def _ours_by_path() -> list[psutil.Process]:
    """Processes whose command line names a path under this session's base temporary directory."""
    if _basetemp is None:
        return []
    prefix = str(_basetemp) + os.sep
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.pid != os.getpid() and any(arg.startswith(prefix) for arg in cmdline):
            found.append(proc)
    return found


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


atexit.register(end_all)

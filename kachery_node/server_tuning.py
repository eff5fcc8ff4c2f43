"""Interpreter settings for kachery's long-running servers (the daemon, the hub), which relay
live feed messages and must not add pauses of milliseconds to them.

* **GIL hand-offs.** A worker thread running Python (a segment built for the bucket, an HTTP
  call to the hub, an upload) keeps the GIL for up to ``sys.getswitchinterval()`` (5 ms by
  default) while the event loop thread, woken by a message, waits for it. Live latency through
  a daemon is a fraction of a millisecond, so the servers hand the GIL over every
  :data:`GIL_SWITCH_INTERVAL_S` instead (this costs a running thread nothing while no other
  one wants the GIL).
* **Full collections.** Start-up (imports, the app, the store) leaves a few hundred thousand
  objects that live as long as the process; the collector's full (generation 2) pass walks all
  of them, tens of milliseconds on the event loop. :func:`tune_for_serving`, called once the
  server is up, moves them to the permanent generation (``gc.freeze``), so later collections
  walk only what was made since.
* **Large buffers go back to the system.** Worker threads sometimes hold buffers of many MB (a
  file chunk of up to 20 MB that a provider must hash before it uploads it). glibc serves an
  allocation that large from a fresh mapping, but once one is freed it raises that threshold
  to its size, so the next ones come from the threads' heaps, which keep the memory after it
  is freed: a daemon that had read a few 1 GiB files' chunks so stayed at ~190 MB RSS instead
  of ~55. :func:`tune_for_serving` fixes the
  threshold at :data:`MMAP_THRESHOLD_BYTES` (``mallopt``), so every buffer from that size on
  is unmapped when freed; smaller ones (1 MiB pieces, segments) stay on the heaps, reused. Fixing
  it also fixes the heaps' trim threshold, at 128 KiB unless set: then every freed 1 MiB piece
  at a heap's top was given back and the next one faulted its pages in again (a GiB uploaded
  cost 0.3-0.5 CPU-s more); it is set to :data:`TRIM_THRESHOLD_BYTES`: each heap keeps up to
  4 MiB free for the next pieces. Elsewhere than glibc this is skipped.
"""

from __future__ import annotations

import ctypes
import gc
import sys

GIL_SWITCH_INTERVAL_S = 0.0005
MMAP_THRESHOLD_BYTES = 4 << 20
TRIM_THRESHOLD_BYTES = 4 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h


def tune_for_serving() -> None:
    """Apply the settings above; call when the server has finished starting."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    release_large_buffers()
    gc.collect()  # what start-up left unreachable goes now, not into the permanent generation
    gc.freeze()


def release_large_buffers(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Have glibc map every allocation of ``threshold`` bytes or more on its own, and unmap it
    when freed (a fixed threshold: glibc's own rises with the buffers freed), and keep up to
    :data:`TRIM_THRESHOLD_BYTES` free at a heap's top. Returns whether it was applied (False
    where the C library is not glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mapped = mallopt(_M_MMAP_THRESHOLD, threshold)
    trimmed = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    return bool(mapped and trimmed)

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
"""

from __future__ import annotations

import gc
import sys

GIL_SWITCH_INTERVAL_S = 0.0005


def tune_for_serving() -> None:
    """Apply the settings above; call when the server has finished starting."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    gc.collect()  # what start-up left unreachable goes now, not into the permanent generation
    gc.freeze()

"""Opt-in diagnostic: record every trio task step that holds a server's event loop too long.

A live message crosses the event loops of the writer's daemon, the hub and the reader's
daemon; a step of any other task on those loops (a bucket update, a witness request, a big
JSON body) delays it by as long as that step runs. This module finds such steps, measured in
the loop thread's **CPU time** (``time.thread_time_ns``: other processes' load does not count)
and in wall time (which also counts blocking system calls, waits for the GIL and preemption).

Enable it with the environment of the daemon or hub when it starts::

    KACHERY_LOOP_STALLS=1                       # threshold in ms (CPU or wall), e.g. 1 or 0.5
    KACHERY_LOOP_STALLS_FILE=/tmp/stalls.jsonl  # optional: JSON lines appended here

Off (the variable unset or empty) nothing is installed: no cost at all. On, each step costs two
clock reads and a walk of the task's coroutine chain (a few µs). A step over the threshold is
written as one JSON line (one ``write`` in append mode, so several processes may share one
file) or, without a file, logged at WARNING on ``kachery.loop_stalls``::

    {"t": <unix s at the step's end>, "pid": ..., "process": "hub", "task": <trio task name>,
     "cpu_ms": ..., "wall_ms": ..., "gc_ms": <collector passes within it>,
     "from": [<stack where the step resumed, outermost first>], "to": [<where it suspended>]}

With ``KACHERY_LOOP_STALLS_SAMPLE=<ms>`` too, a thread samples the loop thread's stack every
<ms> while a step runs past the threshold, and the record gets ``"samples"``: the most frequent
stacks seen, with their counts (the sampler takes the GIL at each sample: a heavier option, for
finding what a long step does). Each stack entry is ``"file:line function"``; ``from`` and
``to`` follow the task's coroutine chain (``cr_await``), so they bracket the code the step ran
through. When the run ends, one summary line per task name (count, worst CPU, worst wall) is
logged. ``bench/network/run.py --loop-stalls MS`` collects these for the live-latency rounds.
"""

from __future__ import annotations

import collections
import gc
import json
import logging
import os
import sys
import threading
import time
from typing import Any

import trio

ENV_THRESHOLD = "KACHERY_LOOP_STALLS"
ENV_FILE = "KACHERY_LOOP_STALLS_FILE"
ENV_SAMPLE = "KACHERY_LOOP_STALLS_SAMPLE"
MAX_FRAMES = 12  # innermost frames kept per stack: enough to name the code, bounded per record
MAX_RECORDS_KEPT = 1000

log = logging.getLogger("kachery.loop_stalls")


def _coroutine_stack(coro: Any) -> list[tuple[Any, int]]:
    """(code, line) of each frame in the chain of awaits under ``coro``, outermost first."""
    out = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        out.append((frame.f_code, frame.f_lineno))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return out[-MAX_FRAMES:]


def _format_stack(stack: list[tuple[Any, int]]) -> list[str]:
    return [f"{code.co_filename}:{line} {code.co_name}" for code, line in stack]


def _thread_stack(frame: Any) -> tuple[str, ...]:
    """The innermost :data:`MAX_FRAMES` frames of a thread's stack, outermost first."""
    out = []
    while frame is not None and len(out) < MAX_FRAMES:
        out.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        frame = frame.f_back
    return tuple(reversed(out))


class _StepSampler:
    """A thread that, while one task step has run past the threshold, samples the loop
    thread's stack every ``interval_s``: where a long step spends its time, not only where it
    began and ended. It takes the GIL at each sample, so it is a separate opt-in."""

    def __init__(self, monitor: LoopStallMonitor, interval_s: float) -> None:
        self.monitor, self.interval_s = monitor, interval_s
        self.loop_thread = threading.get_ident()
        self.samples: collections.Counter[tuple[str, ...]] = collections.Counter()
        self.step = 0  # the step the samples belong to
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loop-stall-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        threshold_s = self.monitor.threshold_ns / 1e9
        while not self._stop.wait(self.interval_s):
            m = self.monitor
            step, started = m._step, m._wall0
            if not started or time.perf_counter_ns() - started < threshold_s * 1e9:
                continue
            frame = sys._current_frames().get(self.loop_thread)
            if frame is not None and m._step == step and m._wall0:
                if self.step != step:
                    self.samples.clear()
                    self.step = step
                self.samples[_thread_stack(frame)] += 1

    def take(self, step: int) -> list[dict[str, Any]]:
        """The stacks sampled during ``step`` (most frequent first), then forget them."""
        if self.step != step:
            return []
        out = [{"n": n, "stack": list(stack)} for stack, n in self.samples.most_common(5)]
        self.samples.clear()
        return out

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class LoopStallMonitor(trio.abc.Instrument):
    """A trio instrument that reports task steps over ``threshold_ms`` of CPU or wall time."""

    def __init__(self, threshold_ms: float, process: str, path: str | None = None,
                 sample_ms: float | None = None) -> None:
        self.threshold_ns = int(threshold_ms * 1e6)
        self.sample_ms = sample_ms
        self._sampler: _StepSampler | None = None
        self._step = 0
        self.process = process
        self.path = path
        #: without a file, the latest records are kept here too (bounded: the daemon runs for weeks)
        self.records: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_RECORDS_KEPT)
        self._summary: dict[str, list[float]] = {}  # task name -> [count, worst cpu ms, worst wall ms]
        self._cpu0 = self._wall0 = self._gc_ns = self._gc0 = 0
        self._from: list[tuple[Any, int]] = []
        self._fd: int | None = None

    # -- the collector's passes, so that a stall caused by one says so
    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc0 = time.perf_counter_ns()
        elif self._gc0:
            self._gc_ns += time.perf_counter_ns() - self._gc0
            self._gc0 = 0

    def before_run(self) -> None:
        if self.path:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        gc.callbacks.append(self._on_gc)
        if self.sample_ms:
            self._sampler = _StepSampler(self, self.sample_ms / 1e3)

    def after_run(self) -> None:
        if self._sampler is not None:
            self._sampler.stop()
            self._sampler = None
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        for name, (count, cpu, wall) in sorted(self._summary.items(), key=lambda kv: -kv[1][1]):
            log.info("%s: %d steps of task %s over %.2f ms (worst %.2f ms CPU, %.2f ms wall)",
                     self.process, count, name, self.threshold_ns / 1e6, cpu, wall)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._from = _coroutine_stack(task.coro)
        self._gc_ns = 0
        self._step += 1
        self._wall0 = time.perf_counter_ns()
        self._cpu0 = time.thread_time_ns()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if not self._wall0:  # the step that installed this monitor: its start was not seen
            return
        cpu = time.thread_time_ns() - self._cpu0
        wall = time.perf_counter_ns() - self._wall0
        self._wall0 = 0  # no step in progress (for the sampler)
        if cpu < self.threshold_ns and wall < self.threshold_ns:
            return
        record = {
            "t": round(time.time(), 4), "pid": os.getpid(), "process": self.process, "task": task.name,
            "cpu_ms": round(cpu / 1e6, 3), "wall_ms": round(wall / 1e6, 3),
            "gc_ms": round(self._gc_ns / 1e6, 3),
            "from": _format_stack(self._from), "to": _format_stack(_coroutine_stack(task.coro)),
        }
        if self._sampler is not None:
            record["samples"] = self._sampler.take(self._step)
        entry = self._summary.setdefault(task.name, [0, 0.0, 0.0])
        entry[0] += 1
        entry[1] = max(entry[1], record["cpu_ms"])
        entry[2] = max(entry[2], record["wall_ms"])
        if self._fd is not None:
            os.write(self._fd, json.dumps(record).encode() + b"\n")
        else:
            self.records.append(record)
            log.warning("%s: task %s held the loop %.2f ms CPU, %.2f ms wall (gc %.2f ms), from %s to %s",
                        self.process, task.name, record["cpu_ms"], record["wall_ms"], record["gc_ms"],
                        record["from"][-1:] or "-", record["to"][-1:] or "-")


def threshold_from_environment() -> float | None:
    """The threshold in ms from ``$KACHERY_LOOP_STALLS`` (None: off); a value that is not a
    positive number is an error, so that a mistyped setting does not silently measure nothing."""
    text = os.environ.get(ENV_THRESHOLD, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{ENV_THRESHOLD}={text!r}: expected a threshold in milliseconds, e.g. 1")
    return value


def install_from_environment(process: str) -> LoopStallMonitor | None:
    """Add a :class:`LoopStallMonitor` to the running trio loop if ``$KACHERY_LOOP_STALLS`` is
    set (call from inside the run, once the process knows its name); None when off."""
    threshold = threshold_from_environment()
    if threshold is None:
        return None
    sample = os.environ.get(ENV_SAMPLE, "").strip()
    monitor = LoopStallMonitor(threshold, process, os.environ.get(ENV_FILE) or None,
                               float(sample) if sample else None)
    monitor.before_run()  # trio calls it only for instruments given to trio.run; after_run it calls
    trio.lowlevel.add_instrument(monitor)
    return monitor

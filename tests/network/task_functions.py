"""Task functions the network tests offer (run with `kachery task backend
tests.network.task_functions:FUNCTIONS`). Side effects go to files under $TASK_LOG_DIR so
that tests can count how often each function really ran."""

from __future__ import annotations

import os
import time
from pathlib import Path

import kachery_node as kn


def _ran(name: str, detail: str = "") -> None:
    log_dir = Path(os.environ["TASK_LOG_DIR"])
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{name}.log", "a") as f:
        f.write(f"{os.getpid()} {detail}\n")


@kn.taskfunction("test.add.1", type="pure-calculation")
def add(*, a, b):
    _ran("add", f"{a}+{b}")
    return a + b


@kn.taskfunction("test.echo.1", type="pure-calculation")
def echo(*, value):
    _ran("echo")
    return value


@kn.taskfunction("test.clock.1", type="query")
def clock(*, tag):
    _ran("clock", tag)
    return {"tag": tag, "time": time.time(), "pid": os.getpid()}


@kn.taskfunction("test.append.1", type="action")
def append(*, text, delay=0.0):
    time.sleep(delay)
    _ran("append", text)
    return {"appended": text}


@kn.taskfunction("test.fail.1", type="pure-calculation")
def fail(*, why):
    _ran("fail")
    raise ValueError(f"cannot do it: {why}")


@kn.taskfunction("test.slow.1", type="pure-calculation")
def slow(*, seconds, tag):
    _ran("slow", f"start {tag}")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        kn.report_progress({"left": round(end - time.monotonic(), 1)})
        time.sleep(min(0.5, max(0.0, end - time.monotonic())))
    _ran("slow", f"end {tag}")
    return {"slept": seconds, "tag": tag}


FUNCTIONS = [add, echo, clock, append, fail, slow]

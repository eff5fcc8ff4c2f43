"""Helpers shared by the benchmark scripts (bench/feeds/run.py, bench/network/run.py)."""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import orjson

PAYLOAD_BYTES = 256  # the JSON of each payload; hypercore gets 256-byte blocks


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def payload(i: int) -> dict:
    """A payload whose compact JSON is exactly PAYLOAD_BYTES long."""
    head = {"i": i, "t": time.time_ns(), "data": ""}
    head["data"] = "x" * max(0, PAYLOAD_BYTES - len(orjson.dumps(head)))
    return head


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table with padded columns."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *[line(r) for r in rows]])


def machine_info() -> dict[str, Any]:
    """CPU model and count, platform and Python version, for the report header."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version()}

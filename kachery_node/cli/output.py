"""Helpers shared by the CLI modules: JSON output and progress bars."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click

PROGRESS_MIN_BYTES = 50_000_000  # smaller files finish before a bar is worth drawing

json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print machine-readable JSON instead of text.")
progress_option = click.option(
    "--progress/--no-progress", default=None,
    help="Show a progress bar on stderr (default: for files over 50 MB when stderr is a terminal).")


def echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, ensure_ascii=False))


@contextlib.contextmanager
def progress_bar(total: int, label: str, enabled: bool | None) -> Iterator[Callable[[int], None] | None]:
    """A callback advancing a tqdm bar on stderr, or None when no bar should be drawn."""
    if enabled is None:
        enabled = total > PROGRESS_MIN_BYTES and sys.stderr.isatty()
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
              file=sys.stderr, leave=False) as bar:
        yield bar.update


@contextlib.contextmanager
def transfer_progress(label: str, enabled: bool | None) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback for network transfers, whose size is learnt as they
    go: draws a bar on stderr once the total is known (when stderr is a terminal, or forced)."""
    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        show = (total > PROGRESS_MIN_BYTES and sys.stderr.isatty()) if enabled is None else enabled
        if not show or not total:
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                       file=sys.stderr, leave=False)
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()

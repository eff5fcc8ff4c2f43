"""Helpers shared by the CLI modules: command groups, JSON output and progress bars."""

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


class CommandGroup(click.Group):
    """A click group whose command list shows each command's first sentence whole, wrapped,
    instead of cutting it with "..." at the terminal's width (click's default)."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [row for name in self.list_commands(ctx) if (row := self.command_row(ctx, name))]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def command_row(self, ctx: click.Context, name: str) -> tuple[str, str] | None:
        """``(name, first sentence)`` of a command in the list, or None to leave it out."""
        cmd = self.get_command(ctx, name)
        if cmd is None or cmd.hidden:
            return None
        return name, cmd.get_short_help_str(limit=10_000)


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

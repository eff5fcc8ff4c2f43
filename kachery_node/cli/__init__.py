"""The ``kachery`` command: one group, subcommands mirroring the Python API.

Each concern lives in its own module and is registered below with one line; to add a group,
write ``cli/<name>.py`` with a click command or group and add one line::

    main.add_lazy_command("hub", "kachery_node.cli.hub_commands:hub")

A lazy command's module is imported only when that command runs (or for ``kachery --help``),
so heavy imports (trio, HTTP servers, numpy) do not slow down ``kachery store`` or ``cat``.
``main.add_command(cmd)`` also works, for modules that are cheap to import.
Errors from kachery_node become a one-line ``Error: ...`` and exit status 1, not a traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from .. import DISTRIBUTION
from .feed_commands import feed
from .file_commands import cat, link, load, store, upload
from .mutable_commands import mutable
from .node_commands import info, init
from .output import CommandGroup
from .tls_options import tls_options


class _Group(CommandGroup):
    """Turns the errors a user can act on into messages instead of tracebacks, and imports
    lazily registered commands on first use."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lazy: dict[str, str] = {}
        self._lazy_help: dict[str, str] = {}

    def add_lazy_command(self, name: str, import_path: str, short_help: str) -> None:
        """Register ``module:attribute`` as the command ``name`` without importing it yet;
        ``short_help`` (its docstring's first sentence: a test keeps them equal) is what
        ``kachery --help`` lists for it meanwhile, so that listing imports none of them."""
        self._lazy[name] = import_path
        self._lazy_help[name] = short_help

    def command_row(self, ctx: click.Context, name: str) -> tuple[str, str] | None:
        if name in self._lazy and name not in self.commands:
            return name, self._lazy_help[name]
        return super().command_row(ctx, name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self._lazy and name not in self.commands:
            module, _, attr = self._lazy[name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        from ..errors import KacheryError  # here: it loads kachery_feeds (~20 ms), --help needs none

        try:
            return super().invoke(ctx)
        except (KacheryError, OSError) as exc:
            if isinstance(exc, BrokenPipeError):  # `kachery cat … | head`: not an error
                sys.stderr.close()
                raise SystemExit(0) from None
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name=DISTRIBUTION, prog_name=DISTRIBUTION)
@tls_options
def main() -> None:
    """kachery: share files, live feeds and task results between computers.

    Storage is $KACHERY_STORAGE_DIR (default ~/kachery-storage); the person's key is in
    $KACHERY_USER_DIR (default ~/.kachery-user). Start with `kachery init`.
    """


main.add_command(init)
main.add_command(info)
main.add_command(store)
main.add_command(link)
main.add_command(load)
main.add_command(cat)
main.add_command(upload)
main.add_command(feed)
main.add_command(mutable)
# node: cli/daemon.py's group plus `join|leave` (cli/membership.py); trio etc. load only when used
main.add_lazy_command("node", "kachery_node.cli.membership_commands:node",
                      "Run the node daemon and manage its channels.")
main.add_lazy_command("hub", "kachery_node.cli.hub_commands:hub",
                      "Run a hub (channels, roles, credentials, relay and bucket), and sign in to it.")
main.add_lazy_command("channel", "kachery_node.cli.channel_commands:channel",
                      "Create channels and decide which node may do what on them.")
main.add_lazy_command("demo", "kachery_node.demo:demo",
                      "Run a hub and two nodes in a temporary folder: a live feed and a large file "
                      "between them.")
main.add_lazy_command("task", "kachery_node.cli.task_commands:task",
                      "Request tasks from a channel, or offer task functions to it.")
main.add_lazy_command("fsck", "kachery_node.cli.fsck_commands:fsck",
                      "Check the local storage: stored files (present, right size, manifests; with "
                      "--files, their bytes), links, mutables, and every feed's messages, hash chains "
                      "and signatures.")

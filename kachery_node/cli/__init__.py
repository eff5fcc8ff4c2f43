"""The ``kachery`` command: one group, subcommands mirroring the Python API.

Each concern lives in its own module and is registered below with one line; to add a group,
write ``cli/<name>.py`` with a click command or group and add one ``main.add_command`` line.
Errors from kachery_node become a one-line ``Error: ...`` and exit status 1, not a traceback.
"""

from __future__ import annotations

import sys

import click

from ..errors import KacheryError
from .daemon import node as node_group  # not `node`: that name is the cli.node module
from .feeds import feed
from .node import info, init
from .storage import cat, link, load, store


class _Group(click.Group):
    """Turns the errors a user can act on into messages instead of tracebacks."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except (KacheryError, OSError) as exc:
            if isinstance(exc, BrokenPipeError):  # `kachery cat … | head`: not an error
                sys.stderr.close()
                raise SystemExit(0) from None
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kachery")
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
main.add_command(feed)
main.add_command(node_group)

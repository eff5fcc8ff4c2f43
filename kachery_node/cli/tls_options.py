"""``--ca-file`` and ``--insecure-http``: options of ``kachery`` itself and of every command that
talks to a hub. Each sets its environment variable for this process and what it starts (a
daemon started by ``kachery node start`` inherits them), so that transport/tls.py, the one place
that decides about TLS, reads one setting however it was given::

    kachery --ca-file lab-ca.pem node start
    kachery channel create lab --hub https://hub.lab.example --ca-file lab-ca.pem
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import click

from ..transport.tls_env import CA_FILE_ENV, INSECURE_ENV


def _set_ca_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    if value is None:
        return
    from ..errors import ConfigError
    from ..transport.tls import ssl_context

    os.environ[CA_FILE_ENV] = str(value.resolve())
    try:
        ssl_context()  # a file that is not a CA certificate: say so now, naming it
    except ConfigError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _set_insecure(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        os.environ[INSECURE_ENV] = "1"


def tls_options(f: Callable) -> Callable:
    """Add ``--ca-file`` and ``--insecure-http`` to a click command or group."""
    f = click.option(
        "--ca-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
        expose_value=False, is_eager=True, callback=_set_ca_file,
        help=f"A PEM file of the CA that signed the hub's certificate (a lab's own CA), trusted "
             f"besides the system's (or ${CA_FILE_ENV}).")(f)
    return click.option(
        # --insecure is the (and a newcomer's) word; --insecure-http says what it allows
        # (curl's --insecure skips certificate checks, which this never does).
        "--insecure-http", "--insecure", is_flag=True, expose_value=False, is_eager=True,
        callback=_set_insecure,
        help=f"Allow sending tokens and signed requests over plain HTTP to a hub on another machine "
             f"(or ${INSECURE_ENV}=1); only on a network you trust end to end.")(f)

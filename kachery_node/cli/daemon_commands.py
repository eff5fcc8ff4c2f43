"""``kachery node start|stop|status|viewer``: run and inspect the local daemon.

Other modules add their own commands to the ``node`` group (``join``, ``leave``).
"""

from __future__ import annotations

from pathlib import Path

import click

from ..config import default_storage_dir
from ..daemon.paths import configured_port
from ..daemon_client import DaemonClient, start_daemon
from ..transport.tls import ssl_context
from .output import CommandGroup, echo_json, json_option
from .tls_options import tls_options


@click.group(cls=CommandGroup)
def node() -> None:
    """Run the node daemon and manage its channels."""


@node.command()
@tls_options
@click.option("--port", type=int, default=None,
              help="Local API port (default: $KACHERY_DAEMON_PORT; else 20431 if free, else any free "
                   "loopback port).")
@click.option("--foreground", is_flag=True, help="Run in this process instead of detaching.")
@json_option
def start(port: int | None, foreground: bool, as_json: bool) -> None:
    """Start the daemon for $KACHERY_STORAGE_DIR (logs go to <storage>/daemon.log)."""
    from ..config import load_node_config

    storage_dir = default_storage_dir()
    load_node_config(storage_dir)  # NotInitializedError: "run `kachery init`", before spawning anything
    ssl_context()  # ConfigError naming a bad $KACHERY_CA_FILE, here rather than in the daemon's log
    configured_port()  # likewise a bad $KACHERY_DAEMON_PORT
    if foreground:
        from ..daemon.process import run  # trio, hypercorn, httpx: only when running it here

        run(storage_dir, port=port)
        return
    status = start_daemon(storage_dir, port=port)
    client = DaemonClient(storage_dir)
    if as_json:
        echo_json({**status, "url": client.base_url})
    else:
        click.echo(f"daemon for node {status['label']} ({status['node_id'][:12]}…) running at "
                   f"{client.base_url}; log: {Path(storage_dir) / 'daemon.log'}")


@node.command("witness")
@click.argument("state", type=click.Choice(["on", "off", "status"]), default="status")
def witness(state: str) -> None:
    """Make this node a witness (on), or not (off): it then cosigns the checkpoints of the
    subfeeds it hears about on its channels once its own copy holds them (following them if
    needed), refusing any that conflict with what it cosigned before (spec/witness.md §4.3).
    Needs the request-feeds role; takes effect when the daemon (re)starts."""
    from ..config import load_node_config, read_settings, write_settings

    storage_dir = default_storage_dir()
    load_node_config(storage_dir)
    settings = read_settings(storage_dir)
    if state != "status":
        settings["witness"] = state == "on"
        write_settings(storage_dir, settings)
    on = settings.get("witness") is True
    click.echo(f"this node is {'a' if on else 'not a'} witness"
               + (" (restart the daemon for the change to take effect)" if state != "status" else ""))


@node.command()
def stop() -> None:
    """Stop the daemon (waits until it has shut down)."""
    client = DaemonClient()
    client.stop()
    click.echo(f"daemon at {client.base_url} stopped")


@node.command()
@json_option
def status(as_json: bool) -> None:
    """Show whether the daemon runs, and its node, uptime and channels. Exit status 1 if not."""
    client = DaemonClient()
    st = client.status()  # raises DaemonNotRunningError -> exit 1 with a clear message
    if as_json:
        echo_json({**st, "url": client.base_url})
        return
    click.echo(f"running at {client.base_url} for {st['uptime_s']:.0f} s")
    click.echo(f"node     {st['label']} {st['node_id']}")
    click.echo(f"storage  {st['storage_dir']}")
    if st["channels"]:
        for ch in st["channels"]:
            click.echo(f"channel  {ch.get('name')}: {ch.get('state', '')}")
    else:
        click.echo("channels (none joined)")


@node.command()
@click.argument("uri")
def viewer(uri: str) -> None:
    """Print a link to the daemon's live viewer for subfeed URI.

    The link carries the read-only browser token; the daemon must be running (the viewer is
    served by it), else this fails with the command that starts it."""
    client = DaemonClient()
    client.status()  # DaemonNotRunningError (exit 1, says `kachery node start`) rather than a dead link
    click.echo(client.viewer_url(uri))

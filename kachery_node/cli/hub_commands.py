"""``kachery hub serve|login|status``: run a hub, sign in to its web UI, see its health."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..protocol.pubsub_tokens import DEFAULT_TOKEN_TTL_MS
from .output import CommandGroup, echo_json, json_option
from .tls_options import tls_options


class _HubOption(click.Option):
    """``--hub``, whose "missing" error says that $KACHERY_HUB_URL gives it too."""

    def get_error_hint(self, ctx: click.Context) -> str:
        return f"{super().get_error_hint(ctx)} (or set KACHERY_HUB_URL, e.g. http://127.0.0.1:8080)"


class SizeType(click.ParamType):
    """A size such as ``500MB``, ``10G``, ``1.5GiB`` (or ``none``: no limit), in bytes."""

    name = "SIZE"

    def convert(self, value, param, ctx):
        from ..hub.bucket_quota import parse_size
        from ..protocol.channel_errors import MalformedRequestError

        if value is None or isinstance(value, int):
            return value
        try:
            return parse_size(value)
        except MalformedRequestError as exc:
            self.fail(exc.message, param, ctx)


_hub_url_option = click.option("--hub", "hub_url", cls=_HubOption, envvar="KACHERY_HUB_URL", required=True,
                               help="The hub's URL (or $KACHERY_HUB_URL), e.g. https://hub.lab.example "
                                    "or http://127.0.0.1:8080.")


def hub_option(f):
    """``--hub URL``, with ``--ca-file`` and ``--insecure-http`` (cli/tls_options.py)."""
    return tls_options(_hub_url_option(f))


def user_client(hub_url: str, node: bool = False):
    """A HubClient with the person's user key (and the node key if ``node``)."""
    from ..config import default_storage_dir
    from ..identity import IdentityError, load_node_key, load_user_key
    from ..transport.hub_client import HubClient

    try:
        user_key = load_user_key()
        node_key = load_node_key(default_storage_dir()) if node else None
    except IdentityError as exc:
        raise click.ClickException(str(exc)) from exc
    return HubClient(hub_url, user_key=user_key, node_key=node_key)


@click.group(cls=CommandGroup)
def hub() -> None:
    """Run a hub (channels, roles, credentials, relay and bucket), and sign in to it."""


@hub.command()
@click.option("--dir", "hub_dir", type=click.Path(path_type=Path), envvar="KACHERY_HUB_DIR",
              default=lambda: str(Path(os.environ.get("HOME", ".")) / "kachery-hub"),
              show_default="~/kachery-hub",
              help="Where the hub keeps its key, database, feeds and bucket (or $KACHERY_HUB_DIR).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (loopback by default; to expose it, serve TLS with "
                   "--tls-cert/--tls-key or put a TLS proxy in front).")
@click.option("--port", type=int, default=8080, show_default=True, help="Port (0: any free port).")
@click.option("--public-url",
              help="The URL nodes and browsers use to reach this hub (default: the bound address), "
                   "e.g. https://hub.lab.example:8443.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Serve HTTPS (and wss:// for the relay) with this PEM certificate (chain); "
                   "needs --tls-key.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The PEM private key of --tls-cert (keep it readable only by the hub's user).")
@click.option("--token-ttl", type=float, default=DEFAULT_TOKEN_TTL_MS / 1000, show_default=True,
              help="Lifetime of pub-sub tokens, seconds.")
@click.option("--max-message-bytes", type=int, default=64 * 1024, show_default=True,
              help="Largest pub-sub message the relay accepts.")
@click.option("--max-publish-rate", type=float, default=2000, show_default=True,
              help="Publishes per second allowed per node on a channel, all its relay connections "
                   "together (burst: twice that).")
@click.option("--heartbeat", type=float, default=15, show_default=True,
              help="Seconds between relay heartbeats; silent connections are dropped after 3.")
@click.option("--max-queue-bytes", type=click.IntRange(min=1), default=16 * 1024 * 1024, show_default=True,
              help="Undelivered bytes a relay subscriber may fall behind before it is dropped (4008).")
@click.option("--max-connections-per-node", type=click.IntRange(min=1), default=8, show_default=True,
              help="Relay connections one node may hold open on one channel.")
@click.option("--channel-quota", type=SizeType(), default="none", show_default=True,
              help="Disk a channel's objects may take in the embedded bucket (e.g. 50GB) unless its "
                   "owner set its own; over it, file contents are evicted least recently used first.")
def serve(hub_dir: Path, host: str, port: int, public_url: str | None, tls_cert: Path | None,
          tls_key: Path | None, token_ttl: float, max_message_bytes: int, max_publish_rate: float,
          heartbeat: float, max_queue_bytes: int, max_connections_per_node: int,
          channel_quota: int | None) -> None:
    """Serve the hub API, web UI, pub-sub relay and bucket in one process."""
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together (the certificate and its key)")
    if public_url is not None and not public_url.startswith(("http://", "https://")):
        raise click.BadParameter("an http:// or https:// URL", param_hint="--public-url")
    from ..hub.app import HubSettings
    from ..hub.relay import RelayLimits
    from ..hub.serve import run_hub

    limits = RelayLimits(max_message_bytes=max_message_bytes, publish_rate=max_publish_rate,
                         publish_burst=2 * max_publish_rate, heartbeat_s=heartbeat,
                         idle_timeout_s=3 * heartbeat, max_queue_bytes=max_queue_bytes,
                         max_connections_per_node=max_connections_per_node)
    settings = HubSettings(token_ttl_ms=int(token_ttl * 1000), relay=limits,
                           channel_quota=channel_quota)
    run_hub(hub_dir, host, port, public_url, settings,
            (tls_cert, tls_key) if tls_cert is not None and tls_key is not None else None)


@hub.command()
@hub_option
@json_option
def login(hub_url: str, as_json: bool) -> None:
    """Print a one-time link that signs you in to the hub's web UI (valid 5 minutes)."""
    with user_client(hub_url) as client:
        url = client.login_link()
    if as_json:
        echo_json({"url": url})
    else:
        click.echo(f"Open this link within 5 minutes to sign in (it works once):\n{url}")


@hub.command()
@hub_option
@json_option
def status(hub_url: str, as_json: bool) -> None:
    """Show disk use and quota, connected nodes and relay traffic of the channels you own."""
    from ..hub.bucket_quota import format_size

    with user_client(hub_url) as client:
        result = client.hub_status()
    if as_json:
        echo_json(result)
        return
    click.echo(f"hub {result['hub_id']} at {result['url']}; default channel quota "
               f"{format_size(result['channel_quota_default'])}")
    if not result["channels"]:
        click.echo("you own no channels on this hub")
    for ch in result["channels"]:
        b, r = ch["bucket"], ch["relay"]
        disk = (f"{format_size(b['bytes'])} in {b['objects']} object(s) of "
                f"{format_size(b['quota_bytes'])} ({b['quota_from']}); "
                f"{format_size(b['refetchable_bytes'])} evictable")
        if b["backend"] != "embedded":
            disk += f" (the channel's files are in its {b['backend']} bucket, not here)"
        click.echo(f"{ch['channel']}\n    disk:  {disk}\n"
                   f"    nodes: {ch['online']} of {len(ch['nodes'])} online"
                   + "".join(f"\n      {n['label'] or '?'} ({n['node'][:12]}…) "
                             f"{'online' if n['online'] else 'offline'}, "
                             f"{n['relay_connections']} relay connection(s)" for n in ch["nodes"])
                   + f"\n    relay: {r['messages_in']} message(s) in ({format_size(r['bytes_in'])}), "
                   f"{r['messages_out']} out ({format_size(r['bytes_out'])}) since the hub started")

"""``kachery channel create|configure|quota|list|show|grant|revoke|delete``: manage channels on a hub.

These are a person's requests, signed with the user key ($KACHERY_USER_DIR/user.key).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..errors import MalformedRequestError
from ..protocol.roles import ROLES
from .hub_commands import SizeType, hub_option, user_client
from .output import CommandGroup, echo_json, json_option

role_args = click.argument("roles", nargs=-1, required=True, type=click.Choice(ROLES))


def resolve_node(client: Any, channel: str, given: str) -> str:
    """A node named by its full ID, or by its label or a unique prefix of its ID among the
    channel's member nodes (those that joined it). Ambiguity is an error listing the matches."""
    given = given.strip()
    if len(given) == 64 and all(c in "0123456789abcdef" for c in given.lower()):
        return given.lower()
    members = client.show_channel(channel)["members"]
    matches = [m for m in members
               if m["label"] == given or (len(given) >= 4 and m["node"].startswith(given.lower()))]
    if len(matches) == 1:
        return matches[0]["node"]

    def describe(ms: list[dict]) -> str:
        return ", ".join(f"{m['label'] or '?'} ({m['node'][:12]}…)" for m in ms) or "none"
    if matches:
        raise click.ClickException(f"{given!r} matches several nodes of {channel}: {describe(matches)}; "
                                   "give more of the ID")
    raise click.ClickException(
        f"no node of {channel} is labelled {given!r} or has an ID starting with it (its nodes: "
        f"{describe(members)}); a node that has not joined the channel yet needs its full 64-hex ID "
        "(`kachery info` on that node)")


def _print_roles(result: dict) -> None:
    click.echo(f"granted: {' '.join(result['granted']) or '-'}; "
               f"effective: {' '.join(result['effective']) or '-'}")


def backend_options(fn):
    """Options choosing a channel's backends. Secrets are read from files (never from the command
    line, where other users could see them) and sent to the hub in the signed request; the hub
    keeps them and hands nodes only narrow, short-lived credentials."""
    options = [
        click.option("--pubsub", "pubsub", default=None, metavar="embedded|nats://HOST:PORT[,...]|ably",
                     help="Pub-sub backend (default: the hub's embedded relay)."),
        click.option("--nats-account-seed", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="File with the NATS account seed (SA...) the servers trust (operator mode)."),
        click.option("--ably-key-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="File with the Ably API key (<app>.<key id>:<secret>)."),
        click.option("--ably-endpoint", default=None, help="Ably realtime host[:port] (default: Ably's)."),
        click.option("--ably-rest-url", default=None, help="Ably REST URL (default: https://rest.ably.io)."),
        click.option("--bucket", "bucket", default=None, metavar="embedded|gcs://BUCKET|s3://BUCKET",
                     help="Bucket backend (default: the hub's embedded bucket)."),
        click.option("--gcs-key-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="Service-account key (JSON) allowed to write the GCS bucket."),
        click.option("--gcs-endpoint", default=None,
                     help="GCS endpoint (default https://storage.googleapis.com; an emulator in tests)."),
        click.option("--s3-key-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="File: the S3 access key ID, then its secret (two lines); may write the bucket."),
        click.option("--s3-endpoint", default=None, metavar="URL",
                     help="S3-compatible endpoint, e.g. https://minio.lab.example:9000 (default: AWS's)."),
        click.option("--s3-region", default=None, help="S3 region (default us-east-1; R2 uses auto)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def backend_config(pubsub: str | None, nats_account_seed: Path | None, ably_key_file: Path | None,
                   ably_endpoint: str | None, ably_rest_url: str | None, bucket: str | None,
                   gcs_key_file: Path | None, gcs_endpoint: str | None, s3_key_file: Path | None = None,
                   s3_endpoint: str | None = None, s3_region: str | None = None,
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config, secrets) for a create/configure request, from the backend options."""
    from ..transport.bucket.gcs_backend import parse_gcs_url

    config: dict[str, Any] = {}
    secrets: dict[str, Any] = {}
    pubsub = pubsub or "embedded"
    if pubsub == "embedded":
        config["pubsub"] = {"backend": "embedded"}
    elif pubsub.startswith(("nats://", "tls://")):
        config["pubsub"] = {"backend": "nats", "url": pubsub}
        if nats_account_seed is None:
            raise click.UsageError("--pubsub nats://... needs --nats-account-seed FILE")
        secrets["pubsub"] = {"account_seed": nats_account_seed.read_text().strip()}
    elif pubsub == "ably":
        config["pubsub"] = {"backend": "ably", **({"endpoint": ably_endpoint} if ably_endpoint else {}),
                            **({"rest_url": ably_rest_url} if ably_rest_url else {})}
        if ably_key_file is None:
            raise click.UsageError("--pubsub ably needs --ably-key-file FILE")
        secrets["pubsub"] = {"api_key": ably_key_file.read_text().strip()}
    else:
        raise click.UsageError(f"--pubsub must be embedded, nats://host:port or ably, not {pubsub!r}")
    bucket = bucket or "embedded"
    if bucket == "embedded":
        config["bucket"] = {"backend": "embedded"}
    elif bucket.startswith("s3://"):
        from ..transport.bucket.s3_backend import s3_config

        try:
            config["bucket"], secrets["bucket"] = s3_config(bucket, s3_key_file, s3_endpoint, s3_region)
        except MalformedRequestError as exc:
            raise click.UsageError(exc.message) from None
    else:
        try:
            name = parse_gcs_url(bucket)
        except MalformedRequestError as exc:
            raise click.UsageError(exc.message) from None
        config["bucket"] = {"backend": "gcs", "bucket": name,
                            **({"endpoint": gcs_endpoint} if gcs_endpoint else {})}
        if gcs_key_file is None:
            raise click.UsageError("--bucket gcs://... needs --gcs-key-file FILE (a service-account key)")
        secrets["bucket"] = {"service_account": json.loads(gcs_key_file.read_text())}
    return config, secrets


def _describe_backends(config: dict) -> str:
    pubsub, bucket = config.get("pubsub", {}), config.get("bucket", {})
    where = {"nats": pubsub.get("url"), "ably": pubsub.get("endpoint")}.get(pubsub.get("backend"))
    pubsub_text = pubsub.get("backend", "embedded") + (f" ({where})" if where else "")
    cloud = bucket.get("backend") in ("gcs", "s3")
    bucket_text = f"{bucket['backend']}://{bucket['bucket']}" if cloud else bucket.get("backend", "embedded")
    return f"pub-sub {pubsub_text}, bucket {bucket_text}"


@click.group(cls=CommandGroup)
def channel() -> None:
    """Create channels and decide which node may do what on them."""


@channel.command()
@click.argument("name")
@backend_options
@click.option("--quota", type=SizeType(), default=None,
              help="Disk the channel may take in the hub's embedded bucket (e.g. 20GB; default: the "
                   "hub's); over it, file contents are evicted least recently used first.")
@hub_option
@json_option
def create(name: str, hub_url: str, as_json: bool, quota: int | None, **backends: Any) -> None:
    """Create channel NAME, owned by you (3-40 characters: dot-separated [A-Za-z0-9_-] segments).

    Its backends are the hub's embedded relay and bucket unless --pubsub/--bucket say otherwise.
    """
    config, secrets = backend_config(**backends)
    with user_client(hub_url) as client:
        info = client.create_channel(name, config=config, secrets=secrets or None, quota=quota)
    if as_json:
        echo_json(info)
    else:
        click.echo(f"created channel {name} (membership feed {info['membership_uri']}; "
                   f"{_describe_backends(info['config'])})")


@channel.command()
@click.argument("name")
@backend_options
@hub_option
@json_option
def configure(name: str, hub_url: str, as_json: bool, **backends: Any) -> None:
    """Change the backends of channel NAME (you must own it); nodes move at their next connection.

    Options left out mean the embedded backend; a backend that does not change keeps its stored
    secret unless a new one is given.
    """
    config, secrets = backend_config(**backends)
    with user_client(hub_url) as client:
        info = client.configure_channel(name, config, secrets or None)
    if as_json:
        echo_json(info)
    else:
        click.echo(f"channel {name}: {_describe_backends(info['config'])}")


@channel.command()
@click.argument("name")
@click.argument("size", metavar="SIZE|default")
@hub_option
@json_option
def quota(name: str, size: str, hub_url: str, as_json: bool) -> None:
    """Set how much disk channel NAME may take in the hub's embedded bucket (you must own it).

    SIZE is e.g. 500MB, 20GB or 1.5TiB (K/M/G/T decimal, KiB/MiB/GiB/TiB binary); `default`
    uses the hub's (`kachery hub serve --channel-quota`, unlimited unless set). When a write would
    go over it, the hub evicts the channel's file contents least recently used first (providers
    upload them again when asked); feed heads, segments and task results are never evicted."""
    from ..hub.bucket_quota import format_size, parse_size

    try:
        quota_bytes = None if size == "default" else parse_size(size)
    except MalformedRequestError as exc:
        raise click.BadParameter(exc.message, param_hint="SIZE") from None
    if size != "default" and quota_bytes is None:
        raise click.BadParameter("a channel's own quota is a size; `default` takes the hub's "
                                 "(which may be unlimited)", param_hint="SIZE")
    with user_client(hub_url) as client:
        result = client.set_quota(name, quota_bytes)
    if as_json:
        echo_json(result)
        return
    b = result["bucket"]
    click.echo(f"channel {name}: quota {format_size(b['quota_bytes'])} ({b['quota_from']}); "
               f"using {format_size(b['bytes'])}")


@channel.command(name="list")
@hub_option
@json_option
def list_(hub_url: str, as_json: bool) -> None:
    """List the channels you own and those your nodes joined."""
    with user_client(hub_url) as client:
        channels = client.list_channels()
    if as_json:
        echo_json(channels)
        return
    if not channels:
        click.echo("no channels")
    for ch in channels:
        role = "owner" if ch["is_owner"] else "member"
        click.echo(f"{ch['channel']:<42} {role:<7} {ch['num_nodes']} node(s)")


@channel.command()
@click.argument("name")
@hub_option
@json_option
def show(name: str, hub_url: str, as_json: bool) -> None:
    """Show a channel's owner, membership feed, nodes and their roles."""
    with user_client(hub_url) as client:
        info = client.show_channel(name)
    if as_json:
        echo_json(info)
        return
    click.echo(f"channel:    {info['channel']}\nowner:      {info['owner']}\n"
               f"membership: {info['membership_uri']}\nbucket:     {info['bucket_url']}/{info['channel']}/\n"
               f"backends:   {_describe_backends(info['config'])}")
    for m in info["members"]:
        click.echo(f"node {m['node']} ({m['label']})\n"
                   f"    granted:   {' '.join(m['granted']) or '-'}\n"
                   f"    requested: {' '.join(m['requested']) or '-'}\n"
                   f"    effective: {' '.join(m['effective']) or '-'}")


@channel.command()
@click.argument("name")
@click.argument("node_id", metavar="NODE")
@role_args
@hub_option
@json_option
def grant(name: str, node_id: str, roles: tuple[str, ...], hub_url: str, as_json: bool) -> None:
    """Grant ROLES to node NODE on channel NAME (you must own the channel).

    NODE is the node's ID, or its label or a unique prefix of its ID if it has joined NAME."""
    with user_client(hub_url) as client:
        result = client.grant(name, resolve_node(client, name, node_id), list(roles))
    if as_json:
        echo_json(result)
    else:
        _print_roles(result)


@channel.command()
@click.argument("name")
@click.argument("node_id", metavar="NODE")
@role_args
@hub_option
@json_option
def revoke(name: str, node_id: str, roles: tuple[str, ...], hub_url: str, as_json: bool) -> None:
    """Revoke ROLES from node NODE on channel NAME (you must own the channel).

    NODE is the node's ID, or its label or a unique prefix of its ID."""
    with user_client(hub_url) as client:
        result = client.revoke(name, resolve_node(client, name, node_id), list(roles))
    if as_json:
        echo_json(result)
    else:
        _print_roles(result)


@channel.command()
@click.argument("name")
@hub_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def delete(name: str, hub_url: str, yes: bool) -> None:
    """Delete channel NAME (you must own it). Its nodes lose all roles at once."""
    if not yes:
        click.confirm(f"Delete channel {name}?", abort=True)
    with user_client(hub_url) as client:
        client.delete_channel(name)
    click.echo(f"deleted channel {name}")

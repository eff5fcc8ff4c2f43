"""``kachery node join|leave``: a node's owner joins it to a channel on a hub, or leaves.

``join`` registers the node to its owner on the hub (proving possession of both keys), says
which roles the node asks for, fetches the channel's signed membership feed into the node's
feed store and verifies it, and records the channel in ``<storage>/channels.json``.
"""

from __future__ import annotations

import re
import time

import click

from ..protocol.roles import ROLES, validate_roles
from .daemon_commands import node  # re-exported: cli/__init__ loads the node group from here
from .hub_commands import hub_option, user_client
from .output import echo_json, json_option
from .tls_options import tls_options


def _parse_roles(values: tuple[str, ...]) -> list[str]:
    roles = [r for v in values for r in re.split(r"[,\s]+", v) if r]
    try:
        return validate_roles(roles)
    except Exception as exc:
        raise click.BadParameter(str(exc), param_hint="--roles") from None


@node.command()
@click.argument("channel")
@hub_option
@click.option("--roles", "role_values", multiple=True,
              help=f"Roles this node asks for, replacing what it asked before (comma/space separated "
                   f"or repeated): {' '.join(ROLES)}.")
@click.option("--add-roles", "add_values", multiple=True,
              help="Roles to ask for in addition to those asked for before (with --roles: to those).")
@json_option
def join(channel: str, hub_url: str, role_values: tuple[str, ...], add_values: tuple[str, ...],
         as_json: bool) -> None:
    """Join CHANNEL on a hub, asking for --roles or --add-roles; the channel owner grants them."""
    from ..api import open_storage
    from ..config import default_storage_dir, load_node_config
    from ..joined_channels import save_membership
    from ..transport.bucket.open_bucket import bucket_spec

    if not role_values and not add_values:
        raise click.UsageError("say which roles this node asks for: --roles (replacing) or --add-roles")
    roles = _parse_roles(role_values) if role_values else []
    added = _parse_roles(add_values) if add_values else []
    storage_dir = default_storage_dir()
    cfg = load_node_config(storage_dir)
    with user_client(hub_url, node=True) as client:
        if client.user_key.public_hex != cfg.owner:
            raise click.ClickException(
                f"this node's owner is {cfg.owner[:12]}… but your user key is "
                f"{client.user_key.public_hex[:12]}…; run as the node's owner")
        client.register_node(cfg.label)
        if added:
            if not role_values:  # add to what the node asked for before (the channel's record)
                roles = client.show_channel(channel)["members"]
                roles = next((m["requested"] for m in roles if m["node"] == cfg.node_id), [])
            roles = [r for r in ROLES if r in {*roles, *added}]
        info = client.request_roles(channel, cfg.node_id, roles)
        membership = client.fetch_membership(channel, open_storage(storage_dir).feeds, info["feed_id"])
        save_membership(storage_dir, channel, {
            "hub_url": client.url, "hub_id": client.hub_id, "feed_id": info["feed_id"],
            "roles": roles, "bucket_url": info["bucket_url"], "bucket": bucket_spec(info),
            "joined_ms": int(time.time() * 1000)})
    effective = membership.roles_of(cfg.node_id)
    if as_json:
        echo_json({"channel": channel, "node": cfg.node_id, "requested": roles,
                   "granted": membership.granted(cfg.node_id), "effective": effective,
                   "feed_id": info["feed_id"]})
        return
    click.echo(f"node {cfg.label} joined {channel}, asking for: {' '.join(roles)}\n"
               f"effective roles now: {' '.join(effective) or 'none (the channel owner grants them)'}")


@node.command()
@click.argument("channel")
@click.option("--hub", "hub_url", envvar="KACHERY_HUB_URL",
              help="The hub's URL (default: the one the node joined CHANNEL on).")
@tls_options
def leave(channel: str, hub_url: str | None) -> None:
    """Leave CHANNEL: the node asks for no roles there any more and forgets the channel."""
    from ..config import default_storage_dir, load_node_config
    from ..joined_channels import load_memberships, remove_membership

    storage_dir = default_storage_dir()
    cfg = load_node_config(storage_dir)
    if hub_url is None:
        entry = load_memberships(storage_dir).get(channel)
        if entry is None:
            raise click.ClickException(f"this node has not joined {channel!r}; pass --hub to leave anyway")
        hub_url = entry["hub_url"]
    with user_client(hub_url) as client:
        client.request_roles(channel, cfg.node_id, [])
    remove_membership(storage_dir, channel)
    click.echo(f"node {cfg.label} left {channel}")

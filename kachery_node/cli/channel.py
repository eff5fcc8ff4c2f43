"""``kachery channel create|list|show|grant|revoke|delete``: manage channels on a hub.

These are a person's requests, signed with the user key ($KACHERY_USER_DIR/user.key).
"""

from __future__ import annotations

import click

from ..channels.roles import ROLES
from ._common import echo_json, json_option
from .hub import hub_option, user_client

role_args = click.argument("roles", nargs=-1, required=True, type=click.Choice(ROLES))


def _print_roles(result: dict) -> None:
    click.echo(f"granted: {' '.join(result['granted']) or '-'}; "
               f"effective: {' '.join(result['effective']) or '-'}")


@click.group()
def channel() -> None:
    """Create channels and decide which node may do what on them."""


@channel.command()
@click.argument("name")
@hub_option
@json_option
def create(name: str, hub_url: str, as_json: bool) -> None:
    """Create channel NAME, owned by you (3-40 characters: dot-separated [A-Za-z0-9_-] segments)."""
    with user_client(hub_url) as client:
        info = client.create_channel(name)
    if as_json:
        echo_json(info)
    else:
        click.echo(f"created channel {name} (membership feed {info['membership_uri']})")


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
               f"membership: {info['membership_uri']}\nbucket:     {info['bucket_url']}/{info['channel']}/")
    for m in info["members"]:
        click.echo(f"node {m['node']} ({m['label']})\n"
                   f"    granted:   {' '.join(m['granted']) or '-'}\n"
                   f"    requested: {' '.join(m['requested']) or '-'}\n"
                   f"    effective: {' '.join(m['effective']) or '-'}")


@channel.command()
@click.argument("name")
@click.argument("node_id")
@role_args
@hub_option
@json_option
def grant(name: str, node_id: str, roles: tuple[str, ...], hub_url: str, as_json: bool) -> None:
    """Grant ROLES to node NODE_ID on channel NAME (you must own the channel)."""
    with user_client(hub_url) as client:
        result = client.grant(name, node_id, list(roles))
    if as_json:
        echo_json(result)
    else:
        _print_roles(result)


@channel.command()
@click.argument("name")
@click.argument("node_id")
@role_args
@hub_option
@json_option
def revoke(name: str, node_id: str, roles: tuple[str, ...], hub_url: str, as_json: bool) -> None:
    """Revoke ROLES from node NODE_ID on channel NAME (you must own the channel)."""
    with user_client(hub_url) as client:
        result = client.revoke(name, node_id, list(roles))
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

"""``kachery mutable set|get|delete``: the node's local key-value store."""

from __future__ import annotations

import json
from typing import Any

import click

import kachery_node as kn  # its names load on first use (kachery_node/__init__.py)

from .output import CommandGroup


def _parse(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.ClickException(
            f"the {what} must be JSON ({exc}); quote strings: '\"text\"'") from exc


def _key(key: str, json_key: bool) -> Any:
    return _parse(key, "key") if json_key else key


json_key_option = click.option("--json-key", is_flag=True,
                               help="Parse KEY as JSON (default: KEY is a plain string).")


@click.group(cls=CommandGroup)
def mutable() -> None:
    """Set, get and delete local mutables (JSON values; never shared over the network)."""


@mutable.command("set")
@click.argument("key")
@click.argument("value")
@json_key_option
@click.option("--keep", is_flag=True, help="Do not overwrite an existing value.")
def set_(key: str, value: str, json_key: bool, keep: bool) -> None:
    """Set KEY to the JSON VALUE. Exit status 1 with --keep if KEY already had a value."""
    if not kn.open_storage().mutables.set(_key(key, json_key), _parse(value, "value"),
                                       overwrite=not keep):
        raise click.ClickException(f"{key} already has a value (kept, as --keep asked)")


@mutable.command()
@click.argument("key")
@json_key_option
def get(key: str, json_key: bool) -> None:
    """Print the value of KEY as JSON (exit status 1 if there is none)."""
    click.echo(json.dumps(kn.open_storage().mutables.get(_key(key, json_key)), ensure_ascii=False))


@mutable.command()
@click.argument("key")
@json_key_option
def delete(key: str, json_key: bool) -> None:
    """Delete KEY (exit status 1 if there was none)."""
    if not kn.open_storage().mutables.delete(_key(key, json_key)):
        raise click.ClickException(f"no mutable with key {key}")

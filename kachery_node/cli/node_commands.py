"""``kachery init`` and ``kachery info``."""

from __future__ import annotations

from pathlib import Path

import click

import kachery_node as kn  # its names load on first use (kachery_node/__init__.py)

from .output import echo_json, json_option


def _human(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


@click.command()
@click.option("--label", help="A short name for this node (1-20 characters; default: host name).")
@click.option("--max-cache-size-gib", type=click.FloatRange(min=0, min_open=True),
              help="Cap the storage at this many GB (10^9 bytes); files downloaded from "
                   "channels are evicted, least recently used first, to stay under it.")
@json_option
def init(label: str | None, max_cache_size_gib: float | None, as_json: bool) -> None:
    """Create this node's identity and config in $KACHERY_STORAGE_DIR.

    Creates the node key (<storage>/node.key, readable only by you), your user key
    ($KACHERY_USER_DIR/user.key) if you have none, and <storage>/config.toml. Running it again
    keeps the keys and updates --label / --max-cache-size-gib.

    In a storage directory of the original kachery it changes none of the original's files:
    the node key comes from its private.pem (the node ID stays the same), the cache cap from its
    kachery.yaml, and it says what it does with the rest (feeds.db, mutables.db, sha1/).
    """
    from ..config import default_storage_dir
    from ..legacy.storage_dir import inspect_storage

    storage_dir = default_storage_dir()
    original = inspect_storage(Path(storage_dir))  # before init adds files of its own
    cfg, created = kn.init_node(storage_dir, label=label, max_cache_size_gib=max_cache_size_gib)
    notes = original.notes(node_id_kept=any("private.pem" in c for c in created)
                           or _pem_node_id(original) == cfg.node_id)
    if as_json:
        echo_json({"node_id": cfg.node_id, "owner": cfg.owner, "label": cfg.label,
                   "storage_dir": str(cfg.storage_dir), "created": created,
                   "original_kachery": notes})
        return
    for item in created:
        click.echo(f"created {item}")
    if notes:
        click.echo(f"original kachery storage found in {cfg.storage_dir}; nothing of it was changed:")
        for note in notes:
            click.echo(f"  {note}")
    click.echo(f"node {cfg.label} ({cfg.node_id}) in {cfg.storage_dir}")


def _pem_node_id(original) -> str | None:
    """The node ID of the original's private.pem, if it holds a usable key."""
    from ..identity import Keypair
    from ..legacy.storage_dir import PRIVATE_PEM, OriginalStorageError, node_seed_from_private_pem

    if not original.node_key_pem:
        return None
    try:
        return Keypair.from_seed_hex(
            node_seed_from_private_pem(original.directory / PRIVATE_PEM).hex()).public_hex
    except (OriginalStorageError, OSError):
        return None


@click.command()
@json_option
def info(as_json: bool) -> None:
    """Show the node ID, owner, label, storage directory and disk use.

    With --json: node_id, owner, label, storage_dir, stored_files, stored_bytes, linked_files,
    linked_bytes, max_cache_bytes (null: no cap), database_bytes, channels (joined: name, hub,
    requested roles).
    """
    from ..config import default_storage_dir
    from ..joined_channels import load_memberships

    storage_dir = Path(default_storage_dir())
    cfg = kn.load_node_config(storage_dir)
    usage = kn.open_storage(storage_dir).usage()
    channels = [{"name": name, "hub": entry.get("hub_url"), "roles": entry.get("roles", [])}
                for name, entry in sorted(load_memberships(storage_dir).items())]
    if as_json:
        echo_json({
            "node_id": cfg.node_id, "owner": cfg.owner, "label": cfg.label,
            "storage_dir": str(cfg.storage_dir),
            "stored_files": usage.stored_files, "stored_bytes": usage.stored_bytes,
            "linked_files": usage.linked_files, "linked_bytes": usage.linked_bytes,
            "max_cache_bytes": usage.max_cache_bytes, "database_bytes": usage.database_bytes,
            "channels": channels,
        })
        return
    cap = "none" if usage.max_cache_bytes is None else _human(usage.max_cache_bytes)
    click.echo(f"node ID:      {cfg.node_id}\n"
               f"label:        {cfg.label}\n"
               f"owner:        {cfg.owner}\n"
               f"storage:      {cfg.storage_dir}\n"
               f"stored:       {usage.stored_files} files, {_human(usage.stored_bytes)}"
               f" (cache cap: {cap})\n"
               f"linked:       {usage.linked_files} files, {_human(usage.linked_bytes)}"
               " (not copied)\n"
               f"databases:    {_human(usage.database_bytes)} (feeds, mutables, index)")
    for ch in channels:
        asks = " ".join(ch["roles"]) or "no roles"
        click.echo(f"channel:      {ch['name']} on {ch['hub']} (asks for {asks})")
    if not channels:
        click.echo("channels:     none joined (`kachery node join CHANNEL --hub URL --roles ...`)")

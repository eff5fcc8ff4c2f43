"""``kachery store|link|load|cat``: files in local storage."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import click

import kachery_node as kn  # its names load on first use (kachery_node/__init__.py)

from .output import echo_json, json_option, progress_bar, progress_option, transfer_progress


def _file_result(path: str, uri: str) -> dict:
    key = kn.parse_uri(uri)
    return {"path": path, "uri": uri, "sha1": key.sha1, "size": os.stat(path).st_size,
            "manifest_sha1": key.manifest_sha1}


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False))
@json_option
@progress_option
def store(paths: tuple[str, ...], as_json: bool, progress: bool | None) -> None:
    """Copy files into local storage and print their sha1:// URIs (one per line).

    Files over 20 MB get a manifest of 20 MB chunks (?manifest= in the URI). Storing an
    unchanged file again neither rehashes nor copies it. With --json, prints one JSON object
    per file: path, uri, sha1, size, manifest_sha1.
    """
    storage = kn.open_storage()
    for path in paths:
        with progress_bar(os.stat(path).st_size, Path(path).name, progress) as cb:
            uri = storage.store_file(path, progress=cb)
        if as_json:
            echo_json(_file_result(path, uri))
        else:
            click.echo(uri)


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False))
@json_option
@progress_option
def link(paths: tuple[str, ...], as_json: bool, progress: bool | None) -> None:
    """Register files in place (no copy) and print their URIs.

    A linked file is served from where it is; if it changes afterwards, loading it fails
    instead of serving different content. With --json, one JSON object per file.
    """
    storage = kn.open_storage()
    for path in paths:
        with progress_bar(os.stat(path).st_size, Path(path).name, progress) as cb:
            uri = storage.link_file(path, progress=cb)
        if as_json:
            echo_json(_file_result(path, uri))
        else:
            click.echo(uri)


channel_option = click.option(
    "--channel", default=None, help="Look only in this channel (default: every joined channel).")


def _fetch_if_missing(uri: str, channel: str | None, progress: bool | None) -> None:
    """If the content is not here, fetch it (with a progress bar): through the daemon if one
    runs for this storage, else straight from the channels' buckets."""
    storage = kn.open_storage()
    if storage.has_file(uri):
        return
    with transfer_progress(kn.parse_uri(uri).basename or "download", progress) as cb:
        kn.load_file(uri, channel=channel, progress=cb)


@click.command()
@click.argument("uri")
@click.option("--dest", type=click.Path(dir_okay=False), help="Copy the file here.")
@channel_option
@progress_option
def load(uri: str, dest: str | None, channel: str | None, progress: bool | None) -> None:
    """Print the local path of a sha1:// URI's content (verified), or copy it to --dest.

    Content that is not here is fetched from the node's channels (every joined channel in turn,
    or --channel), verified and stored: by its daemon if one runs, else straight from the
    channels' buckets. Fails with an error (exit status 1) if the content is not available.
    """
    _fetch_if_missing(uri, channel, progress)
    click.echo(kn.load_file(uri, dest=dest, channel=channel))


@click.command()
@click.argument("path_or_uri")
@click.option("--channel", required=True, help="The channel whose bucket gets the file.")
@json_option
def upload(path_or_uri: str, channel: str, as_json: bool) -> None:
    """Store a file (or take stored content by URI) and put it in a channel's bucket, so other
    nodes can load it even when this node is off. Needs the daemon and the provide-files role."""
    from ..api import upload_file

    uri = upload_file(path_or_uri, channel=channel)
    if as_json:
        echo_json({"uri": uri, "channel": channel})
    else:
        click.echo(uri)


@click.command()
@click.argument("uri")
@click.option("--start", type=click.IntRange(min=0), default=0, help="First byte (default 0).")
@click.option("--end", type=click.IntRange(min=0), default=None,
              help="End byte, exclusive (default: end of file).")
@channel_option
def cat(uri: str, start: int, end: int | None, channel: str | None) -> None:
    """Write the content of a sha1:// URI, or bytes [--start, --end) of it, to stdout
    (fetched from the node's channels if it is not here, as `kachery load` does)."""
    from ..storage.file_index import BLOCK_SIZE

    if end is None:  # to the end: the whole file (a range fetches only the chunks covering it)
        _fetch_if_missing(uri, channel, False)
    out = sys.stdout.buffer
    if end is None:
        with open(kn.load_file(uri, channel=channel), "rb") as f:
            f.seek(start)
            shutil.copyfileobj(f, out, BLOCK_SIZE)
    elif start >= end:
        out.write(kn.load_bytes(uri, start, end, channel=channel))  # checks the range
    else:
        for pos in range(start, end, BLOCK_SIZE):
            out.write(kn.load_bytes(uri, pos, min(end, pos + BLOCK_SIZE), channel=channel))
    out.flush()

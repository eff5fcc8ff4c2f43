"""``kachery fsck``: audit the storage (files, links, mutables, feeds), optionally repair it from a
channel through the daemon. Exits 1 when something is (still) wrong."""

from __future__ import annotations

import click

import kachery_node as kn  # its names load on first use (kachery_node/__init__.py)

from .output import echo_json, json_option


def _print_report(report, hashes: bool) -> None:
    feeds = report.feeds
    what = (f"{report.files} files ({'hashed, ' if hashes else 'not rehashed; --files to, '}"
            f"{report.bytes_hashed:,} bytes read), {report.links} links, {report.mutables} mutables")
    if feeds is not None:
        what += f", {feeds.feeds} feeds, {feeds.subfeeds} subfeeds, {feeds.messages} messages"
    click.echo(f"checked {report.directory}: {what}")
    for problem in report.problems:
        click.echo(f"PROBLEM {problem}")
    if feeds is not None:
        for problem in feeds.problems:
            click.echo(f"PROBLEM {problem}")
    click.echo("ok" if report.ok else "problems found")


@click.command()
@click.option("--files", "hashes", is_flag=True,
              help="Also reread every stored and linked file and check its SHA-1 (slow).")
@click.option("--repair", is_flag=True,
              help="Delete bad copies and fetch them again from --channel through the daemon.")
@click.option("--channel", default=None, help="The channel to repair from (with --repair).")
@json_option
def fsck(hashes: bool, repair: bool, channel: str | None, as_json: bool) -> None:
    """Check the local storage: stored files (present, right size, manifests; with --files, their
    bytes), links, mutables, and every feed's messages, hash chains and signatures.

    Reports what is wrong and changes nothing, unless --repair --channel NAME: then bad stored
    files are deleted and fetched again from the channel, and subfeeds this node follows are cut
    back before their first bad message and fetched again (the daemon must be running). Exits
    with status 1 if anything is wrong (after repair: still wrong).
    """
    if repair and not channel:
        raise click.UsageError("--repair needs --channel NAME (where to fetch good copies from)")
    if channel and not repair:
        raise click.UsageError("--channel is only used with --repair")
    storage = kn.open_storage()
    report = storage.verify(hashes=hashes)
    repaired = None
    if repair and not report.ok:
        from ..storage.storage_audit import repair as repair_storage

        repaired = repair_storage(storage, report, channel=channel)
        report_before, report = report, storage.verify(hashes=hashes)
    if as_json:
        out = report.to_json()
        if repaired is not None:
            out = {**out, "repair": repaired.to_json(), "before_repair": report_before.to_json()}
        echo_json(out)
    else:
        if repaired is not None:
            _print_report(report_before, hashes)
            for sha1 in repaired.refetched_files:
                click.echo(f"REPAIRED sha1://{sha1}: fetched again from {channel}")
            for uri in repaired.refetched_subfeeds:
                click.echo(f"REPAIRED {uri}: fetched again from {channel}")
            for failure in repaired.failed:
                click.echo(f"NOT REPAIRED {failure}")
            click.echo("after repair:")
        _print_report(report, hashes)
    if not report.ok:
        raise SystemExit(1)

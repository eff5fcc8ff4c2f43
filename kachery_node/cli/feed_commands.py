"""``kachery feed``: create, append, tail, info, verify; publish, unpublish, published; unfollow,
followed; key backup, restore and succession."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import click

import kachery_node as kn  # its names load on first use (kachery_node/__init__.py)

from .output import CommandGroup, echo_json, json_option


class _FeedGroup(CommandGroup):
    def invoke(self, ctx: click.Context):  # type: ignore[override]
        import kachery_feeds as kf

        try:
            return super().invoke(ctx)
        except kf.FeedError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_FeedGroup)
def feed() -> None:
    """Create, append to, read and follow feeds stored on this node.

    A subfeed is named feed://<feed ID>/<subfeed name>; feed create prints the feed URI, to
    which you add /<name> (for example feed://…/main). Feeds created with --name can be named
    by that name here: readings/temps.
    """


@feed.command()
@click.option("--name", help="A local name for the feed (usable instead of its ID here).")
@json_option
def create(name: str | None, as_json: bool) -> None:
    """Create a feed owned by this node and print its URI."""
    f = kn.open_storage().feeds.create_feed(name)
    if as_json:
        echo_json({"feed_id": f.feed_id, "uri": f.uri, "name": name})
    else:
        click.echo(f.uri)


def _subfeed_uri(arg: str) -> str:
    """``feed://<id>/<name>`` as it is, or ``<feed>/<subfeed name>`` where ``<feed>`` is a
    64-hex feed ID or a local feed name (``kachery feed create --name readings``)."""
    if arg.startswith("feed://"):
        return arg
    feed_part, slash, name = arg.partition("/")
    if not slash or not name:
        raise click.ClickException(
            f"{arg!r} names no subfeed: give feed://<feed ID>/<subfeed>, or <feed name>/<subfeed>")
    return kn.open_storage().load_feed(feed_part).load_subfeed(name).uri


def _subfeed(arg: str):
    return kn.open_storage().load_subfeed(_subfeed_uri(arg))


def _parse_messages(args: tuple[str, ...]) -> Iterator[Any]:
    lines = args if args else (line for line in sys.stdin if line.strip())
    for i, text in enumerate(lines):
        try:
            yield json.loads(text)
        except json.JSONDecodeError as exc:
            raise click.ClickException(
                f"message {i + 1} is not JSON ({exc}); give strings as '\"text\"'") from exc


@feed.command()
@click.argument("subfeed_uri", metavar="SUBFEED")
@click.argument("messages", nargs=-1)
@json_option
def append(subfeed_uri: str, messages: tuple[str, ...], as_json: bool) -> None:
    """Append JSON messages to a subfeed of a feed owned here.

    Messages are the arguments (each one JSON value) or, without arguments, one JSON value per
    line on stdin, appended in one transaction. Prints the number of the last message
    (with --json: first, last and count).
    """
    sf = _subfeed(subfeed_uri)
    payloads = list(_parse_messages(messages))
    if not payloads:
        raise click.ClickException("no messages to append")
    last = sf.append_messages(payloads)
    if as_json:
        echo_json({"uri": sf.uri, "first": last - len(payloads) + 1, "last": last,
                   "count": len(payloads)})
    else:
        click.echo(last)


@feed.command()
@click.argument("subfeed_uri", metavar="SUBFEED")
@click.option("--start", type=click.IntRange(min=0), default=None,
              help="First message number to print (default: all, or the last -n).")
@click.option("-n", "--lines", "last_n", type=click.IntRange(min=0), default=None,
              help="Print only the last N messages (then follow, with --follow).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new messages as they arrive.")
@click.option("--timeout", type=float, default=None,
              help="With --follow: stop after this many seconds without a new message.")
@click.option("--records", is_flag=True,
              help="Print {number, timestamp_ms, payload, metadata} objects, not bare payloads.")
@click.option("--channel", default=None,
              help="For a feed of another node: follow it only on this channel (default: all joined).")
def tail(subfeed_uri: str, start: int | None, last_n: int | None, follow: bool,
         timeout: float | None, records: bool, channel: str | None) -> None:
    """Print a subfeed's messages as JSON lines; with --follow, keep printing new ones.

    For a feed this node does not own, the daemon (if running) follows it on the node's
    channels, so its messages arrive here, verified, as they are appended; with no daemon,
    the channels' buckets are read directly (and polled, with --follow). If no message can be
    found anywhere, it fails saying what was tried; with --follow it says so in one line on
    stderr and waits."""
    from ..api import load_subfeed
    from ..errors import BucketDataRejectedError, SubfeedNotFoundError

    uri = _subfeed_uri(subfeed_uri)
    try:
        sf = load_subfeed(uri, channel=channel)
    except (SubfeedNotFoundError, BucketDataRejectedError) as exc:
        if not follow:
            raise
        if isinstance(exc, BucketDataRejectedError):
            why = "the bucket's copy failed verification"
        elif any(a.startswith("channel ") and ": unreachable" in a for a in exc.attempts):
            why = "owner offline; a channel's bucket could not be reached"
        else:
            why = "owner offline; nothing published yet"
        click.echo(f"{why}; waiting (tried: {'; '.join(exc.attempts)})", err=True)
        sf = load_subfeed(uri, channel=channel, live=True)
    if start is None:
        start = 0 if last_n is None else max(0, sf.get_num_local_messages() - last_n)

    def emit(number: int, payload: Any, rec: Any = None) -> None:
        if records and rec is not None:
            obj = {"number": rec.number, "timestamp_ms": rec.timestamp_ms,
                   "payload": rec.payload, "metadata": rec.metadata}
        else:
            obj = payload
        sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
        sys.stdout.flush()  # a reader on a pipe sees each message as it arrives

    if not follow:
        for rec in sf.get_records(start):
            emit(rec.number, rec.payload, rec)
        return
    if records:
        # follow yields payloads; fetch the record alongside to print number and time.
        for i, payload in enumerate(sf.follow(start=start, timeout=timeout)):
            recs = sf.get_records(start + i, start + i + 1)
            emit(start + i, payload, recs[0] if recs else None)
    else:
        for i, payload in enumerate(sf.follow(start=start, timeout=timeout)):
            emit(start + i, payload)


def _feed_or_subfeed_uri(arg: str) -> str:
    """A feed (``feed://<id>``, ID or local name) or subfeed (as :func:`_subfeed_uri`) argument."""
    if arg.startswith("feed://"):
        return arg
    if "/" in arg:
        return _subfeed_uri(arg)
    return kn.open_storage().load_feed(arg).uri


@feed.command()
@click.argument("uri")
@click.option("--channel", required=True, help="The channel whose bucket keeps the copy.")
@json_option
def publish(uri: str, channel: str, as_json: bool) -> None:
    """Keep a feed of this node (every subfeed, also later ones) or one subfeed current in a
    channel's bucket, whether or not anyone follows it, so that readers catch up while this
    node is offline. Remembered across restarts; the daemon does the uploading (now if it
    runs, else when it starts)."""
    from .. import api

    published = api.publish(_feed_or_subfeed_uri(uri), channel=channel)
    running = _daemon_running()
    if as_json:
        echo_json({"uri": published, "channel": channel, "daemon_running": running})
        return
    click.echo(f"published {published} to {channel}")
    if not running:
        click.echo("no daemon runs for this storage: the bucket is updated once one starts "
                   "(`kachery node start`)", err=True)


@feed.command()
@click.argument("uri")
@click.option("--channel", default=None, help="Only on this channel (default: every channel).")
@json_option
def unpublish(uri: str, channel: str | None, as_json: bool) -> None:
    """Stop keeping a feed or subfeed current in the bucket (what is there stays)."""
    from .. import api

    removed = api.unpublish(_feed_or_subfeed_uri(uri), channel=channel)
    if as_json:
        echo_json({"removed": removed})
        return
    if not removed:
        raise click.ClickException(f"{uri} is not published{f' to {channel}' if channel else ''}")
    click.echo(f"unpublished {uri} ({removed} publication{'s' if removed != 1 else ''})")


@feed.command()
@json_option
def published(as_json: bool) -> None:
    """List what this node publishes: one line per publication, URI then channel."""
    from .. import api

    rows = api.list_published()
    if as_json:
        echo_json({"published": rows})
        return
    for row in rows:
        click.echo(f"{row['uri']}\t{row['channel']}")


@feed.command()
@click.argument("subfeed_uri", metavar="SUBFEED")
@json_option
def unfollow(subfeed_uri: str, as_json: bool) -> None:
    """Stop following another node's subfeed (its messages stay here). A followed subfeed that
    nobody reads is unfollowed by itself after [daemon.feeds] unfollow_idle seconds
    (config.toml; default 7 days)."""
    from .. import api

    uri = _subfeed_uri(subfeed_uri)
    done = api.unfollow(uri)
    if as_json:
        echo_json({"uri": uri, "unfollowed": done})
        return
    if not done:
        raise click.ClickException(f"{uri} is not followed")
    click.echo(f"unfollowed {uri}")


@feed.command()
@json_option
def followed(as_json: bool) -> None:
    """List the other nodes' subfeeds this node's daemon follows: URI, channel (or "all") and
    when it was last read (a subfeed unread for [daemon.feeds] unfollow_idle is unfollowed)."""
    import datetime

    from ..storage.followed_subfeeds import read_followed

    out = [{"uri": r.uri, "channel": r.channel, "last_read": r.last_read}
           for r in read_followed(kn.open_storage().directory)]
    if as_json:
        echo_json({"followed": out})
        return
    for row in out:
        last = row["last_read"]
        when = "-" if last is None else datetime.datetime.fromtimestamp(last, datetime.UTC).strftime(
            "%Y-%m-%d %H:%M UTC")
        click.echo(f"{row['uri']}\t{row['channel'] or 'all'}\t{when}")


def _daemon_running() -> bool:
    from ..remote_reads import daemon_for

    return daemon_for(kn.open_storage().directory) is not None


@feed.command("info")
@click.argument("uri")
@json_option
def feed_info(uri: str, as_json: bool) -> None:
    """Show a feed's ID, whether this node can write it, and its subfeeds' message counts
    (or, for a subfeed URI, that subfeed's)."""
    import kachery_feeds as kf

    storage = kn.open_storage()
    names_subfeed = (kf.parse_feed_uri(uri).subfeed_name is not None if uri.startswith("feed://")
                     else "/" in uri)
    if names_subfeed:
        sf = storage.load_subfeed(_subfeed_uri(uri))
        doc = {"uri": sf.uri, "feed_id": sf.feed_id, "subfeed_hash": sf.subfeed_hash,
               "is_writeable": sf.is_writeable, "num_messages": sf.get_num_local_messages()}
        forks = [kf.verify_fork_proof(p).position for p in sf.get_fork_proofs()]
        if forks:  # channel knowledge (spec/witness.md §5): shown, and nothing past it accepted
            doc["fork"] = {"position": min(forks), "proofs": len(forks)}
    else:
        f = storage.load_feed(uri)
        doc = {"uri": f.uri, "feed_id": f.feed_id, "is_writeable": f.is_writeable,
               # spec/feeds.md §8-9: a restored key waiting to catch up; the key signing it now
               "restoring": storage.feeds.is_restoring(f.feed_id),
               "current_key": storage.feeds.current_key(f.feed_id).hex(),
               "key_successions": len(storage.feeds.key_succession(f.feed_id)),
               "subfeeds": f.list_subfeeds()}
    if as_json:
        echo_json(doc)
        return
    for k, v in doc.items():
        if k == "fork":
            click.echo(f"FORK:         at message {v['position']}: the owner signed two histories "
                       "(proof verified); nothing at or past it is accepted")
        elif k == "subfeeds":
            click.echo(f"subfeeds:     {len(v)}")
            for s in v:
                label = json.dumps(s["name"]) if s["name"] is not None else "~" + s["subfeed_hash"]
                click.echo(f"  {label}: {s['num_messages']} messages")
        else:
            click.echo(f"{k + ':':13} {v}")


def _witness_label(witness: str, hub_ids: set[str]) -> str:
    return "the hub" if witness in hub_ids else f"node {witness[:12]}"


def _witnessed_by(witnesses, hub_ids: set[str]) -> str:
    hubs = [w for w in witnesses if w in hub_ids]
    nodes = [w for w in witnesses if w not in hub_ids]
    parts = (["the hub"] if hubs else []) + ([f"{len(nodes)} node{'s' if len(nodes) > 1 else ''}"]
                                            if nodes else [])
    return " and ".join(parts) or "nobody"


@feed.command("require-witnesses")
@click.argument("subfeed_uri", metavar="SUBFEED")
@click.argument("witnesses", type=click.IntRange(0, 64))
def require_witnesses(subfeed_uri: str, witnesses: int) -> None:
    """As the feed's owner, require WITNESSES cosignatures (the channel's hub, or nodes of the
    channel that witness) before followers accept SUBFEED's messages; 0 lifts it. Recorded as a
    signed message of the feed's "kachery.witness-policy" subfeed (spec/witness.md §4.4)."""
    from ..protocol.witness_gate import POLICY_SUBFEED, policy_payload

    storage = kn.open_storage()
    sf = storage.load_subfeed(_subfeed_uri(subfeed_uri))
    if not sf.is_writeable:
        raise click.ClickException(f"only the owner of {sf.feed_id} (who holds its key) can set this")
    policy = storage.feeds.load_feed(sf.feed_id).load_subfeed(POLICY_SUBFEED)
    policy.append_message(policy_payload(sf.subfeed_hash, witnesses))
    click.echo(f"{sf.uri}: followers now accept messages witnessed by {witnesses} witness"
               f"{'es' if witnesses != 1 else ''}" if witnesses else f"{sf.uri}: no witnesses required")


@feed.command("verify")
@click.argument("uri")
@click.option("--witnesses", is_flag=True,
              help="Also show what the channels' witnesses signed: the newest witnessed checkpoint "
                   "in each joined channel's bucket and, from the hub's record of its cosignatures "
                   "checked against this copy, by when each message existed.")
@click.option("--channel", default=None, help="Only this joined channel (default: all).")
@click.option("--all", "show_all", is_flag=True, help="Print every timeline entry (default: the last 20).")
@json_option
def feed_verify(uri: str, witnesses: bool, channel: str | None, show_all: bool, as_json: bool) -> None:
    """Re-check the local copy of a subfeed (chain, signatures, counts) and report forks; with
    --witnesses, print its provable timeline ("message 120 existed by 2026-12-03T10:04:00Z,
    witnessed by the hub"). Exits with status 1 if the copy is damaged or the subfeed forked."""
    import datetime

    import kachery_feeds as kf

    from ..identity import load_node_key
    from ..joined_channels import load_memberships
    from ..transport.hub_client import HubClient
    from ..witness_reads import newest_witnessed_checkpoints, provable_timeline

    storage = kn.open_storage()
    sf = storage.load_subfeed(_subfeed_uri(uri))
    report = storage.feeds.verify((sf.feed_id, sf.subfeed_hash))
    count = sf.get_num_local_messages()
    forks = [kf.verify_fork_proof(p).position for p in sf.get_fork_proofs()]
    doc: dict[str, Any] = {"uri": sf.uri, "num_messages": count,
                           "problems": [str(p) for p in report.problems],
                           "fork_position": min(forks) if forks else None}
    memberships = load_memberships(storage.directory)
    hub_ids = {e.get("hub_id") for e in memberships.values() if isinstance(e.get("hub_id"), str)}
    if witnesses:
        channels = []
        history: list[tuple[int, str]] = []
        for view in newest_witnessed_checkpoints(storage.directory, sf.feed_id, sf.subfeed_hash, channel):
            entry: dict[str, Any] = {"channel": view.channel, "error": view.error}
            if view.checkpoint is not None:
                cp = view.checkpoint
                entry["checkpoint"] = {"size": cp.checkpoint.size, "witnesses": cp.witnesses(),
                                       "times": [c.timestamp for c in cp.cosignatures]}
                history += [(cp.checkpoint.size, c.line()) for c in cp.cosignatures]
            if view.fork is not None:
                entry["fork_position"] = view.fork.position
                if doc["fork_position"] is None or view.fork.position < doc["fork_position"]:
                    doc["fork_position"] = view.fork.position
            hub_url = memberships.get(view.channel, {}).get("hub_url")
            try:
                with HubClient(hub_url, node_key=load_node_key(storage.directory)) as hub:
                    answer = hub.witness_request("witness_history", channel=view.channel,
                                                 feed_id=sf.feed_id, subfeed_hash=sf.subfeed_hash)
                history += [(row["size"], row["cosignature"]) for row in answer["cosignatures"]]
            except Exception as exc:  # the hub unreachable: the bucket's checkpoint still stands
                entry["history_error"] = f"{type(exc).__name__}: {exc}"
            channels.append(entry)
        doc["channels"] = channels
        doc["timeline"] = [{"message": e.size - 1, "existed_by": e.time, "witnesses": list(e.witnesses)}
                           for e in provable_timeline(sf, history)]
    if as_json:
        echo_json(doc)
    else:
        def iso(t: int) -> str:
            return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

        state = "verified" if not report.problems else f"{len(report.problems)} PROBLEM(S)"
        click.echo(f"{sf.uri}: {count} messages, {state}")
        for p in doc["problems"]:
            click.echo(f"  {p}")
        if doc["fork_position"] is not None:
            click.echo(f"FORK at message {doc['fork_position']}: the owner signed two histories "
                       "(proof verified); nothing at or past it is accepted")
        for entry in doc.get("channels", []):
            if entry.get("error"):
                click.echo(f"{entry['channel']}: {entry['error']}")
            elif "checkpoint" in entry:
                c = entry["checkpoint"]
                click.echo(f"{entry['channel']}: newest witnessed checkpoint: {c['size']} messages, "
                           f"witnessed by {_witnessed_by(c['witnesses'], hub_ids)}")
            else:
                click.echo(f"{entry['channel']}: no witnessed checkpoint")
        timeline = doc.get("timeline", [])
        shown = timeline if show_all else timeline[-20:]
        if len(shown) < len(timeline):
            click.echo(f"  ... {len(timeline) - len(shown)} earlier entries (--all)")
        for e in shown:
            click.echo(f"  message {e['message']} existed by {iso(e['existed_by'])}, witnessed by "
                       f"{_witnessed_by(e['witnesses'], hub_ids)}")
    if report.problems or doc["fork_position"] is not None:
        sys.exit(1)


@feed.command("import-legacy")
@click.option("--from", "source", type=click.Path(exists=True, dir_okay=False),
              help="An original feeds.db to import (default: this storage's own; it is then "
                   "moved to feeds.original.db, unchanged).")
@click.option("--feed", "feed_ids", multiple=True, metavar="FEED_ID",
              help="Import only this original feed (repeatable; default: all).")
@json_option
def import_legacy(source: str | None, feed_ids: tuple[str, ...], as_json: bool) -> None:
    """Import the original kachery's feeds (its feeds.db), verified, as feeds of this node.

    Every subfeed is first checked under the original's rules (numbering, signature chain,
    Ed25519 signatures); if one fails, nothing is imported. Each original feed becomes a new
    feed here (keeping its local name when free); each subfeed keeps its name and starts with a
    message saying where it came from, followed by the original messages, each carrying the
    original's signed text so its signature stays checkable. Running it again imports only what
    is not imported yet. Prints one line per feed: original ID, then the new feed's URI.
    """
    from ..legacy.feeds_import import import_original_feeds

    results = import_original_feeds(kn.open_storage(), source, feed_ids=list(feed_ids) or None)
    if as_json:
        echo_json({"feeds": [r.to_json() for r in results]})
        return
    for r in results:
        what = ("already imported" if r.already_imported else
                f"{len(r.subfeeds)} subfeeds, {sum(s.messages for s in r.subfeeds)} messages")
        name = f" (name {r.name})" if r.name else ""
        click.echo(f"{r.original_feed_id} -> {r.uri}{name}: {what}")


# ----------------------------------------------------------------------------- key backups
@feed.command("export-key")
@click.argument("feed_ref", metavar="FEED")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True,
              help="File to write the backup to (created owner-only; refuses to overwrite).")
def export_key(feed_ref: str, out_path: str) -> None:
    """Write a backup of the key that signs FEED (a secret: whoever holds it can append).

    Restore it on another machine with `kachery feed restore FILE`."""
    import os

    storage = kn.open_storage()
    backup = storage.feeds.export_key(storage.load_feed(feed_ref).feed_id)
    try:
        fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise click.ClickException(f"{out_path} exists; choose another file") from None
    with os.fdopen(fd, "wb") as f:
        f.write(backup + b"\n")
    click.echo(out_path)


@feed.command("restore")
@click.argument("backup", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--resume", "resume_feed", metavar="FEED", default=None,
              help="Continue the restore of a feed whose key was already taken from a backup.")
@click.option("--channel", default=None, help="Catch up only on this channel (default: all joined).")
@click.option("--timeout", type=click.FloatRange(min=0), default=120.0, show_default=True,
              help="Seconds to wait for the newest messages to arrive.")
@click.option("--offline-ok", is_flag=True,
              help="End the restore WITHOUT catching up (only if no other machine wrote to the feed "
                   "after the backup was made: otherwise appending here forks the feed).")
@json_option
def restore(backup: str | None, resume_feed: str | None, channel: str | None, timeout: float,
            offline_ok: bool, as_json: bool) -> None:
    """Restore a feed's key from a backup (`kachery feed export-key`) without forking the feed.

    The feed is read-only here until this node has caught up, through its running daemon, with
    the newest messages its channels hold of every subfeed of the feed (what the old machine
    wrote after the backup); then it can append after them. If that cannot be done now, the feed
    stays restoring: run `kachery feed restore --resume FEED` later."""
    from ..feed_restore import catch_up, restore_from_backup

    if (backup is None) == (resume_feed is None):
        raise click.ClickException("give either a BACKUP file or --resume FEED")
    storage = kn.open_storage()
    if backup is not None:
        feed_id = restore_from_backup(storage, backup).feed_id
    else:
        feed_id = storage.load_feed(resume_feed).feed_id
        if not storage.feeds.has_private_key(feed_id):
            raise click.ClickException(f"this node holds no key of feed {feed_id}: restore a backup first")
    if not storage.feeds.is_restoring(feed_id):
        doc = {"feed_id": feed_id, "uri": f"feed://{feed_id}", "restoring": False, "caught_up": {}}
        echo_json(doc) if as_json else click.echo(f"feed://{feed_id}: ready to append")
        return
    if offline_ok:
        click.echo(f"WARNING: ending the restore of feed {feed_id} without catching up. If another "
                   "machine appended to it after this backup was made, appending here FORKS the feed.",
                   err=True)
        storage.feeds.finish_restore(feed_id, {}, unchecked=True)
        known: dict[str, int] = {}
    else:
        known = catch_up(storage, feed_id, channel=channel, timeout=timeout).known
    if as_json:
        echo_json({"feed_id": feed_id, "uri": f"feed://{feed_id}", "restoring": False, "caught_up": known})
        return
    click.echo(f"feed://{feed_id}: caught up with {len(known)} subfeeds; ready to append")


# ----------------------------------------------------------------------------- key succession
def _write_secret(path: str, data: bytes) -> None:
    import os

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise click.ClickException(f"{path} exists; choose another file") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data + b"\n")


@feed.command("rotate-key")
@click.argument("feed_ref", metavar="FEED")
@click.option("--recovery-public-key", default=None, metavar="HEX",
              help="Commit this recovery key for the new key (default: keep the one committed before).")
@json_option
def rotate_key(feed_ref: str, recovery_public_key: str | None, as_json: bool) -> None:
    """Hand FEED to a fresh key, signed by its current key; its URI stays.

    Followers accept the new key's messages from the next append on; messages the old key signs
    after this point are refused everywhere the succession is known, and reported as a fork. A
    backup of the old key can no longer append: export a new one (`kachery feed export-key`)."""
    from kachery_feeds.succession import KeyChain

    storage = kn.open_storage()
    feed_id = storage.load_feed(feed_ref).feed_id
    kwargs = {}
    if recovery_public_key is not None:
        kwargs["recovery_key"] = _public_key(recovery_public_key)
    record = storage.feeds.rotate_key(feed_id, **kwargs)
    chain = KeyChain.verify(feed_id, storage.feeds.key_succession(feed_id))
    doc = {"feed_id": feed_id, "uri": f"feed://{feed_id}", "key": chain.current_key.hex(),
           "seq": len(chain.records), "record": record.decode()}
    if as_json:
        echo_json(doc)
    else:
        click.echo(f"feed://{feed_id} is now signed by key {doc['key']} (succession {doc['seq']}); "
                   "export a new key backup: the old one can no longer append")


def _public_key(text: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise click.ClickException("a public key is 64 hex characters")
    return key


@feed.command("set-recovery-key")
@click.argument("feed_ref", metavar="FEED")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Make a fresh recovery key and write it to this file (keep it offline).")
@click.option("--public-key", "public_hex", default=None, metavar="HEX",
              help="Commit an existing recovery key, given by its public key.")
@json_option
def set_recovery_key(feed_ref: str, out_path: str | None, public_hex: str | None, as_json: bool) -> None:
    """Commit a recovery key for FEED: if its current key is lost, the recovery key can hand the
    feed to a new key (`kachery feed recover`). Readers learn the commitment with the feed's next
    message."""
    import os

    from kachery_feeds.key_backup import encode_recovery_key
    from kachery_feeds.succession import public_key_of

    if (out_path is None) == (public_hex is None):
        raise click.ClickException("give either --out FILE (a fresh key) or --public-key HEX")
    storage = kn.open_storage()
    feed_id = storage.load_feed(feed_ref).feed_id
    if out_path is not None:
        seed = os.urandom(32)
        _write_secret(out_path, encode_recovery_key(feed_id, seed))
        public = public_key_of(seed)
    else:
        public = _public_key(public_hex or "")
    storage.feeds.set_recovery_key(feed_id, public)
    if as_json:
        echo_json({"feed_id": feed_id, "recovery_public_key": public.hex(), "file": out_path})
    else:
        click.echo(f"recovery key {public.hex()} committed for feed://{feed_id}")


@feed.command("recover")
@click.argument("feed_ref", metavar="FEED")
@click.option("--recovery-key", "key_path", type=click.Path(exists=True, dir_okay=False), required=True,
              help="The recovery key file written by `kachery feed set-recovery-key --out`.")
@json_option
def recover(feed_ref: str, key_path: str, as_json: bool) -> None:
    """Hand FEED to a fresh key held by this node, signed by its committed recovery key (when the
    current key is lost). This node should hold the newest messages of the feed (follow it
    first): messages the lost key signed after those this node holds are refused from now on."""
    from pathlib import Path

    import kachery_feeds as kf
    from kachery_feeds.key_backup import parse_recovery_key
    from kachery_feeds.succession import KeyChain

    storage = kn.open_storage()
    feed_id = storage.load_feed(feed_ref).feed_id
    key_feed, seed = parse_recovery_key(Path(key_path).read_bytes())
    if key_feed != feed_id:
        raise kf.VerificationError(f"{key_path} is a recovery key of feed {key_feed}, not {feed_id}")
    storage.feeds.recover_key(feed_id, seed)
    chain = KeyChain.verify(feed_id, storage.feeds.key_succession(feed_id))
    if as_json:
        echo_json({"feed_id": feed_id, "uri": f"feed://{feed_id}", "key": chain.current_key.hex(),
                   "seq": len(chain.records)})
    else:
        click.echo(f"feed://{feed_id} is now signed by this node's key {chain.current_key.hex()}; "
                   "export a key backup (`kachery feed export-key`)")

"""``kachery feed create|append|tail|info|verify``: feeds in ``<storage>/feeds.db`` (kachery_feeds)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import click

from ..api import open_storage
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
    f = open_storage().feeds.create_feed(name)
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
    return open_storage().load_feed(feed_part).load_subfeed(name).uri


def _subfeed(arg: str):
    return open_storage().load_subfeed(_subfeed_uri(arg))


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
    channels, so its messages arrive here, verified, as they are appended."""
    from ..api import load_subfeed

    sf = load_subfeed(_subfeed_uri(subfeed_uri), channel=channel)
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


@feed.command("info")
@click.argument("uri")
@json_option
def feed_info(uri: str, as_json: bool) -> None:
    """Show a feed's ID, whether this node can write it, and its subfeeds' message counts
    (or, for a subfeed URI, that subfeed's)."""
    import kachery_feeds as kf

    storage = open_storage()
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

    storage = open_storage()
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

    storage = open_storage()
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

    results = import_original_feeds(open_storage(), source, feed_ids=list(feed_ids) or None)
    if as_json:
        echo_json({"feeds": [r.to_json() for r in results]})
        return
    for r in results:
        what = ("already imported" if r.already_imported else
                f"{len(r.subfeeds)} subfeeds, {sum(s.messages for s in r.subfeeds)} messages")
        name = f" (name {r.name})" if r.name else ""
        click.echo(f"{r.original_feed_id} -> {r.uri}{name}: {what}")

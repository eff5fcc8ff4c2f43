# ruff: noqa: E501  (HTML/CSS templates read better unwrapped)
"""The hub's web UI: server-rendered HTML with a little JavaScript.

A person signs in with a one-time link printed by ``kachery hub login`` (no password: the link
was requested with their user key). The session cookie is HttpOnly and SameSite=Strict, and
every state-changing call also carries the session's CSRF token in a header. Pages: the
person's channels and nodes with a form to create a channel; per channel, a table of nodes ×
roles with checkboxes (granted by the owner), the roles each node's owner requested, the
effective roles, the channel's backends, its health for its owner (disk use and quota of the
embedded bucket, nodes online, relay traffic since the hub started: hub/status.py), and recent
activity.

Backends are shown from the channel's public ``config`` through a whitelist of fields
(:data:`_PUBLIC_FIELDS`); secrets live in ``<hub dir>/secrets/`` and this module never reads them.
"""

from __future__ import annotations

import html
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from ..errors import ChannelProtocolError, MalformedRequestError, NotAllowedError
from ..protocol.channel_names import validate_channel_name
from ..protocol.roles import ROLES

if TYPE_CHECKING:
    from .app import Hub

COOKIE = "kachery_session"
e = html.escape

_CSS = """
:root { --fg:#1d2330; --muted:#667085; --line:#e4e7ec; --accent:#2f6fed; --bg:#f7f8fa; --ok:#137a3d; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg);
       background:var(--bg); }
header { background:#151a26; color:#fff; padding:14px 32px; display:flex; align-items:center; gap:24px; }
header a { color:#fff; text-decoration:none; } header .brand { font-weight:700; font-size:18px; }
header .who { margin-left:auto; font-size:13px; color:#c6cbd6; font-family:ui-monospace,monospace; }
main { max-width:1100px; margin:28px auto; padding:0 32px; }
h1 { font-size:24px; margin:0 0 6px; } h2 { font-size:17px; margin:28px 0 10px; }
.card { background:#fff; border:1px solid var(--line); border-radius:10px; padding:18px 22px; margin-bottom:18px; }
table { border-collapse:collapse; width:100%; }
th, td { text-align:left; padding:9px 10px; border-bottom:1px solid var(--line); vertical-align:middle; }
th { font-size:12px; text-transform:uppercase; letter-spacing:.04em; color:var(--muted); font-weight:600; }
td.c, th.c { text-align:center; }
code, .mono { font-family:ui-monospace,SFMono-Regular,Menlo,monospace; font-size:13px; }
.muted { color:var(--muted); } .small { font-size:13px; }
.tag { display:inline-block; padding:1px 8px; border-radius:999px; background:#eef2ff; color:#3440a8;
       font-size:12px; margin:1px 2px; }
.tag.eff { background:#e7f6ec; color:var(--ok); }
.tag.online { background:#e7f6ec; color:var(--ok); }
.tag.offline { background:#f3f3f3; color:#777; }
input[type=text] { padding:8px 10px; border:1px solid #cfd4dc; border-radius:7px; font-size:15px; width:320px; }
button { padding:8px 16px; border:0; border-radius:7px; background:var(--accent); color:#fff; font-size:15px;
         cursor:pointer; } button:hover { filter:brightness(1.08); }
input[type=checkbox] { width:18px; height:18px; accent-color:var(--accent); cursor:pointer; }
.msg { margin-top:10px; font-size:14px; } .msg.err { color:#b42318; } .msg.ok { color:var(--ok); }
a { color:var(--accent); }
"""

_JS = """
async function kpost(path, body) {
  const r = await fetch(path, {method: 'POST', headers: {'Content-Type': 'application/json',
        'X-Kachery-CSRF': document.body.dataset.csrf}, body: JSON.stringify(body)});
  const j = await r.json();
  if (!r.ok) throw new Error(j.error ? j.error.message : ('HTTP ' + r.status));
  return j;
}
function say(id, text, ok) { const m = document.getElementById(id); m.textContent = text;
  m.className = 'msg ' + (ok ? 'ok' : 'err'); }
async function createChannel(ev) {
  ev.preventDefault();
  const name = document.getElementById('new-channel').value.trim();
  try { await kpost('/ui/api/create-channel', {channel: name}); location.href = '/channels/' + name; }
  catch (err) { say('create-msg', err.message, false); }
}
async function toggleRole(box) {
  box.disabled = true;
  try {
    const r = await kpost('/ui/api/grant', {channel: box.dataset.channel, node: box.dataset.node,
                                            role: box.dataset.role, granted: box.checked});
    document.getElementById('eff-' + box.dataset.node).innerHTML =
      r.effective.map(x => '<span class="tag eff">' + x + '</span>').join('') || '<span class="muted">none</span>';
    say('grant-msg', (box.checked ? 'Granted ' : 'Revoked ') + box.dataset.role, true);
  } catch (err) { box.checked = !box.checked; say('grant-msg', err.message, false); }
  box.disabled = false;
}
"""


def _page(title: str, body: str, user: str | None = None, csrf: str = "") -> HTMLResponse:
    who = f'<span class="who">user {e(user[:16])}… · <a href="/logout">sign out</a></span>' if user else ""
    return HTMLResponse(
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{e(title)} · kachery hub</title>"
        f'<meta name=viewport content="width=device-width,initial-scale=1"><style>{_CSS}</style></head>'
        f'<body data-csrf="{e(csrf)}"><header><a class=brand href="/">kachery hub</a>'
        f'<a href="/">Channels</a>{who}</header><main>{body}</main><script>{_JS}</script></body></html>')


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(ms: int) -> str:
    s = max(0, ms) // 1000
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s // size} {unit} ago"
    return f"{s} s ago"


def _presence_html(presence: dict, now: int) -> str:
    seen = presence["last_seen_ms"]
    when = "never seen" if seen is None else f"last seen {_ago(now - seen)}"
    if presence["online"]:
        return f'<span class="tag online" title="{e(when)}">online</span>'
    return f'<span class="tag offline">offline</span> <span class="small muted">{e(when)}</span>'


def _repeat_html(entry: dict) -> str:
    if entry["count"] == 1:
        return ""
    return (f' <span class="small muted">(×{entry["count"]} since '
            f'{e(_when(entry["first_ms"]))})</span>')


def _tags(roles: list[str], cls: str = "") -> str:
    return "".join(f'<span class="tag {cls}">{e(r)}</span>' for r in roles) or '<span class="muted">none</span>'


# The config fields shown per (part, backend), with their labels. A whitelist: a field added to a
# config later stays hidden until someone decides it is public. (Secrets are never in the config,
# see hub/backends.py; this module never reads the secret store.)
_PUBLIC_FIELDS: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {
    ("pubsub", "nats"): (("url", ""),),
    ("pubsub", "ably"): (("endpoint", "endpoint "), ("rest_url", "REST ")),
    ("bucket", "gcs"): (("bucket", ""), ("endpoint", "endpoint ")),
    ("bucket", "s3"): (("bucket", ""), ("endpoint", "endpoint "), ("region", "region ")),
}


def _backend_name(config: dict, part: str) -> str:
    value = config.get(part, {"backend": "embedded"})
    name = value.get("backend") if isinstance(value, dict) else None
    return name if isinstance(name, str) else "?"


def _backend_html(config: dict, part: str) -> str:
    """One part of a channel's backends and where it is, e.g. ``nats nats://a:4222``, from the
    whitelisted public fields only."""
    name = _backend_name(config, part)
    if name == "embedded":
        return "<b>embedded</b> (this hub)"
    value = config.get(part)
    value = value if isinstance(value, dict) else {}
    shown = []
    for key, label in _PUBLIC_FIELDS.get((part, name), ()):
        v = value.get(key)
        if not isinstance(v, str) or not v:
            continue
        values = v.split(",") if key == "url" else [f"{name}://{v}" if key == "bucket" else v]
        shown.append(label + " ".join(f"<code>{e(x.strip())}</code>" for x in values if x.strip()))
    if name == "ably" and not value.get("endpoint"):
        shown.insert(0, "Ably's default endpoint")
    return f"<b>{e(name)}</b> " + " · ".join(shown)


def _health_html(figures: dict) -> str:
    """The owner's view of a channel's disk, nodes and relay traffic (hub/status.py's figures)."""
    from .bucket_quota import format_size

    b, r = figures["bucket"], figures["relay"]
    quota = b["quota_bytes"]
    used = (f"{format_size(b['bytes'])} of {format_size(quota)}"
            + (f" ({100 * b['bytes'] / quota:.0f} %)" if quota else "") + f" · {b['objects']} object(s)")
    where = "" if b["backend"] == "embedded" else (
        f' <span class="small muted">(the channel\'s objects are in its {e(b["backend"])} bucket)</span>')
    rows = [
        ("health-disk", "Disk", f"{e(used)}{where}<br><span class='small muted'>quota: {e(b['quota_from'])}; "
         f"{e(format_size(b['refetchable_bytes']))} of file contents may be evicted (least recently used "
         "first) when a write needs room; feeds and task results never are</span>"),
        ("health-nodes", "Nodes", f"{figures['online']} of {len(figures['nodes'])} online"),
        ("health-relay", "Relay", f"{r['messages_in']} message(s) in ({e(format_size(r['bytes_in']))}), "
         f"{r['messages_out']} delivered ({e(format_size(r['bytes_out']))}) since the hub started"),
    ]
    return "<table>" + "".join(f'<tr id="{i}"><th style="width:100px">{label}</th><td>{v}</td></tr>'
                               for i, label, v in rows) + "</table>"


def web_routes(hub: Hub) -> list[Route]:
    state = hub.state

    def session(request: Request) -> tuple[str, str] | None:
        return state.session(request.cookies.get(COOKIE), int(time.time() * 1000))

    def signed_out() -> HTMLResponse:
        return _page("Sign in", f"""<div class=card><h1>Sign in</h1>
<p>This hub uses your kachery user key instead of a password. On a computer where you ran
<code>kachery init</code>, run:</p><pre class=mono>kachery hub login --hub {e(hub.public_url)}</pre>
<p>and open the one-time link it prints (valid for 5 minutes).</p></div>""")

    async def home(request: Request) -> Response:
        s = session(request)
        if s is None:
            return signed_out()
        user, csrf = s
        mine = {n["node_id"]: n for n in state.nodes_of_user(user)}
        rows = []
        for ch in state.channels():
            m = state.membership(ch.name)
            my_nodes = [n for n in m.nodes() if n in mine]
            if ch.owner_id != user and not my_nodes:
                continue
            role = "owner" if ch.owner_id == user else "member"
            backends = f"{_backend_name(ch.config, 'pubsub')} + {_backend_name(ch.config, 'bucket')}"
            rows.append(f'<tr><td><a href="/channels/{e(ch.name)}">{e(ch.name)}</a></td><td>{role}</td>'
                        f"<td class=c>{len(m.nodes())}</td><td class=\"small mono\">{e(backends)}</td>"
                        f"<td class=small>{_when(ch.created_ms)}</td></tr>")
        channels = ("<table><tr><th>Channel</th><th>You are</th><th class=c>Nodes</th>"
                    '<th title="pub-sub + bucket">Backends</th><th>Created</th></tr>'
                    + "".join(rows) + "</table>") if rows else '<p class="muted">No channels yet.</p>'
        node_rows = "".join(
            f"<tr><td>{e(n['label'])}</td><td class=mono>{e(n['node_id'])}</td>"
            f"<td>{e(', '.join(state.channels_of_node(n['node_id'])) or '—')}</td></tr>" for n in mine.values())
        nodes = ("<table><tr><th>Label</th><th>Node ID</th><th>Channels</th></tr>" + node_rows + "</table>"
                 if node_rows else '<p class="muted">No nodes yet: run <code>kachery node join CHANNEL '
                 f'--hub {e(hub.public_url)} --roles …</code> on a node.</p>')
        body = f"""<h1>Your channels</h1><p class=muted>Channels you own, and channels your nodes joined.</p>
<div class=card>{channels}</div>
<div class=card><h2 style="margin-top:0">Create a channel</h2>
<form id=create-form onsubmit="createChannel(event)"><input type=text id=new-channel
 placeholder="e.g. lab.ephys-2024" minlength=3 maxlength=40 required> <button type=submit>Create</button></form>
<div id=create-msg class=msg></div>
<p class="small muted">3–40 characters: dot-separated segments of letters, digits, “_” and “-”.</p></div>
<h2>Your nodes</h2><div class=card>{nodes}</div>"""
        return _page("Channels", body, user, csrf)

    async def channel_page(request: Request) -> Response:
        s = session(request)
        if s is None:
            return signed_out()
        user, csrf = s
        try:
            name = validate_channel_name(request.path_params["name"])
            ch = state.channel(name)
        except ChannelProtocolError as exc:
            return _page("Not found", f"<div class=card><h1>Not found</h1><p>{e(exc.message)}</p></div>",
                         user, csrf)
        is_owner = ch.owner_id == user
        now = int(time.time() * 1000)
        mine = {n["node_id"] for n in state.nodes_of_user(user)}
        members = [m for m in state.members(name) if is_owner or m["node"] in mine]
        if not is_owner and not members:
            return _page("Not allowed", "<div class=card><h1>Not allowed</h1><p>Only the channel's owner "
                         "and owners of its nodes can see this channel.</p></div>", user, csrf)
        head = "".join(f"<th class=c>{e(r)}</th>" for r in ROLES)
        rows = []
        for m in members:
            cells = "".join(
                f'<td class=c><input type=checkbox data-channel="{e(name)}" data-node="{e(m["node"])}" '
                f'data-role="{r}" {"checked" if r in m["granted"] else ""} '
                f'{"" if is_owner else "disabled"} onchange="toggleRole(this)" '
                f'title="{"granted" if r in m["granted"] else "not granted"}; '
                f'{"requested" if r in m["requested"] else "not requested"} by the node owner"></td>'
                for r in ROLES)
            presence = hub.presence(name, m["node"], now)
            rows.append(
                f'<tr id="node-{e(m["node"])}"><td><b>{e(m["label"] or "?")}</b> {_presence_html(presence, now)}'
                f'<br><span class="mono small muted">{e(m["node"][:16])}…</span></td>{cells}'
                f'<td class=small>{_tags(m["requested"])}</td>'
                f'<td class=small id="eff-{e(m["node"])}">{_tags(m["effective"], "eff")}</td></tr>')
        table = (f"<table><tr><th>Node</th>{head}<th>Requested</th><th>Effective</th></tr>"
                 + "".join(rows) + "</table>") if rows else (
            '<p class="muted">No nodes yet. A node joins with <code>kachery node join '
            f'{e(name)} --hub {e(hub.public_url)} --roles …</code>; then grant it roles here.</p>')
        acts = "".join(f"<tr class=activity><td class=small>{_when(a['time_ms'])}</td><td><span class=tag>"
                       f"{e(a['kind'])}</span></td><td>{e(a['detail'])}{_repeat_html(a)}</td></tr>"
                       for a in state.grouped_activity(name, 30))
        activity = f"<table>{acts}</table>" if acts else '<p class="muted">Nothing yet.</p>'
        # Forks the hub's witness found or was told of on this channel (spec/witness.md §5).
        forks = [a for a in state.activity(name, 2000) if a["kind"] == "fork"]
        fork_card = ("<h2>Forks</h2><div class=card id=forks><p>A feed's owner signed two different "
                     "histories of these subfeeds (proven); the hub's witness cosigns neither branch "
                     "past the fork, and members accept no message past it.</p><table>"
                     + "".join(f"<tr><td class=small>{_when(a['time_ms'])}</td><td>{e(a['detail'])}</td></tr>"
                               for a in forks[:20]) + "</table></div>") if forks else ""
        backends = "".join(f'<tr id="backend-{part}"><th style="width:100px">{label}</th>'
                           f"<td>{_backend_html(ch.config, part)}</td></tr>"
                           for part, label in (("pubsub", "Pub-sub"), ("bucket", "Bucket")))
        health = ""
        if is_owner:  # the figures are the owner's only (hub/status.py)
            from .status import channel_status

            health = (f"<h2>Health</h2><div class=card id=health>"
                      f"{_health_html(channel_status(hub, ch, now))}<p class='small muted'>The owner sets "
                      f"the quota with <code>kachery channel quota {e(name)} SIZE --hub {e(hub.public_url)}"
                      "</code>.</p></div>")
        body = f"""<h1>{e(name)}</h1>
<p class=muted>Owner <span class=mono>{e(ch.owner_id[:16])}…</span>{" (you)" if is_owner else ""} ·
membership feed <span class=mono>{e(ch.feed_id[:16])}…</span></p>
<h2>Roles</h2><div class=card><p class="small muted">Checkboxes are the roles the channel owner grants.
A node acts only in roles that are both granted and requested by its own owner (effective).</p>
{table}<div id=grant-msg class=msg></div></div>
<h2>Backends</h2><div class=card id=backends><table>{backends}</table>
<p class="small muted">The channel's owner changes them with <code>kachery channel configure {e(name)}
--hub {e(hub.public_url)} --pubsub embedded|nats://HOST:PORT|ably --bucket embedded|gcs://BUCKET|s3://BUCKET</code>
(plus <code>--nats-account-seed</code>, <code>--ably-key-file</code> or <code>--gcs-key-file</code>/<code>--s3-key-file</code>: secrets
stay on the hub); nodes move at their next connection.</p></div>
{fork_card}{health}<h2>Recent activity</h2><div class=card>{activity}</div>"""
        return _page(name, body, user, csrf)

    async def login(request: Request) -> Response:
        got = state.redeem_login_token(request.path_params["token"], int(time.time() * 1000))
        if got is None:
            return _page("Link not valid", "<div class=card><h1>This sign-in link is not valid</h1><p>It was "
                         "already used, has expired, or never existed. Run <code>kachery hub login</code> "
                         "for a new one.</p></div>")
        session_token, _user = got
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(COOKIE, session_token, httponly=True, samesite="strict", max_age=12 * 3600)
        return resp

    async def logout(request: Request) -> Response:
        token = request.cookies.get(COOKIE)
        if token:
            state.end_session(token)
        resp = RedirectResponse("/", status_code=303)
        resp.delete_cookie(COOKIE)
        return resp

    async def ui_api(request: Request) -> Response:
        s = session(request)
        try:
            if s is None:
                raise NotAllowedError("not signed in")
            user, csrf = s
            if request.headers.get("x-kachery-csrf") != csrf:
                raise NotAllowedError("missing or wrong CSRF token; reload the page")
            try:
                body: Any = orjson.loads(await request.body())
            except orjson.JSONDecodeError:
                raise MalformedRequestError("body is not JSON") from None
            if not isinstance(body, dict):
                raise MalformedRequestError("body must be an object")
            now = int(time.time() * 1000)
            action = request.path_params["action"]
            if action == "create-channel":
                name = validate_channel_name(body.get("channel"))
                state.create_channel(name, user, None, now)
                hub.channel_created(name)
                return JSONResponse({"channel": name})
            if action == "grant":
                name = validate_channel_name(body.get("channel"))
                node, role = body.get("node"), body.get("role")
                if not isinstance(node, str) or role not in ROLES or not isinstance(body.get("granted"), bool):
                    raise MalformedRequestError("need node, role and granted (bool)")
                state.change_grant("grant" if body["granted"] else "revoke", name, node, [role], user, now)
                return JSONResponse(state.roles(name, node))
            raise MalformedRequestError(f"unknown action {action!r}")
        except ChannelProtocolError as exc:
            from .app import _refused

            return _refused(request, exc, s[0] if s else "")

    return [
        Route("/", home, methods=["GET"]),
        Route("/channels/{name}", channel_page, methods=["GET"]),
        Route("/login/{token}", login, methods=["GET"]),
        Route("/logout", logout, methods=["GET"]),
        Route("/ui/api/{action}", ui_api, methods=["POST"]),
    ]

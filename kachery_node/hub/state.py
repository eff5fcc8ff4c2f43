"""The hub's state: users, nodes, channels, nonces, sessions and activity, in SQLite under the
hub's directory, plus one signed membership feed per channel (kachery_feeds store).

Files under ``<hub dir>``:

* ``hub.key``   the hub's Ed25519 key (0600): signs tokens and upload URLs; its public half is
  the hub ID that every signed request names;
* ``hub.db``    this module's tables and the pending revocations of hub/revocations.py (WAL,
  0600: they hold a copy of the pub-sub service's secret); among the tables, ``token_floors``:
  when a node (or, ``node = ''``, a whole channel) last lost rights, so that the relay refuses
  tokens issued before that (:meth:`HubState.tokens_revoked_before`);
* ``feeds.db``  the channels' membership feeds (their keys never leave the hub);
* ``secrets/``  each channel's service secrets (0600, hub/backends.py);
* ``bucket/``   the embedded bucket's objects (and their index ``.index.db``, hub/object_index.py);
  ``hub.log`` the log.

The membership feed is the source of truth for roles: grants, revocations and role requests are
appended there first and the effective roles are computed by replaying it with the same
:class:`~kachery_node.protocol.membership.Membership` that nodes use. Restarting the hub loses nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

import kachery_feeds as kf

from ..identity import Keypair, load_or_create_key
from ..local_filesystem import require_local_filesystem
from ..protocol import membership as mb
from ..protocol.channel_errors import (
    ConflictError,
    NotAllowedError,
    ReplayedRequestError,
    UnknownChannelError,
    UnknownNodeError,
)
from ..protocol.channel_names import validate_channel_name
from ..protocol.hub_requests import MAX_SKEW_MS
from ..protocol.roles import validate_roles

LOGIN_TOKEN_TTL_MS = 5 * 60 * 1000
SESSION_TTL_MS = 12 * 3600 * 1000
DEFAULT_CONFIG = {"pubsub": {"backend": "embedded"}, "bucket": {"backend": "embedded"}}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (user_id TEXT PRIMARY KEY, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (node_id TEXT PRIMARY KEY, user_id TEXT NOT NULL,
    label TEXT NOT NULL, registered_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS channels (name TEXT PRIMARY KEY, owner_id TEXT NOT NULL,
    feed_id TEXT NOT NULL, config TEXT NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS nonces (signer TEXT NOT NULL, nonce TEXT NOT NULL,
    expires_ms INTEGER NOT NULL, PRIMARY KEY (signer, nonce));
CREATE INDEX IF NOT EXISTS nonces_expiry ON nonces (expires_ms);
CREATE TABLE IF NOT EXISTS login_tokens (token_hash TEXT PRIMARY KEY, user_id TEXT NOT NULL,
    expires_ms INTEGER NOT NULL, used INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS sessions (session_hash TEXT PRIMARY KEY, user_id TEXT NOT NULL,
    csrf TEXT NOT NULL, expires_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS activity (id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT,
    time_ms INTEGER NOT NULL, kind TEXT NOT NULL, actor TEXT, detail TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS activity_channel ON activity (channel, id);
CREATE TABLE IF NOT EXISTS token_floors (channel TEXT NOT NULL, node TEXT NOT NULL,
    decided_ms INTEGER NOT NULL, PRIMARY KEY (channel, node));
"""


SEEN_SAVE_INTERVAL_MS = 60_000


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def require_local_hub_dir(hub_dir: Path) -> None:
    """Refuse a hub directory on a network file system (its databases are WAL SQLite)."""
    require_local_filesystem(hub_dir, "the hub's databases (hub.db, feeds.db, bucket/.index.db)",
                             "Give `kachery hub serve --dir` (or KACHERY_HUB_DIR) a local directory")


@dataclass(frozen=True)
class Channel:
    """A channel as the hub records it."""

    name: str
    owner_id: str
    feed_id: str
    config: dict
    created_ms: int
    quota_bytes: int | None = None  # the owner's quota for the embedded bucket; None: hub default

    @property
    def membership_uri(self) -> str:
        return f"feed://{self.feed_id}/{mb.MEMBERSHIP_SUBFEED}"


class HubState:
    """Everything the hub knows. One instance per hub process (it caches memberships)."""

    def __init__(self, hub_dir: Path | str) -> None:
        self.dir = Path(hub_dir)
        require_local_hub_dir(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key: Keypair = load_or_create_key(self.dir / "hub.key")[0]
        self.hub_id = self.key.public_hex
        db_path = self.dir / "hub.db"
        # Private to the hub's user: sessions, and pending revocations with the service's secret
        # (hub/revocations.py). SQLite gives the -wal and -shm files the database file's mode.
        os.close(os.open(db_path, os.O_WRONLY | os.O_CREAT, 0o600))
        for path in (db_path, db_path.with_name("hub.db-wal"), db_path.with_name("hub.db-shm")):
            if path.exists():
                path.chmod(0o600)
        self.db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self.feeds = kf.open_store(self.dir / "feeds.db")
        # (channel, node or '') -> decided_ms: read on every relay auth, so kept in memory too.
        self._floors: dict[tuple[str, str], int] = {
            (r["channel"], r["node"]): r["decided_ms"] for r in self.db.execute("SELECT * FROM token_floors")}
        self._memberships: dict[str, mb.Membership] = {}
        columns = {r["name"] for r in self.db.execute("PRAGMA table_info(nodes)")}
        if "last_seen_ms" not in columns:  # hub.db from before last-seen times
            self.db.execute("ALTER TABLE nodes ADD COLUMN last_seen_ms INTEGER")
        if "quota_bytes" not in {r["name"] for r in self.db.execute("PRAGMA table_info(channels)")}:
            # hub.db from before quotas: NULL is "the hub's default" (hub serve --channel-quota)
            self.db.execute("ALTER TABLE channels ADD COLUMN quota_bytes INTEGER")
        # node -> last signed request (every connected daemon asks for its membership every
        # 10 s); written to hub.db at most every SEEN_SAVE_INTERVAL_MS, so a restarted hub
        # still knows roughly when each node was last there.
        self._seen: dict[str, int] = {}
        self._seen_saved: dict[str, int] = {}
        # Called with (channel, node or None) after roles may have shrunk; the hub narrows live
        # relay connections with it.
        self.on_roles_changed: Callable[[str, str | None], None] = lambda channel, node: None

    def close(self) -> None:
        self.db.close()
        self.feeds.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ------------------------------------------------------------------ replay protection
    def use_nonce(self, signer: str, nonce: str, now_ms: int) -> None:
        """Record (signer, nonce) for the replay window; raise if it was seen.

        Kept in SQLite, so a restart does not reopen the window.
        """
        with self._tx() as c:
            c.execute("DELETE FROM nonces WHERE expires_ms < ?", (now_ms,))
            try:
                c.execute("INSERT INTO nonces VALUES (?,?,?)", (signer, nonce, now_ms + 2 * MAX_SKEW_MS))
            except sqlite3.IntegrityError:
                raise ReplayedRequestError("this request (nonce) was already used") from None

    # ------------------------------------------------------------------ users and nodes
    def ensure_user(self, user_id: str, now_ms: int) -> None:
        self.db.execute("INSERT OR IGNORE INTO users VALUES (?,?)", (user_id, now_ms))

    def user_exists(self, user_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM users WHERE user_id=?", (user_id,)).fetchone() is not None

    def register_node(self, node_id: str, user_id: str, label: str, now_ms: int) -> bool:
        """Register ``node_id`` to ``user_id``; returns False if it already was (idempotent)."""
        with self._tx() as c:
            c.execute("INSERT OR IGNORE INTO users VALUES (?,?)", (user_id, now_ms))
            row = c.execute("SELECT user_id FROM nodes WHERE node_id=?", (node_id,)).fetchone()
            if row is not None:
                if row["user_id"] != user_id:
                    raise ConflictError("this node is registered to another user")
                c.execute("UPDATE nodes SET label=? WHERE node_id=?", (label, node_id))
                return False
            c.execute("INSERT INTO nodes (node_id, user_id, label, registered_ms) VALUES (?,?,?,?)",
                      (node_id, user_id, label, now_ms))
            return True

    def node_owner(self, node_id: str) -> str:
        """The user a registered node belongs to; raise :class:`UnknownNodeError` otherwise."""
        row = self.db.execute(
            "SELECT n.user_id FROM nodes n JOIN users u ON u.user_id = n.user_id WHERE n.node_id=?",
            (node_id,)).fetchone()
        if row is None:
            raise UnknownNodeError(f"node {node_id[:12]}… is not registered on this hub "
                                   "(run `kachery node join` as its owner)")
        return row["user_id"]

    def nodes_of_user(self, user_id: str) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM nodes WHERE user_id=? ORDER BY registered_ms",
                               (user_id,)).fetchall()
        return [dict(r) for r in rows]

    def node_label(self, node_id: str) -> str:
        row = self.db.execute("SELECT label FROM nodes WHERE node_id=?", (node_id,)).fetchone()
        return row["label"] if row else ""

    # ------------------------------------------------------------------ channels
    def create_channel(self, name: str, owner_id: str, config: dict | None, now_ms: int,
                       quota_bytes: int | None = None) -> Channel:
        validate_channel_name(name)
        config = dict(config or DEFAULT_CONFIG)
        if self.db.execute("SELECT 1 FROM channels WHERE name=?", (name,)).fetchone():
            raise ConflictError(f"channel {name!r} already exists")
        feed = self.feeds.create_feed()
        feed.load_subfeed(mb.MEMBERSHIP_SUBFEED).append_message(
            mb.channel_message(name, owner_id, config, now_ms))
        try:
            with self._tx() as c:
                c.execute("INSERT OR IGNORE INTO users VALUES (?,?)", (owner_id, now_ms))
                c.execute("INSERT INTO channels (name, owner_id, feed_id, config, created_ms, quota_bytes)"
                          " VALUES (?,?,?,?,?,?)",
                          (name, owner_id, feed.feed_id, orjson.dumps(config).decode(), now_ms, quota_bytes))
        except sqlite3.IntegrityError:
            feed.delete()
            raise ConflictError(f"channel {name!r} already exists") from None
        self.log(name, "create", owner_id, f"channel created by {owner_id[:12]}…", now_ms)
        return self.channel(name)

    def channel(self, name: str) -> Channel:
        row = self.db.execute("SELECT * FROM channels WHERE name=?", (name,)).fetchone()
        if row is None:
            raise UnknownChannelError(f"no channel named {name!r} on this hub")
        return Channel(row["name"], row["owner_id"], row["feed_id"], orjson.loads(row["config"]),
                       row["created_ms"], row["quota_bytes"])

    def channels(self, owner_id: str | None = None) -> list[Channel]:
        if owner_id is None:
            rows = self.db.execute("SELECT name FROM channels ORDER BY name").fetchall()
        else:
            rows = self.db.execute("SELECT name FROM channels WHERE owner_id=? ORDER BY name",
                                   (owner_id,)).fetchall()
        return [self.channel(r["name"]) for r in rows]

    def channels_of_node(self, node_id: str) -> list[str]:
        return [c.name for c in self.channels() if node_id in self.membership(c.name).nodes()]

    def require_owner(self, name: str, user_id: str) -> Channel:
        ch = self.channel(name)
        if ch.owner_id != user_id:
            raise NotAllowedError(f"only the owner of channel {name!r} may do this")
        return ch

    def configure_channel(self, name: str, config: dict, by: str, now_ms: int) -> None:
        """The owner changes the channel's backends (a ``config`` message, then the row)."""
        ch = self.require_owner(name, by)
        self._append(ch, mb.config_message(config, by, now_ms))
        self.db.execute("UPDATE channels SET config=? WHERE name=?", (orjson.dumps(config).decode(), name))
        if config.get("pubsub") != ch.config.get("pubsub"):
            self._revoke_tokens(name, None, now_ms)  # the relay's tokens belong to the old service
        self.log(name, "config", by, f"backends: pub-sub {config['pubsub']['backend']}, "
                 f"bucket {config['bucket']['backend']}", now_ms)

    def set_quota(self, name: str, quota_bytes: int | None, by: str, now_ms: int) -> None:
        """The owner sets the channel's quota on the embedded bucket (None: the hub's default)."""
        self.require_owner(name, by)
        self.db.execute("UPDATE channels SET quota_bytes=? WHERE name=?", (quota_bytes, name))
        what = "the hub's default" if quota_bytes is None else f"{quota_bytes} bytes"
        self.log(name, "quota", by, f"bucket quota set to {what}", now_ms)

    def delete_channel(self, name: str, by: str, now_ms: int) -> None:
        ch = self.require_owner(name, by)
        self._append(ch, mb.delete_message(by, now_ms))
        self.db.execute("DELETE FROM channels WHERE name=?", (name,))
        self._memberships.pop(name, None)
        self.log(name, "delete", by, "channel deleted", now_ms)
        self._revoke_tokens(name, None, now_ms)  # also against a new channel of the same name
        self.on_roles_changed(name, None)

    # ------------------------------------------------------------------ membership
    def _subfeed(self, ch: Channel) -> kf.Subfeed:
        return self.feeds.load_feed(ch.feed_id).load_subfeed(mb.MEMBERSHIP_SUBFEED)

    def membership(self, name: str) -> mb.Membership:
        """The replayed membership of a channel (cached, extended as messages are appended)."""
        ch = self.channel(name)
        m = self._memberships.get(name)
        sf = self._subfeed(ch)
        if m is None or m.owner != ch.owner_id:
            m = mb.Membership(name)
        for payload in sf.get_messages(m.num_messages):
            m.apply(payload)
        self._memberships[name] = m
        return m

    def _append(self, ch: Channel, msg: dict) -> None:
        self._subfeed(ch).append_message(msg)

    def request_roles(self, name: str, node_id: str, user_id: str, roles: list[str], now_ms: int) -> None:
        """The node's owner sets the roles the node asks for (``[]``: the node leaves)."""
        ch = self.channel(name)
        if self.node_owner(node_id) != user_id:
            raise NotAllowedError("only the node's owner may say which roles it asks for")
        roles = validate_roles(roles)
        before = self.membership(name).roles_of(node_id)
        self._append(ch, mb.request_message(node_id, user_id, roles, now_ms))
        what = f"requests {' '.join(roles)}" if roles else "left the channel"
        self.log(name, "request", user_id, f"node {self._node_name(node_id)} {what}", now_ms)
        self._notify_if_narrowed(name, node_id, before, now_ms)

    def change_grant(self, kind: str, name: str, node_id: str, roles: list[str], by: str,
                     now_ms: int) -> None:
        """The channel owner grants or revokes roles of a registered node."""
        ch = self.require_owner(name, by)
        self.node_owner(node_id)  # unknown nodes cannot be granted anything
        roles = validate_roles(roles)
        if not roles:
            return
        before = self.membership(name).roles_of(node_id)
        self._append(ch, mb.grant_message(kind, node_id, roles, by, now_ms))
        verb = "granted" if kind == "grant" else "revoked"
        self.log(name, kind, by, f"{verb} {' '.join(roles)} for node {self._node_name(node_id)}", now_ms)
        self._notify_if_narrowed(name, node_id, before, now_ms)

    def _notify_if_narrowed(self, name: str, node_id: str, before: list[str], now_ms: int) -> None:
        """If the node lost an effective role, refuse its tokens issued until now and call
        :attr:`on_roles_changed` (a node that gains roles gets them with its next credentials;
        nothing to cut)."""
        if set(before) - set(self.membership(name).roles_of(node_id)):
            self._revoke_tokens(name, node_id, now_ms)
            self.on_roles_changed(name, node_id)

    # ------------------------------------------------------------------ token floors
    def _revoke_tokens(self, name: str, node_id: str | None, now_ms: int) -> None:
        """Record that ``node_id``'s (None: every node's) relay tokens for ``name`` issued until
        ``now_ms`` lose their rights. Kept in ``hub.db``: a restart must not revive them."""
        node = node_id or ""
        floor = max(now_ms, self.tokens_revoked_before(name, node_id))
        self.db.execute("INSERT INTO token_floors VALUES (?,?,?) ON CONFLICT (channel, node) DO UPDATE"
                        " SET decided_ms = MAX(decided_ms, excluded.decided_ms)", (name, node, floor))
        self._floors[(name, node)] = floor

    def tokens_revoked_before(self, name: str, node_id: str | None) -> int:
        """The time (ms) of the last decision that took rights on ``name`` from ``node_id`` or
        from the whole channel (0 if none): tokens issued at or before it must be refused.
        Token issuers issue after it (:func:`~kachery_node.hub.app._pubsub_token`)."""
        whole = self._floors.get((name, ""), 0)
        return whole if node_id is None else max(whole, self._floors.get((name, node_id), 0))

    def roles(self, name: str, node_id: str) -> dict[str, list[str]]:
        m = self.membership(name)
        return {"granted": m.granted(node_id), "requested": m.requested(node_id),
                "effective": m.roles_of(node_id)}

    def members(self, name: str) -> list[dict[str, Any]]:
        m = self.membership(name)
        return [{"node": n, "label": self.node_label(n), "owner": m.node_owner(n),
                 **self.roles(name, n)} for n in m.nodes()]

    def membership_segment(self, name: str, start: int) -> tuple[bytes, int]:
        """Signed membership messages from ``start`` (wire form) and the total count."""
        sf = self._subfeed(self.channel(name))
        total = sf.get_num_local_messages()
        lines = sf.get_signed_messages(start) if start < total else []
        return kf.encode_segment(lines), total

    def _node_name(self, node_id: str) -> str:
        label = self.node_label(node_id)
        return f"{label} ({node_id[:8]}…)" if label else f"{node_id[:12]}…"

    # ------------------------------------------------------------------ presence
    def note_seen(self, node_id: str, now_ms: int) -> None:
        """Record a verified request from ``node_id`` (cheap: memory, and hub.db now and then)."""
        self._seen[node_id] = now_ms
        if now_ms - self._seen_saved.get(node_id, 0) >= SEEN_SAVE_INTERVAL_MS:
            self._seen_saved[node_id] = now_ms
            self.db.execute("UPDATE nodes SET last_seen_ms=? WHERE node_id=?", (now_ms, node_id))

    def last_seen(self, node_id: str) -> int | None:
        """When ``node_id`` last made a signed request to this hub (ms), or None if never."""
        if node_id in self._seen:
            return self._seen[node_id]
        row = self.db.execute("SELECT last_seen_ms FROM nodes WHERE node_id=?", (node_id,)).fetchone()
        return row["last_seen_ms"] if row else None

    # ------------------------------------------------------------------ activity
    def log(self, channel: str | None, kind: str, actor: str | None, detail: str, now_ms: int) -> None:
        self.db.execute("INSERT INTO activity (channel, time_ms, kind, actor, detail) VALUES (?,?,?,?,?)",
                        (channel, now_ms, kind, actor, detail))

    def activity(self, channel: str, limit: int = 50) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM activity WHERE channel=? ORDER BY id DESC LIMIT ?",
                               (channel, limit)).fetchall()
        return [dict(r) for r in rows]

    def grouped_activity(self, channel: str, groups: int = 30, scan: int = 2000) -> list[dict[str, Any]]:
        """The newest entries, newest first, with runs of the same entry by the same actor
        (numbers aside: "1 upload URL(s)", "3 upload URL(s)") folded into one (``count``,
        ``first_ms``; ``detail`` is the newest one's): a node's token renewals and upload-URL
        requests would otherwise push everything else off the page."""
        def shape(row: Any) -> tuple:
            return row["kind"], row["actor"], re.sub(r"\d+", "#", row["detail"] or "")

        out: list[dict[str, Any]] = []
        for row in self.activity(channel, scan):
            last = out[-1] if out else None
            if last is not None and shape(last) == shape(row):
                last["count"] += 1
                last["first_ms"] = row["time_ms"]
                continue
            if len(out) == groups:
                break
            out.append({**row, "count": 1, "first_ms": row["time_ms"]})
        return out

    # ------------------------------------------------------------------ web sign-in
    def create_login_token(self, user_id: str, now_ms: int) -> str:
        token = secrets.token_urlsafe(32)
        self.db.execute("INSERT INTO login_tokens VALUES (?,?,?,0)",
                        (_hash(token), user_id, now_ms + LOGIN_TOKEN_TTL_MS))
        return token

    def redeem_login_token(self, token: str, now_ms: int) -> tuple[str, str] | None:
        """Use a one-time login token; returns (session token, user_id) or None if invalid."""
        with self._tx() as c:
            row = c.execute("SELECT * FROM login_tokens WHERE token_hash=?", (_hash(token),)).fetchone()
            if row is None or row["used"] or row["expires_ms"] < now_ms:
                return None
            c.execute("UPDATE login_tokens SET used=1 WHERE token_hash=?", (_hash(token),))
            session = secrets.token_urlsafe(32)
            c.execute("INSERT INTO sessions VALUES (?,?,?,?)",
                      (_hash(session), row["user_id"], secrets.token_urlsafe(24), now_ms + SESSION_TTL_MS))
        return session, row["user_id"]

    def session(self, session: str | None, now_ms: int) -> tuple[str, str] | None:
        """(user_id, csrf token) of a live session, or None."""
        if not session:
            return None
        row = self.db.execute("SELECT * FROM sessions WHERE session_hash=?", (_hash(session),)).fetchone()
        if row is None or row["expires_ms"] < now_ms or not self.user_exists(row["user_id"]):
            return None
        return row["user_id"], row["csrf"]

    def end_session(self, session: str) -> None:
        self.db.execute("DELETE FROM sessions WHERE session_hash=?", (_hash(session),))

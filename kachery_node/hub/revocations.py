"""Telling an external pub-sub service that a node lost roles, so that it drops the node now.

Why a queue: the embedded relay is narrowed synchronously, inside the request that revoked (it is
in-process). An external service is reached over the network (Ably's ``revokeTokens``), which
must neither block the hub's event loop nor make the owner's revocation fail when the service is
slow or down: the membership feed already says the node lost the role, and providers check it.
So revocations are queued and sent by one background task, each in a worker thread with a
deadline; the outcome is logged and shown in the channel's activity.

Why durable: a revocation that is queued is a row of ``hub.db`` until the service confirms it, so
a hub killed (or a service down) in between does not lose it: it is retried with a growing delay,
also after a restart, until the credentials it targets have expired anyway (decision time plus
the token lifetime), when it no longer matters. The row keeps the service's spec and secret as
they were at the decision, because the channel may have been deleted or moved to another service
since; ``hub.db`` is therefore private to the hub's user (0600, see :mod:`.state`).

Services that cannot revoke (NATS with the account key only: changing an account's revocation
list needs the operator's key) keep honouring a node's credentials until they expire
(``kachery hub serve --token-ttl``); the activity says so.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
import trio

from ..transport.pubsub.pubsub_interface import PubSubBackend
from .state import HubState

log = logging.getLogger("kachery.hub")
REVOCATION_TIMEOUT_S = 15.0
RETRY_MIN_S = 1.0
RETRY_MAX_S = 60.0
CLOCK_MARGIN_MS = 60_000  # a service's clock may run behind ours when it judges expiry

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending_revocations (id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL, node TEXT NOT NULL, spec TEXT NOT NULL, secret TEXT NOT NULL,
    decided_ms INTEGER NOT NULL, moot_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_ms INTEGER NOT NULL);
"""

# Builds the service's client from the channel's public pub-sub spec and its secret.
BackendFactory = Callable[[dict, dict], PubSubBackend]


@dataclass(frozen=True)
class Revocation:
    """One node's credentials to cut on one service (a row of ``pending_revocations``)."""

    id: int
    channel: str
    node: str
    spec: dict
    secret: dict
    decided_ms: int  # credentials issued before this lose their rights
    moot_ms: int  # all of them have expired by then: nothing left to revoke
    attempts: int


class RevocationQueue:
    """Revocations waiting for :meth:`run` (started with the server) to send them."""

    def __init__(self, state: HubState, make_backend: BackendFactory) -> None:
        self._state = state
        self._db: sqlite3.Connection = state.db
        self._db.executescript(_SCHEMA)
        self._make_backend = make_backend
        self._wake = trio.Event()
        self._closed = False
        self._scope: trio.CancelScope | None = None

    def put(self, channel: str, spec: dict, secret: dict, nodes: list[str], token_ttl_ms: int) -> None:
        """Queue ``nodes``' revocation on the service that ``spec`` names (never blocks): their
        credentials issued until now lose their rights. Written to ``hub.db`` before returning."""
        if (spec or {}).get("backend", "embedded") == "embedded" or not nodes:
            return  # the embedded relay is narrowed in-process already
        now = int(time.time() * 1000)
        rows = [(channel, node, orjson.dumps(spec).decode(), orjson.dumps(secret).decode(),
                 now, now + token_ttl_ms + CLOCK_MARGIN_MS, now) for node in nodes]
        self._db.executemany("INSERT INTO pending_revocations (channel, node, spec, secret, decided_ms,"
                             " moot_ms, next_ms) VALUES (?,?,?,?,?,?,?)", rows)
        self._wake.set()

    def pending(self) -> list[Revocation]:
        """Revocations not yet confirmed, oldest first."""
        rows = self._db.execute("SELECT * FROM pending_revocations ORDER BY id").fetchall()
        return [_revocation(r) for r in rows]

    def close(self) -> None:
        """The hub is shutting down: stop sending (what is pending is sent after the restart)."""
        self._closed = True
        if self._scope is not None:
            self._scope.cancel()

    async def run(self) -> None:
        """Send pending revocations, oldest first, retrying failures, until :meth:`close`.
        Those left by an earlier run are tried again at once."""
        self._db.execute("UPDATE pending_revocations SET next_ms = MIN(next_ms, ?)",
                         (int(time.time() * 1000),))
        with trio.CancelScope() as self._scope:
            while not self._closed:
                self._wake = trio.Event()
                now = int(time.time() * 1000)
                due = self._db.execute("SELECT * FROM pending_revocations WHERE next_ms <= ? ORDER BY id"
                                       " LIMIT 1", (now,)).fetchone()
                if due is not None:
                    await self._send(_revocation(due))
                    continue
                nxt = self._db.execute("SELECT MIN(next_ms) FROM pending_revocations").fetchone()[0]
                with trio.move_on_after(RETRY_MAX_S if nxt is None else max(0.0, (nxt - now) / 1000)):
                    await self._wake.wait()

    async def _send(self, r: Revocation) -> None:
        short = f"{r.node[:12]}…"
        name = r.spec.get("backend", "?")
        now = int(time.time() * 1000)
        if now >= r.moot_ms:
            self._finish(r, f"{name}: node {short}'s credentials from before the revocation have "
                            "expired; nothing left to revoke")
            return
        try:
            backend = self._make_backend(r.spec, r.secret)
            with trio.fail_after(REVOCATION_TIMEOUT_S):
                done = await trio.to_thread.run_sync(backend.revoke_node, r.node, r.decided_ms,
                                                     abandon_on_cancel=True)
        except Exception as exc:  # a service down or refusing: retry until the credentials expire
            delay = min(RETRY_MIN_S * 2 ** r.attempts, RETRY_MAX_S)
            self._db.execute("UPDATE pending_revocations SET attempts=?, next_ms=? WHERE id=?",
                             (r.attempts + 1, now + int(delay * 1000), r.id))
            log.warning("%s: could not make %s drop node %s (attempt %d, retrying in %.0f s): %s",
                        r.channel, name, short, r.attempts + 1, delay, exc)
            if r.attempts == 0:  # one line in the activity, not one per retry
                self._state.log(r.channel, "revoke_credentials", None,
                                f"{name} could not revoke node {short}'s credentials yet: {exc}; "
                                "the hub retries until they expire", now)
            return
        if done:
            log.info("%s: %s revoked node %s's credentials", r.channel, name, short)
            self._finish(r, f"{name} revoked node {short}'s credentials")
        else:
            self._finish(r, f"{name} keeps node {short}'s credentials until they expire "
                            "(it cannot revoke them)")

    def _finish(self, r: Revocation, detail: str) -> None:
        self._db.execute("DELETE FROM pending_revocations WHERE id=?", (r.id,))
        self._state.log(r.channel, "revoke_credentials", None, detail, int(time.time() * 1000))


def _revocation(row: sqlite3.Row) -> Revocation:
    return Revocation(row["id"], row["channel"], row["node"], orjson.loads(row["spec"]),
                      orjson.loads(row["secret"]), row["decided_ms"], row["moot_ms"], row["attempts"])

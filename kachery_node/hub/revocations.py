"""Telling an external pub-sub service that a node lost roles, so that it drops the node now.

Why a queue: the embedded relay is narrowed synchronously, inside the request that revoked (it is
in-process). An external service is reached over the network (Ably's ``revokeTokens``), which
must neither block the hub's event loop nor make the owner's revocation fail when the service is
slow or down: the membership feed already says the node lost the role, and providers check it.
So revocations are queued and sent by one background task, each in a worker thread with a
deadline; the outcome is logged and shown in the channel's activity.

Services that cannot revoke (NATS with the account key only: changing an account's revocation
list needs the operator's key) keep honouring a node's credentials until they expire
(``kachery hub serve --token-ttl``); the activity says so.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import trio

from ..pubsub.base import PubSubBackend
from .state import HubState

log = logging.getLogger("kachery.hub")
REVOCATION_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Revocation:
    channel: str
    backend: PubSubBackend
    node: str
    decided_ms: int  # credentials issued before this lose their rights


class RevocationQueue:
    """Revocations waiting for :meth:`run` (started with the server) to send them."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[Revocation](math.inf)
        self._scope: trio.CancelScope | None = None

    def put(self, channel: str, backend: PubSubBackend, nodes: list[str]) -> None:
        """Queue ``nodes``' revocation on ``backend`` (an external service; never blocks): their
        credentials issued until now lose their rights."""
        if backend.name == "embedded":
            return  # narrowed in-process already
        now = int(time.time() * 1000)
        for node in nodes:
            self._send.send_nowait(Revocation(channel, backend, node, now))

    def close(self, grace_s: float = 5.0) -> None:
        """No more revocations: :meth:`run` sends those already queued, for at most ``grace_s``
        (the hub is shutting down; a revocation not sent still ends with the token's life)."""
        self._send.close()
        if self._scope is not None:
            self._scope.deadline = min(self._scope.deadline, trio.current_time() + grace_s)

    async def run(self, state: HubState) -> None:
        """Send queued revocations one at a time, until :meth:`close` (or cancelled)."""
        with trio.CancelScope() as self._scope:
            await self._send_all(state)

    async def _send_all(self, state: HubState) -> None:
        async for r in self._receive:
            short = f"{r.node[:12]}…"
            try:
                with trio.fail_after(REVOCATION_TIMEOUT_S):
                    done = await trio.to_thread.run_sync(r.backend.revoke_node, r.node, r.decided_ms,
                                                         abandon_on_cancel=True)
            except Exception as exc:  # a service down or refusing: the token expiry still bounds it
                log.warning("%s: could not make %s drop node %s: %s", r.channel, r.backend.name, short, exc)
                detail = f"{r.backend.name} could not revoke node {short}'s credentials: {exc}"
            else:
                if done:
                    log.info("%s: %s revoked node %s's credentials", r.channel, r.backend.name, short)
                    detail = f"{r.backend.name} revoked node {short}'s credentials"
                else:
                    detail = (f"{r.backend.name} keeps node {short}'s credentials until they expire "
                              "(it cannot revoke them)")
            state.log(r.channel, "revoke_credentials", None, detail, int(time.time() * 1000))

"""A channel's membership as a signed feed, and the verifier that replays it.

Theory of operation
-------------------
The hub holds one feed per channel (its key never leaves the hub) and appends every change to
the subfeed named ``"membership"``. Nodes import that subfeed with kachery_feeds, which checks
every signature and the hash chain, then replay it with :class:`Membership` to decide who may
do what, without trusting the transport or the hub's HTTP answers (fixing the original's
unsigned rosters, original-protocol §5.2, §10.12). The feed ID is handed to a node when it
joins, so the node knows which key to trust.

Messages (JSON payloads, in order):

=========== ====================================================================================
``channel`` first message: ``{"type": "channel", "channel", "owner", "config", "time_ms"}``
``request`` a node's owner sets the roles the node asks for (the whole set; ``[]`` = left):
            ``{"type": "request", "node", "owner", "roles", "time_ms"}``
``grant``   the channel owner adds roles: ``{"type": "grant", "node", "roles", "by", "time_ms"}``
``revoke``  the channel owner removes roles: same fields as ``grant``
``config``  the channel's backends changed: ``{"type": "config", "config", "by", "time_ms"}``
``delete``  the channel was deleted; nothing after it counts: ``{"type": "delete", "by", ...}``
=========== ====================================================================================

Effective roles of a node = granted ∩ requested.
"""

from __future__ import annotations

from typing import Any

from ..errors import KacheryError, RemoteProtocolError
from .roles import effective_roles, validate_roles

MEMBERSHIP_SUBFEED = "membership"


class MembershipError(RemoteProtocolError):
    """The membership feed holds a message that does not follow the rules above (the peer's
    fault: whoever wrote or served the feed)."""


def channel_message(channel: str, owner: str, config: dict, time_ms: int) -> dict:
    return {"type": "channel", "channel": channel, "owner": owner, "config": config, "time_ms": time_ms}


def request_message(node: str, owner: str, roles: list[str], time_ms: int) -> dict:
    return {"type": "request", "node": node, "owner": owner, "roles": validate_roles(roles),
            "time_ms": time_ms}


def grant_message(kind: str, node: str, roles: list[str], by: str, time_ms: int) -> dict:
    """A ``grant`` or ``revoke`` message (``kind``)."""
    assert kind in ("grant", "revoke")
    return {"type": kind, "node": node, "roles": validate_roles(roles), "by": by, "time_ms": time_ms}


def config_message(config: dict, by: str, time_ms: int) -> dict:
    return {"type": "config", "config": config, "by": by, "time_ms": time_ms}


def delete_message(by: str, time_ms: int) -> dict:
    return {"type": "delete", "by": by, "time_ms": time_ms}


class Membership:
    """The state of a channel's membership after replaying its messages.

    Example::

        m = Membership.from_subfeed(store.load_subfeed(f"feed://{feed_id}/membership"), "lab")
        m.may(node_id, "provide-files")   # -> bool
    """

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.owner: str | None = None
        self.config: dict = {}
        self.deleted = False
        self.num_messages = 0
        self._granted: dict[str, set[str]] = {}
        self._requested: dict[str, set[str]] = {}
        self._node_owner: dict[str, str] = {}

    # -------------------------------------------------------------- building
    @classmethod
    def from_payloads(cls, channel: str, payloads: list[Any]) -> Membership:
        m = cls(channel)
        for p in payloads:
            m.apply(p)
        return m

    @classmethod
    def from_subfeed(cls, subfeed: Any, channel: str) -> Membership:
        """Replay a (verified) kachery_feeds subfeed."""
        return cls.from_payloads(channel, subfeed.get_messages())

    def apply(self, msg: Any) -> None:
        """Apply the next message; raise :class:`MembershipError` if it breaks the rules."""
        n = self.num_messages
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise MembershipError(f"membership message {n} is not an object with a type")
        kind = msg["type"]
        if n == 0:
            owner = msg.get("owner")
            if kind != "channel" or msg.get("channel") != self.channel or not isinstance(owner, str):
                raise MembershipError(
                    f"membership feed does not start with a 'channel' message for {self.channel!r}")
            config = msg.get("config")
            if config is not None and not isinstance(config, dict):
                raise MembershipError("membership message 0: config must be an object")
            self.owner = msg["owner"]
            self.config = dict(config or {})
        elif self.deleted:
            raise MembershipError(f"membership message {n} follows the channel's deletion")
        elif kind == "request":
            node, owner = self._node_field(msg, n), msg.get("owner")
            if not isinstance(owner, str):
                raise MembershipError(f"membership message {n}: request lacks the node's owner")
            self._requested[node] = set(self._roles_field(msg, n))
            self._node_owner[node] = owner
        elif kind in ("grant", "revoke"):
            node = self._node_field(msg, n)
            self._check_by(msg, n)
            roles = set(self._roles_field(msg, n))
            current = self._granted.setdefault(node, set())
            if kind == "grant":
                current |= roles
            else:
                current -= roles
        elif kind == "config":
            self._check_by(msg, n)
            if not isinstance(msg.get("config"), dict):
                raise MembershipError(f"membership message {n}: config must be an object")
            self.config = dict(msg["config"])
        elif kind == "delete":
            self._check_by(msg, n)
            self.deleted = True
        else:
            raise MembershipError(f"membership message {n} has unknown type {kind!r}")
        self.num_messages += 1

    def _node_field(self, msg: dict, n: int) -> str:
        node = msg.get("node")
        if not isinstance(node, str) or len(node) != 64:
            raise MembershipError(f"membership message {n}: node must be a 64-hex node ID")
        return node

    def _roles_field(self, msg: dict, n: int) -> list[str]:
        try:
            return validate_roles(msg.get("roles"))
        except KacheryError as exc:
            raise MembershipError(f"membership message {n}: {exc}") from None

    def _check_by(self, msg: dict, n: int) -> None:
        if msg.get("by") != self.owner:
            raise MembershipError(f"membership message {n} was not made by the channel owner")

    # -------------------------------------------------------------- questions
    def granted(self, node: str) -> list[str]:
        return validate_roles(self._granted.get(node, set()))

    def requested(self, node: str) -> list[str]:
        return validate_roles(self._requested.get(node, set()))

    def node_owner(self, node: str) -> str | None:
        return self._node_owner.get(node)

    def roles_of(self, node: str) -> list[str]:
        """The node's effective roles (none once the channel is deleted)."""
        if self.deleted:
            return []
        return effective_roles(self._granted.get(node, ()), self._requested.get(node, ()))

    def may(self, node: str, role: str) -> bool:
        """True if ``node`` may act in ``role`` on this channel."""
        return role in self.roles_of(node)

    def nodes(self) -> list[str]:
        """Every node that was ever granted roles or asked for them."""
        return sorted(set(self._granted) | set(self._requested))


def import_segment(store: Any, feed_id: str, segment: bytes) -> Any:
    """Verify and store a membership segment (kachery_feeds wire form); return the subfeed.

    Raises kachery_feeds' VerificationError if any message is not signed by ``feed_id``.
    """
    import kachery_feeds as kf

    subfeed = store.load_feed(feed_id).load_subfeed(MEMBERSHIP_SUBFEED)
    lines = kf.decode_segment(segment) if segment else []
    if lines:
        subfeed.add_signed_messages(lines)
    return subfeed

"""The pub-sub interfaces: what the hub needs to hand out credentials, and what a node needs
to publish and subscribe. Backends: ``embedded`` (the hub's WebSocket relay, this package),
``ably`` (token requests with capabilities) and ``nats`` (per-node user JWTs), chosen by the
channel's config ``{"pubsub": {"backend": ...}}`` without changing protocol code.

Messages are bytes (pub-sub v2): a node publishes its signed node messages
(spec/node-protocol.md) as they are, and receives them as they were sent; every backend carries
them natively (binary frames on the embedded relay, NATS payloads, Ably binary data).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio


@dataclass(frozen=True)
class PubSubMessage:
    """A message received on a band: its bytes, who published it (the node ID the service
    vouches for: the relay's token check, the NATS subject, Ably's client ID) and when (the
    service's clock, or the receiver's)."""

    band: str
    sender: str
    data: bytes
    ts_ms: int


class PubSubBackend(ABC):
    """Hub side: turns a node's effective capability into short-lived credentials.

    ``credentials`` returns a JSON object that the node passes to :func:`open_pubsub`; it always
    has ``backend``, ``capability`` and ``expires_ms``. For Ably it carries an Ably token
    request made with the channel's API key and the same capability object.
    """

    name: str

    @abstractmethod
    def credentials(self, *, node_id: str, channel: str, capability: dict[str, list[str]],
                    now_ms: int, ttl_ms: int) -> dict[str, Any]:
        """Credentials allowing exactly ``capability`` until ``now_ms + ttl_ms``."""

    def revoke_node(self, node_id: str, issued_before_ms: int) -> bool:
        """Make the service drop ``node_id``'s credentials issued before ``issued_before_ms`` (when
        the hub decided; later ones already carry the narrower rights). Blocking: the hub runs it
        in a worker thread. False if the service cannot: the node's credentials then stay valid
        until they expire, and only the providers' checks of the signed membership stand in its
        way meanwhile."""
        return False


# A coroutine the client calls to get fresh credentials before the old ones expire (like Ably's
# authCallback).
Renewer = Callable[[], Awaitable[dict[str, Any]]]

#: A connection renews its credentials once this fraction of what was left of their life has
#: passed: early enough for a slow hub to answer, late enough not to ask often.
RENEW_AT_FRACTION = 0.8


async def renew_before_expiry(credentials: Callable[[], dict[str, Any]],
                              renew: Callable[[], Awaitable[object]]) -> None:
    """A connection's renewal task, run beside it until cancelled: each time
    :data:`RENEW_AT_FRACTION` of the time left before the current ``credentials()`` expire
    (``expires_ms``) has passed, ``renew()`` (which replaces them). An error ends the task and
    its nursery: the connection's owner reconnects with fresh credentials."""
    while True:
        left_s = (credentials()["expires_ms"] - time.time() * 1000) / 1000
        await trio.sleep(max(left_s * RENEW_AT_FRACTION, 0.05))
        await renew()


class PubSub(ABC):
    """Node side: one connection to a channel's pub-sub service."""

    #: Set by the consumer to take messages as they are received, in the client's reader, while
    #: none waits in the queue (True: handled, not queued); see ``ReceivedQueue``.
    handle_at_once: Callable[[PubSubMessage], bool] | None = None

    def queued(self) -> int:
        """How many received messages wait to be read from :meth:`messages`."""
        return 0

    @abstractmethod
    async def publish(self, band: str, data: bytes, *, ack: bool = False) -> None:
        """Publish ``data`` on ``band`` (full band name); with ``ack``, wait until the service
        took it (or refused it: HubRequestError)."""

    @abstractmethod
    async def subscribe(self, band: str, *, echo: bool = True) -> None:
        """Start receiving messages from ``band``; returns once the service confirmed.

        ``echo=False`` asks the service not to send this connection's own publications on
        ``band`` back to it. Only the embedded relay can; NATS (whose ``no_echo`` is per
        connection) and Ably send them anyway, so a receiver must still tolerate its own
        messages."""

    @abstractmethod
    async def unsubscribe(self, band: str) -> None:
        """Stop receiving messages from ``band``."""

    @abstractmethod
    def messages(self) -> AsyncIterator[PubSubMessage]:
        """Received messages, in order; raises the service's refusals (HubRequestError)."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close the connection."""

"""Pub-sub for channels: the :class:`PubSub` interface, its embedded backend (the hub's
WebSocket relay) and :func:`open_pubsub`, which picks the backend the credentials name
(``embedded``, ``nats``, ``ably``).

Example (under trio)::

    creds = hub.pubsub_credentials("lab")          # signed request to the hub
    async with open_pubsub(creds, renew=...) as ps:
        await ps.subscribe("lab-provideFiles")
        await ps.publish("lab-requestFiles", {"type": "requestFile", ...})
        msg = await ps.receive(timeout=5)
"""

from __future__ import annotations

from .base import PubSub, PubSubBackend, PubSubMessage, Renewer
from .embedded import EmbeddedPubSub, EmbeddedPubSubBackend, open_embedded_pubsub
from .open import open_pubsub

__all__ = ["EmbeddedPubSub", "EmbeddedPubSubBackend", "PubSub", "PubSubBackend", "PubSubMessage",
           "Renewer", "open_embedded_pubsub", "open_pubsub"]

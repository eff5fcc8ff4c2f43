"""Pub-sub for channels: the :class:`PubSub` interface, its embedded backend (the hub's
WebSocket relay) and :func:`open_pubsub`, which picks the backend the credentials name.

Example (under trio)::

    creds = hub.pubsub_credentials("lab")          # signed request to the hub
    async with open_pubsub(creds, renew=...) as ps:
        await ps.subscribe("lab-provideFiles")
        await ps.publish("lab-requestFiles", {"type": "requestFile", ...})
        msg = await ps.receive(timeout=5)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ..channels.errors import MalformedRequestError
from .base import PubSub, PubSubBackend, PubSubMessage, Renewer
from .embedded import EmbeddedPubSub, EmbeddedPubSubBackend, open_embedded_pubsub


@asynccontextmanager
async def open_pubsub(credentials: dict[str, Any], renew: Renewer | None = None) -> AsyncIterator[Any]:
    """Connect with the backend named by ``credentials["backend"]``."""
    backend = credentials.get("backend")
    if backend == "embedded":
        async with open_embedded_pubsub(credentials, renew) as ps:
            yield ps
        return
    raise MalformedRequestError(f"unknown pub-sub backend {backend!r}")


__all__ = ["EmbeddedPubSub", "EmbeddedPubSubBackend", "PubSub", "PubSubBackend", "PubSubMessage",
           "Renewer", "open_embedded_pubsub", "open_pubsub"]

"""Open a channel's pub-sub connection with the backend its credentials name.

The hub's ``pubsub_token`` answer says which backend the channel uses (``credentials["backend"]``);
nodes never choose. Backends with optional dependencies (``nats``, ``ably``) are imported only
when a channel uses them, so the embedded default needs nothing extra.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ...errors import MalformedRequestError
from .pubsub_interface import PubSub, Renewer

BACKENDS = ("embedded", "nats", "ably")


@asynccontextmanager
async def open_pubsub(credentials: dict[str, Any], renew: Renewer | None = None) -> AsyncIterator[PubSub]:
    """Connect with the backend named by ``credentials["backend"]`` and yield a :class:`PubSub`.

    With ``renew`` (a coroutine returning fresh credentials from the hub), credentials are renewed
    before they expire, in whatever way the backend allows.
    """
    backend = credentials.get("backend")
    if backend == "embedded":
        from .relay_client import open_embedded_pubsub as opener
    elif backend == "nats":
        from .nats_backend import open_nats_pubsub as opener
    elif backend == "ably":
        from .ably_backend import open_ably_pubsub as opener
    else:
        raise MalformedRequestError(f"unknown pub-sub backend {backend!r} (known: {', '.join(BACKENDS)})")
    async with opener(credentials, renew) as ps:
        yield ps

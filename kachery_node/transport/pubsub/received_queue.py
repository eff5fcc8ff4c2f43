"""What every node-side pub-sub client shares: a queue of received messages (or the service's
refusal), read with :meth:`messages` or :meth:`receive`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio

from ...errors import HubRequestError
from .pubsub_interface import PubSubMessage

RECEIVE_TIMEOUT_S = 10.0


class ReceivedQueue:
    """Mixin for clients whose reader task puts each :class:`PubSubMessage`, or the
    :class:`HubRequestError` that ends the connection, on the trio channel ``self._recv``."""

    _recv: trio.MemoryReceiveChannel

    async def messages(self) -> AsyncIterator[PubSubMessage]:
        """Received messages, in order; raises the service's refusal when it comes."""
        async for item in self._recv:
            if isinstance(item, HubRequestError):
                raise item
            yield item

    async def receive(self, timeout: float = RECEIVE_TIMEOUT_S) -> PubSubMessage:
        """The next message, or raise the service's refusal; ``trio.TooSlowError`` after ``timeout``."""
        with trio.fail_after(timeout):
            item = await self._recv.receive()
        if isinstance(item, HubRequestError):
            raise item
        return item

"""What every node-side pub-sub client shares: a queue of received messages (or the service's
refusal), read with :meth:`messages` or :meth:`receive`, and the consumer's option to take a
message at once, in the task that received it (:attr:`ReceivedQueue.handle_at_once`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import trio

from ...errors import HubRequestError
from .pubsub_interface import PubSubMessage

RECEIVE_TIMEOUT_S = 10.0


class ReceivedQueue:
    """Mixin for clients whose reader (a trio task, or trio-side code called from a client's
    own thread) hands each :class:`PubSubMessage`, or the :class:`HubRequestError` that ends
    the connection, to :meth:`_received`, which puts it on the trio channel ``self._recv``."""

    _recv: trio.MemoryReceiveChannel
    _recv_send: trio.MemorySendChannel
    #: :attr:`PubSub.handle_at_once` (None there by default): called with each received message,
    #: in the reader's task, while no received item waits in the queue; True means it handled
    #: the message (it is not queued). A live push is then handled without a task switch to the
    #: consumer's loop (one wake-up of the scheduler, tens of µs, less on every message). It must
    #: not block; it returns False for what needs waiting (queued, in order, for :meth:`messages`).
    handle_at_once: Callable[[PubSubMessage], bool] | None = None

    def queued(self) -> int:
        """How many received items wait in the queue."""
        return self._recv_send.statistics().current_buffer_used

    def _received(self, item: PubSubMessage | HubRequestError) -> None:
        """Hand over one received item: to :attr:`handle_at_once` if it takes it, else to the
        queue. Only while the queue is empty, so items are handled in the order received."""
        hook = self.handle_at_once
        if (hook is not None and type(item) is PubSubMessage
                and self._recv_send.statistics().current_buffer_used == 0 and hook(item)):
            return
        self._recv_send.send_nowait(item)

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

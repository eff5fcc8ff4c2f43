"""ReceivedQueue.handle_at_once: the consumer may take a message in the reader's task (no task
switch before a live push is handled), but only while nothing waits in the queue, so messages
are handled in the order received whichever way each one goes."""

from __future__ import annotations

import math

import pytest
import trio

from kachery_node.errors import HubRequestError
from kachery_node.transport.pubsub.pubsub_interface import PubSubMessage
from kachery_node.transport.pubsub.received_queue import ReceivedQueue

pytestmark = pytest.mark.trio


class _Queue(ReceivedQueue):
    def __init__(self) -> None:
        self._recv_send, self._recv = trio.open_memory_channel(math.inf)


def _message(i: int) -> PubSubMessage:
    return PubSubMessage("band", "sender", b"%d" % i, i)


async def test_messages_taken_at_once_are_not_queued_and_the_rest_keep_their_order():
    q = _Queue()
    taken: list[int] = []
    refuse = {2}  # e.g. a sender whose roles must be read again first

    def at_once(message: PubSubMessage) -> bool:
        if message.ts_ms in refuse:
            return False
        taken.append(message.ts_ms)
        return True

    q.handle_at_once = at_once
    for i in range(5):
        q._received(_message(i))
    # 0 and 1 taken at once; 2 refused, so 3 and 4 wait behind it in the queue (not taken
    # before 2 is handled)
    assert taken == [0, 1]
    assert [(await q.receive(timeout=1)).ts_ms for _ in range(3)] == [2, 3, 4]
    q._received(_message(5))  # the queue is empty again: taken at once
    assert taken == [0, 1, 5]


async def test_without_a_taker_everything_is_queued_and_an_error_is_never_taken():
    q = _Queue()
    q._received(_message(0))
    q.handle_at_once = lambda message: True
    q._received(_message(1))  # behind 0, which waits in the queue: queued too
    assert [(await q.receive(timeout=1)).ts_ms for _ in range(2)] == [0, 1]
    q._received(HubRequestError(400, "connection_closed", "gone"))
    with pytest.raises(HubRequestError, match="gone"):
        await q.receive(timeout=1)

"""The channel runtime hands each verified message to the one exchange of its band's flow
(protocol/roles.py), not to every exchange."""

from __future__ import annotations

import time

import pytest
import trio
import trio.testing

import kachery_feeds as kf
from kachery_node.daemon.channel_runtime import ChannelRuntime
from kachery_node.identity import Keypair
from kachery_node.protocol.membership import Membership, channel_message, grant_message, request_message
from kachery_node.protocol.node_messages import seal
from kachery_node.protocol.roles import ROLES, band_name, pubsub_band
from kachery_node.transport.pubsub.pubsub_interface import PubSubMessage

OWNER = Keypair.generate()
PEER = Keypair.generate()


def _membership(channel: str, node: str, roles: list[str]) -> Membership:
    return Membership.from_payloads(channel, [
        channel_message(channel, OWNER.public_hex, {}, 1),
        request_message(node, OWNER.public_hex, roles, 2),
        grant_message("grant", node, roles, OWNER.public_hex, 3),
    ])


@pytest.fixture
def runtime(tmp_path):
    calls: list[tuple[str, str, str]] = []

    def recorder(flow: str):
        async def handler(link, band, env) -> None:
            calls.append((flow, band, env.type))
        return handler

    rt = ChannelRuntime(channel="lab", entry={"hub_url": "http://127.0.0.1:9", "feed_id": "ab" * 32},
                        node_key=Keypair.generate(), store=kf.Store(tmp_path / "feeds.db"),
                        handlers={flow: recorder(flow) for flow in ("files", "feeds", "tasks")})
    rt.membership = _membership("lab", PEER.public_hex, list(ROLES))
    rt._last_refresh = time.monotonic()  # no hub here: the membership above is the verified one
    rt.calls = calls
    yield rt
    rt._hub.close()


def _message(band: str, kind: str, sender: Keypair = PEER) -> PubSubMessage:
    now = int(time.time() * 1000)
    data = seal(sender, channel="lab", band=band, body={"type": kind}, now_ms=now)
    return PubSubMessage(band_name("lab", pubsub_band(band)), sender.public_hex, data, now)


@pytest.mark.trio
async def test_each_message_reaches_only_the_exchange_of_its_band(runtime):
    async with trio.open_nursery() as nursery:
        for band in ROLES:
            await runtime._dispatch(_message(band, f"t-{band}"), nursery)
    assert sorted(runtime.calls) == sorted(
        (band.rsplit("-", 1)[1], band, f"t-{band}") for band in ROLES)
    assert len(runtime.calls) == len(ROLES)  # one delivery per message, not three


@pytest.mark.trio
async def test_messages_without_an_exchange_or_with_a_bad_band_are_dropped(runtime):
    del runtime._handlers["tasks"]
    async with trio.open_nursery() as nursery:
        await runtime._dispatch(_message("request-tasks", "requestTask"), nursery)
        bogus = _message("request-files", "requestFile")
        await runtime._dispatch(PubSubMessage("lab-someBand", bogus.sender, bogus.data, 0), nursery)
        # Sealed for request-feeds but arriving on provide-files: the binding check drops it.
        moved = _message("request-feeds", "subscribeToSubfeed")
        await runtime._dispatch(PubSubMessage(band_name("lab", "provideFiles"), moved.sender, moved.data, 0),
                                nursery)
    assert runtime.calls == []


@pytest.mark.trio
async def test_messages_taken_at_once_keep_their_order_behind_one_that_went_the_queued_way(runtime):
    """The pub-sub reader hands messages to the runtime at once (no task switch) only while
    nothing that went the queued way is unhandled: a message from a sender whose roles must be
    read again first holds back the ones after it, even from senders known to hold their role."""
    stranger = Keypair.generate()  # not in the membership: its message needs a refresh first
    async with trio.open_nursery() as nursery:
        runtime._nursery = nursery
        assert runtime._dispatch_at_once(_message("request-files", "first"))
        await trio.testing.wait_all_tasks_blocked()
        assert runtime.calls == [("files", "request-files", "first")]
        assert not runtime._dispatch_at_once(_message("request-files", "held", stranger))
        assert not runtime._dispatch_at_once(_message("request-files", "after"))  # behind "held"
        # The loop handles the queued ones in order (the stranger's is dropped: no role), and
        # once it has caught up with its queue, messages are taken at once again.
        for queued in (_message("request-files", "held", stranger), _message("request-files", "after")):
            await runtime._dispatch(queued, nursery)
        await trio.testing.wait_all_tasks_blocked()  # (each handler runs as a task of its own)
        runtime._behind = False  # what the loop does when the queue is empty
        assert runtime._dispatch_at_once(_message("request-files", "later"))
        await trio.testing.wait_all_tasks_blocked()
    assert [c[2] for c in runtime.calls] == ["first", "after", "later"]


@pytest.mark.trio
async def test_a_sender_granted_after_the_last_membership_read_is_heard_not_dropped(runtime, monkeypatch):
    """Before: a message from a node granted its role after the runtime's last read of the
    membership, arriving within a second of that read, was dropped ("it may not publish"): the
    refresh it needed was rate-limited (tests/network/test_live_feeds.py's forged-push test lost
    its first push that way whenever the follower caught up in under a second). Now the runtime
    waits out the second, reads again and hands it over. A sender still without the role after
    such a read is refused at once, with no second wait, until the next periodic refresh."""
    newcomer, stranger = Keypair.generate(), Keypair.generate()
    granted = Membership.from_payloads("lab", [
        channel_message("lab", OWNER.public_hex, {}, 1),
        request_message(PEER.public_hex, OWNER.public_hex, list(ROLES), 2),
        grant_message("grant", PEER.public_hex, list(ROLES), OWNER.public_hex, 3),
        request_message(newcomer.public_hex, OWNER.public_hex, ["request-files"], 4),
        grant_message("grant", newcomer.public_hex, ["request-files"], OWNER.public_hex, 5),
    ])
    reads: list[float] = []

    async def refresh_membership() -> None:  # the hub now says what the owner granted since
        reads.append(time.monotonic())
        runtime.membership, runtime._last_refresh = granted, time.monotonic()

    monkeypatch.setattr(runtime, "refresh_membership", refresh_membership)
    runtime._last_refresh = time.monotonic()  # read a moment ago, before the newcomer's grant
    async with trio.open_nursery() as nursery:
        await runtime._dispatch(_message("request-files", "hello", newcomer), nursery)
        await runtime._dispatch(_message("request-files", "hi", stranger), nursery)
        started = time.monotonic()
        await runtime._dispatch(_message("request-files", "again", stranger), nursery)
        assert time.monotonic() - started < 0.5  # refused at once this time
    assert [c[2] for c in runtime.calls] == ["hello"]
    assert len(reads) == 2  # one read for each sender, each a second after the one before
    assert reads[1] - reads[0] >= 0.9

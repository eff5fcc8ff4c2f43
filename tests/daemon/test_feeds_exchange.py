"""The feed exchange's drivers between nodes, over an in-memory channel (tests/daemon/memory_link.py).

Each node has a real feed store, its own node key and a running :class:`FeedExchange`; envelopes
are really signed and verified, and the bucket is a dict. End-to-end runs with real processes,
hub, relay and bucket are in tests/network/test_live_feeds.py and test_faults.py.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

import kachery_feeds as kf
from kachery_node.daemon.feed_provider_driver import upload_windows
from kachery_node.daemon.feeds_exchange import FeedExchange
from kachery_node.daemon.store_changes import ChangeBroadcaster
from kachery_node.identity import Keypair
from kachery_node.protocol import feed_follower, feed_provider
from kachery_node.protocol.bucket_layout import subfeed_head_path, subfeed_segment_path
from kachery_node.protocol.feed_bucket import parse_head
from kachery_node.protocol.feed_messages import NewSubfeedMessages
from tests.daemon.memory_link import MemoryChannel, MemoryLink

FEED_ROLES = ("request-feeds", "provide-feeds")


class FeedLink(MemoryLink):
    """A :class:`MemoryLink` whose uploads are those of the feed exchange (subfeed heads and
    segments, with the provide-feeds role)."""

    async def upload(self, path, data, *, progress=None) -> None:
        self._check_attached()
        if "provide-feeds" not in self.roles or not path.startswith(f"{self.channel}/feeds/"):
            raise PermissionError(f"no upload URL for {path} on channel {self.channel}")
        await anyio.lowlevel.checkpoint()
        self.hub.bucket[path] = bytes(data)
        self.hub.uploads.append((self.node_id, path))

    async def upload_many(self, items, *, then=None) -> None:
        for path, data in items:
            await self.upload(path, data)
        if then is not None:
            await self.upload(*then)


class Node:
    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.store = kf.open_store(root / f"{name}.db")
        self.keypair = Keypair.generate()
        self.changes = ChangeBroadcaster(self.store)
        self.exchange = FeedExchange(self.store, self.changes, root / f"{name}-subscriptions.json")
        self.link: FeedLink | None = None

    def join(self, channel: MemoryChannel, roles=FEED_ROLES, link_class: type[FeedLink] = FeedLink
             ) -> FeedLink:
        link = self.link = link_class(channel, self.keypair, frozenset(roles), self.exchange.on_message)
        channel.membership[self.keypair.public_hex] = frozenset(roles)
        channel.links.append(link)
        return link

    async def serve(self, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.changes.run)
            await tg.start(self.exchange.run)
            task_status.started()

    def follow(self, uri: str) -> kf.Subfeed:
        replica = self.store.load_subfeed(uri)
        assert self.link is not None
        self.exchange.follow([self.link], replica.feed_id, replica.subfeed_hash)
        return replica


@asynccontextmanager
async def network(tmp_path: Path, names: list[str]):
    nodes = [Node(tmp_path, name) for name in names]
    async with anyio.create_task_group() as tg:
        for node in nodes:
            await tg.start(node.serve)
        yield nodes
        tg.cancel_scope.cancel()


async def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.01)


def source_subfeed(node: Node, n: int) -> kf.Subfeed:
    """A subfeed of ``n`` messages appended in batches of 100: each segment holds signatures."""
    source = node.store.create_feed().load_subfeed("log")
    for start in range(0, n, 100):
        source.append_messages([{"i": i} for i in range(start, min(start + 100, n))])
    return source


@pytest.mark.trio
async def test_a_follower_catches_up_through_the_bucket_then_live(tmp_path):
    ch = MemoryChannel("lab")
    async with network(tmp_path, ["alice", "bob"]) as (alice, bob):
        alice.join(ch)
        bob.join(ch, ["request-feeds"])
        source = source_subfeed(alice, 2500)
        replica = bob.follow(source.uri)
        await wait_until(lambda: replica.get_num_local_messages() == 2500)
        head = subfeed_head_path("lab", source.feed_id, source.subfeed_hash)
        assert head in ch.bucket  # far behind: served through two segments and a head
        assert subfeed_segment_path("lab", source.feed_id, source.subfeed_hash, 1) in ch.bucket
        for i in range(3):
            source.append_message({"live": i})
            await wait_until(lambda i=i: replica.get_num_local_messages() == 2501 + i)
        assert replica.get_messages(2500) == [{"live": i} for i in range(3)]
        sent = zip(ch.published, ch.published_attachments, strict=True)
        pushes = [kf.decode_segment(lines) for (_s, _band, b), lines in sent
                  if b["type"] == "newSubfeedMessages"]  # the wire lines travel as the attachment
        assert [len(lines) for lines in pushes] == [1, 1, 1]
        assert ch.handler_errors == []


@pytest.mark.trio
async def test_a_tampered_segment_is_rejected_and_rewritten_by_the_provider(tmp_path):
    """Segment 0 holds signed messages, so the bad one fails inside the segment import (not in
    the tail): the reader still says bucket_rejected, and the provider rewrites the segment."""
    ch = MemoryChannel("lab")
    async with network(tmp_path, ["alice", "bob", "carol"]) as (alice, bob, carol):
        alice.join(ch)
        bob.join(ch, ["request-feeds"])
        source = source_subfeed(alice, 1300)
        replica = bob.follow(source.uri)
        await wait_until(lambda: replica.get_num_local_messages() == 1300)
        path = subfeed_segment_path("lab", source.feed_id, source.subfeed_hash, 0)
        good = ch.bucket[path]
        assert good.count(b'{"i":7}') == 1
        ch.bucket[path] = good.replace(b'{"i":7}', b'{"i":8}')

        carol.join(ch, ["request-feeds"])
        copy = carol.follow(source.uri)
        await wait_until(lambda: copy.get_num_local_messages() == 1300)
        assert copy.get_messages() == source.get_messages()
        assert ch.bucket[path] == good
        rejected = [b for s, band, b in ch.published
                    if s == carol.keypair.public_hex and b.get("bucket_rejected")]
        assert len(rejected) == 1
        assert ch.handler_errors == []


@pytest.mark.trio
async def test_a_gap_sends_the_reader_back_to_the_bucket(tmp_path):
    ch = MemoryChannel("lab")
    async with network(tmp_path, ["alice", "bob"]) as (alice, bob):
        alice.join(ch)
        link = bob.join(ch, ["request-feeds"])
        source = source_subfeed(alice, 10)
        replica = bob.follow(source.uri)
        await wait_until(lambda: replica.get_num_local_messages() == 10)
        link.detach()  # bob misses the next pushes
        source.append_messages([{"i": i} for i in range(10, 15)])
        head = subfeed_head_path("lab", source.feed_id, source.subfeed_hash)
        await wait_until(lambda: head in ch.bucket and parse_head(ch.bucket[head]).count == 15)
        link.attached = True
        source.append_message({"i": 15})  # pushed alone: starts past bob's end
        await wait_until(lambda: replica.get_num_local_messages() == 16)
        assert replica.get_messages() == source.get_messages()


class HeadReadsLink(FeedLink):
    """Counts the subfeed heads it reads from the bucket."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.head_reads = 0

    async def bucket_get(self, path, start=None, end=None) -> bytes:
        if path.endswith("/head"):
            self.head_reads += 1
        return await super().bucket_get(path, start, end)


@pytest.mark.trio
async def test_while_the_owner_says_what_it_holds_the_reader_reads_no_head_and_after_it_does(
        tmp_path, monkeypatch):
    """The periodic bucket re-read (a safety net) is put off while the owner answers renewals
    with subfeedsHeld, and comes back once the owner falls silent. Times scaled down 100x."""
    monkeypatch.setattr(feed_follower, "RENEW_SECONDS", 0.2)
    monkeypatch.setattr(feed_follower, "RENEW_ALIGN_SECONDS", 0.05)
    monkeypatch.setattr(feed_follower, "BUCKET_RECHECK_SECONDS", 1.5)
    monkeypatch.setattr(feed_provider, "HELD_MIN_INTERVAL_SECONDS", 0.5)
    ch = MemoryChannel("lab")
    async with network(tmp_path, ["alice", "bob"]) as (alice, bob):
        owner = alice.join(ch)
        link = bob.join(ch, ["request-feeds"], link_class=HeadReadsLink)
        assert isinstance(link, HeadReadsLink)
        source = source_subfeed(alice, 10)
        replica = bob.follow(source.uri)
        await wait_until(lambda: replica.get_num_local_messages() == 10)
        reads = link.head_reads

        def said() -> list[list]:  # (bob also follows the feed's policy subfeed: 0 messages)
            return [pair for _s, _band, b in ch.published if b["type"] == "subfeedsHeld"
                    for pair in b["subfeeds"] if pair[0] == source.subfeed_hash]

        # The owner says it at renewals for two re-read periods: the reader reads no head.
        await wait_until(lambda: len(said()) >= 7)
        assert said()[-1] == [source.subfeed_hash, 10]
        assert link.head_reads == reads
        # bob's first subscription is no renewal, the ones after it are (the batcher keeps it).
        subscriptions = [b for s, _band, b in ch.published if s == bob.keypair.public_hex
                         and b["type"].startswith("subscribeToSubfeed")]
        assert not subscriptions[0].get("renewal") and subscriptions[-1].get("renewal") is True
        # The owner falls silent (its daemon away): the reader re-reads the bucket again.
        owner.detach()
        await wait_until(lambda: link.head_reads > reads)
        assert ch.handler_errors == []


class SlowSegmentsLink(FeedLink):
    """Segments take ``delay`` seconds each to upload (a slow bucket); every head uploaded is
    recorded with its count, in order."""

    delay = 0.02

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.head_counts: list[int] = []

    async def upload(self, path, data, *, progress=None) -> None:
        if "/segments/" in path:
            await anyio.sleep(self.delay)
        await super().upload(path, data, progress=progress)
        if path.endswith("/head"):
            self.head_counts.append(parse_head(data).count)


@pytest.mark.trio
async def test_a_long_upload_publishes_provisional_heads_and_the_reader_imports_at_once(tmp_path):
    """30 segments, uploaded in windows of 1, 2, 4, 8, 8, 7: after each window but the last a
    head for what is up so far goes up and is announced, so the reader starts importing while
    the owner still uploads."""
    ch = MemoryChannel("lab")
    async with network(tmp_path, ["alice", "bob"]) as (alice, bob):
        link = alice.join(ch, link_class=SlowSegmentsLink)
        assert isinstance(link, SlowSegmentsLink)
        bob.join(ch, ["request-feeds"])
        source = source_subfeed(alice, 30_000)
        replica = bob.follow(source.uri)
        await wait_until(lambda: replica.get_num_local_messages() > 0)
        # Bob has messages, and the owner has not uploaded its last head yet.
        assert 30_000 not in link.head_counts, link.head_counts
        await wait_until(lambda: replica.get_num_local_messages() == 30_000, timeout=30)
        assert link.head_counts[:6] == [1000, 3000, 7000, 15_000, 23_000, 30_000]
        announced = [b["count"] for s, _band, b in ch.published
                     if s == alice.keypair.public_hex and b["type"] == "subfeedUploaded"]
        assert announced[:6] == [1000, 3000, 7000, 15_000, 23_000, 30_000]
        positions = [b["position"] for s, _band, b in ch.published
                     if s == bob.keypair.public_hex and b["type"] == "subscribeToSubfeed"]
        assert any(0 < p < 30_000 for p in positions), positions  # caught up in several steps
        assert replica.get_messages(29_990) == [{"i": i} for i in range(29_990, 30_000)]
        assert ch.handler_errors == []


class WindowLink(FeedLink):
    """Records each upload_many call as (segment indices, the count of the head that follows)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.windows: list[tuple[list[int], int | None]] = []

    async def upload_many(self, items, *, then=None) -> None:
        indices = [int(path.rsplit("/", 1)[1]) for path, _data in items]
        self.windows.append((indices, None if then is None else parse_head(then[1]).count))
        await super().upload_many(items, then=then)


@pytest.mark.trio
async def test_each_provisional_head_goes_up_with_its_window_and_segments_come_by_download(tmp_path):
    """The provider asks for a window's segment URLs and its provisional head's in one
    upload_many (the head after the segments); the reader fetches segments with bucket_download
    (straight off the socket in the daemon), not bucket_get."""
    ch = MemoryChannel("lab")
    async with network(tmp_path, ["alice", "bob"]) as (alice, bob):
        link = alice.join(ch, link_class=WindowLink)
        assert isinstance(link, WindowLink)
        bob.join(ch, ["request-feeds"])
        source = source_subfeed(alice, 12_500)
        replica = bob.follow(source.uri)
        await wait_until(lambda: replica.get_num_local_messages() == 12_500, timeout=30)
        assert link.windows == [([0], 1000), ([1, 2], 3000), ([3, 4, 5, 6], 7000),
                                ([7, 8, 9, 10, 11], None)]
        head = subfeed_head_path("lab", source.feed_id, source.subfeed_hash)
        assert parse_head(ch.bucket[head]).count == 12_500
        segments = [p for node, p in ch.downloads if node == bob.keypair.public_hex and "/segments/" in p]
        assert sorted(int(p.rsplit("/", 1)[1]) for p in segments) == list(range(12))
        assert replica.get_messages() == source.get_messages()
        assert ch.handler_errors == []


def test_upload_windows_grow_to_their_cap():
    assert upload_windows(range(0)) == []
    assert upload_windows(range(5, 6)) == [range(5, 6)]
    assert upload_windows(range(0, 30)) == [range(0, 1), range(1, 3), range(3, 7), range(7, 15),
                                            range(15, 23), range(23, 30)]


@pytest.mark.trio
async def test_many_subfeeds_of_one_feed_are_pushed_live(tmp_path):
    """The provider reads the counts of a feed's subfeeds in one query: each still gets its own
    new messages pushed, and a subfeed not written to gets nothing."""
    ch = MemoryChannel("lab")
    async with network(tmp_path, ["alice", "bob"]) as (alice, bob):
        alice.join(ch)
        bob.join(ch, ["request-feeds"])
        feed = alice.store.create_feed()
        sources = [feed.load_subfeed(f"s{i}") for i in range(5)]
        for i, source in enumerate(sources):
            source.append_message({"s": i, "k": 0})
        replicas = [bob.follow(source.uri) for source in sources]
        await wait_until(lambda: all(r.get_num_local_messages() == 1 for r in replicas))
        for i, source in enumerate(sources[:4]):
            source.append_messages([{"s": i, "k": k} for k in range(1, i + 2)])
        await wait_until(lambda: [r.get_num_local_messages() for r in replicas] == [2, 3, 4, 5, 1])
        for i, replica in enumerate(replicas):
            assert replica.get_messages() == sources[i].get_messages()
        assert ch.handler_errors == []


# ---------------------------------------------------------------------------- unsigned pushes
def pushes_signed(ch: MemoryChannel) -> list[bool]:
    """Whether each ``newSubfeedMessages`` published on ``ch`` had an envelope signature."""
    return [signed for (_s, _band, b), signed in zip(ch.published, ch.published_signed, strict=True)
            if b["type"] == "newSubfeedMessages"]


@pytest.mark.trio
async def test_live_pushes_between_current_nodes_go_without_an_envelope_signature(tmp_path):
    ch = MemoryChannel("lab")
    async with network(tmp_path, ["alice", "bob"]) as (alice, bob):
        alice.join(ch)
        bob.join(ch, ["request-feeds"])
        source = source_subfeed(alice, 3)
        replica = bob.follow(source.uri)
        await wait_until(lambda: replica.get_num_local_messages() == 3)
        for i in range(3):
            source.append_message({"live": i})
            await wait_until(lambda i=i: replica.get_num_local_messages() == 4 + i)
        assert replica.get_messages() == source.get_messages()
        assert pushes_signed(ch) and not any(pushes_signed(ch))
        assert ch.handler_errors == []


class OlderReaderLink(FeedLink):
    """A reader as nodes before unsigned pushes were: its subscriptions do not say it takes
    them (and it would drop them: version 0x03 is unknown to it)."""

    async def publish(self, band, body, *, attachment=None, signed=True) -> None:
        assert signed, "a reader never publishes unsigned"
        body = {k: v for k, v in body.items() if k != "unsigned_pushes"}
        await super().publish(band, body, attachment=attachment)


@pytest.mark.trio
async def test_pushes_are_signed_while_an_older_reader_follows(tmp_path):
    ch = MemoryChannel("lab")
    async with network(tmp_path, ["alice", "old", "new"]) as (alice, old, new):
        alice.join(ch)
        old.join(ch, ["request-feeds"], link_class=OlderReaderLink)
        new.join(ch, ["request-feeds"])
        source = source_subfeed(alice, 3)
        replicas = [old.follow(source.uri), new.follow(source.uri)]
        await wait_until(lambda: all(r.get_num_local_messages() == 3 for r in replicas))
        before = len(pushes_signed(ch))  # (what was pushed before the older one subscribed: not)
        source.append_messages([{"live": 0}])
        await wait_until(lambda: all(r.get_num_local_messages() == 4 for r in replicas))
        assert pushes_signed(ch)[before:] == [True]  # one push, for both, signed
        assert ch.handler_errors == []


@pytest.mark.trio
async def test_a_forged_unsigned_push_is_rejected_and_a_non_member_is_not_heard(tmp_path):
    """Without an envelope signature a push is only as good as its messages' feed signatures:
    a tampered message is rejected by the import and nothing is stored; the very same bytes
    untampered are taken from any member who may provide feeds (they are the owner's messages;
    importing them twice changes nothing); a non-member is not heard at all."""
    ch = MemoryChannel("lab")
    scratch = kf.open_store(tmp_path / "owner.db").create_feed().load_subfeed("log")
    for i in range(5):
        scratch.append_message({"i": i})  # each signed: each verifies alone
    lines = scratch.get_signed_messages(0, 5)
    async with network(tmp_path, ["alice", "bob"]) as (alice, bob):
        alice.join(ch)  # a provider holding a verified copy of the first 3
        alice.store.load_subfeed(scratch.uri).add_signed_messages(lines[:3])
        bob.join(ch, ["request-feeds"])
        replica = bob.follow(scratch.uri)
        await wait_until(lambda: replica.get_num_local_messages() == 3)
        mallory = ch.join(Keypair.generate(), ["provide-feeds"])  # a member, not the owner
        eve = ch.join(Keypair.generate(), ["provide-feeds"], member=False)

        async def push(link: MemoryLink, line: bytes) -> None:
            message = NewSubfeedMessages(scratch.feed_id, scratch.subfeed_hash, (line,))
            await link.publish("provide-feeds", message.to_body(), attachment=message.attachment(),
                               signed=False)  # handled by every reader before this returns

        tampered = lines[3].replace(b'"i":3', b'"i":9')
        assert tampered != lines[3]
        await push(mallory, tampered)
        assert replica.get_num_local_messages() == 3
        await push(eve, lines[3])
        assert replica.get_num_local_messages() == 3
        await push(mallory, lines[3])
        assert replica.get_num_local_messages() == 4
        await push(mallory, lines[3])  # a replay: nothing changes
        assert replica.get_messages() == [{"i": i} for i in range(4)]
        assert ch.handler_errors == []


def _subscriptions_by(ch: MemoryChannel, node: Node) -> list[dict]:
    return [b for s, _band, b in ch.published
            if s == node.keypair.public_hex and b["type"].startswith("subscribeToSubfeed")]


@pytest.mark.trio
async def test_an_owner_that_connects_after_the_reader_subscribed_is_heard_at_once(tmp_path):
    """The reader subscribed while the owner was away; the owner's providerConnected makes it
    publish the subscription again now, not at its renewal 20 to 25 s later (a follower saw
    nothing for that long after the owner came back)."""
    ch = MemoryChannel("lab")
    async with network(tmp_path, ["alice", "bob"]) as (alice, bob):
        bob.join(ch, ["request-feeds"])
        source = source_subfeed(alice, 5)  # alice holds it, but is not on the channel yet
        replica = bob.follow(source.uri)
        await wait_until(lambda: len(_subscriptions_by(ch, bob)) >= 1)  # heard by nobody
        link = alice.join(ch)
        alice.exchange.on_reconnect(link)  # what her channel runtime does once connected
        with anyio.fail_after(5):  # well before the renewal (RENEW_SECONDS = 20)
            await wait_until(lambda: replica.get_num_local_messages() == 5)
        announcements = [b for s, band, b in ch.published
                         if s == alice.keypair.public_hex and b["type"] == "providerConnected"]
        assert announcements == [{**announcements[0], "type": "providerConnected"}]
        assert _subscriptions_by(ch, bob)[-1].get("renewal") is True  # nothing happened since
        source.append_message("live")
        await wait_until(lambda: replica.get_num_local_messages() == 6)
        assert ch.handler_errors == []


@pytest.mark.trio
async def test_providers_connecting_together_cost_a_reader_two_rounds_of_subscriptions(
        tmp_path, monkeypatch):
    """When a hub restarts every member reconnects at once: the reader answers the first
    providerConnected at once and the rest together once RESUBSCRIBE_MIN_SECONDS is up, not
    each with a round of its own."""
    from kachery_node.daemon import feed_follower_driver

    monkeypatch.setattr(feed_follower_driver, "RESUBSCRIBE_MIN_SECONDS", 0.5)
    ch = MemoryChannel("lab")
    async with network(tmp_path, ["alice", "bob", "carol", "dave", "erin"]) as nodes:
        alice, bob, *others = nodes
        alice.join(ch)
        bob.join(ch, ["request-feeds"])
        source = source_subfeed(alice, 3)
        replica = bob.follow(source.uri)
        await wait_until(lambda: replica.get_num_local_messages() == 3)
        before = len(_subscriptions_by(ch, bob))
        started = anyio.current_time()
        for node in others:
            node.exchange.on_reconnect(node.join(ch))
        await wait_until(lambda: len(_subscriptions_by(ch, bob)) == before + 2, timeout=10)
        assert anyio.current_time() - started >= 0.5  # the second round waited its turn
        assert len(_subscriptions_by(ch, bob)) == before + 2
        assert ch.handler_errors == []

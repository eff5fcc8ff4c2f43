"""The feed flow's pure core (protocol/feed_messages.py, feed_follower.py, feed_provider.py):
event sequences replayed with a fake clock (plain floats), asserting on the actions returned.
No sockets, no processes, no store, no sleeping."""

from __future__ import annotations

import orjson
import pytest

from kachery_node.protocol import feed_provider as feed_provider_module
from kachery_node.protocol.feed_bucket import (
    BucketPlan,
    encode_head,
    plan_bucket_update,
    plan_from_count,
    signed_count_in_segment,
)
from kachery_node.protocol.feed_follower import (
    BUCKET_RECHECK_SECONDS,
    CATCH_UP_TIMEOUT_SECONDS,
    REJECTED_RETRY_SECONDS,
    RENEW_ALIGN_SECONDS,
    RENEW_SECONDS,
    TRANSITIONS,
    CatchUpFailure,
    FeedFollower,
    FollowerState,
    InlineOutcome,
    renewal_due,
)
from kachery_node.protocol.feed_messages import (
    SUBSCRIBE_MANY_MAX,
    FeedProtocolMisuse,
    GiveUp,
    ImportFromBucket,
    MalformedFeedMessage,
    NewSubfeedMessages,
    ProviderConnected,
    Publish,
    PushRange,
    ReadBucketState,
    ReadHead,
    Report,
    SavedSubscription,
    SaveSubscriptions,
    Severity,
    SubfeedOnChannel,
    SubfeedsHeld,
    SubfeedUploaded,
    SubscribeToSubfeed,
    SubscribeToSubfeeds,
    UploadSegments,
    batch_subscriptions,
    parse,
)
from kachery_node.protocol.feed_provider import (
    BUCKET_DEBOUNCE_SECONDS,
    BUCKET_UPDATES_TRUSTED,
    HELD_MIN_INTERVAL_SECONDS,
    INLINE_MAX_BYTES,
    INLINE_MAX_MESSAGES,
    REPAIR_MIN_INTERVAL_SECONDS,
    REPUSH_GRACE_SECONDS,
    SUBSCRIPTION_TTL_SECONDS,
    FeedProvider,
    InlineSplitter,
    TooBigToPush,
)

FEED, SUB = "ab" * 32, "cd" * 20
HERE = SubfeedOnChannel("lab", FEED, SUB)
READER = "e1" * 32
T0, WALL0 = 1000.0, 1_700_000_000.0


def lines(n: int, *, signed_every: int = 1) -> list[bytes]:
    """Stand-in wire lines: message i is signed (no trailing TAB) if (i+1) % signed_every == 0."""
    return [b'{"n":%d}' % i + (b"" if (i + 1) % signed_every == 0 else b"\t") for i in range(n)]


def head(count: int) -> bytes:
    return encode_head(count, lines(count % 1000))


def of(kind, actions):
    return [a for a in actions if isinstance(a, kind)]


def published(actions):
    return [a.message for a in of(Publish, actions)]


# ============================================================================ messages
def test_messages_round_trip_through_their_bodies():
    sub = SubscribeToSubfeed(FEED, SUB, 12, bucket_rejected=True)
    push = NewSubfeedMessages(FEED, SUB, tuple(lines(3)))
    uploaded = SubfeedUploaded(FEED, SUB, 2500)
    assert ProviderConnected().to_body() == {"type": "providerConnected"}
    assert parse("provide-feeds", {"type": "providerConnected", "time_ms": 1}) == ProviderConnected()
    with pytest.raises(MalformedFeedMessage):  # a provider's word, heard on the readers' band
        parse("request-feeds", {"type": "providerConnected"})
    assert sub.to_body() == {"type": "subscribeToSubfeed", "feed_id": FEED, "subfeed_hash": SUB,
                             "position": 12, "bucket_rejected": True, "unsigned_pushes": True}
    assert "bucket_rejected" not in SubscribeToSubfeed(FEED, SUB, 0).to_body()
    for message in (sub, push, uploaded):
        envelope = {**message.to_body(), "channel": "lab", "band": message.band, "time_ms": 1,
                    "nonce": "x" * 24}
        # the envelope's own fields are ignored
        assert parse(message.band, envelope, message.attachment()) == message
    # The wire lines are the attachment, as they are (segment form), not JSON inside the body.
    assert "messages" not in push.to_body() and push.attachment() == b"".join(x + b"\n" for x in push.lines)
    assert sub.attachment() is None and uploaded.attachment() is None
    assert push.size() == len(orjson.dumps(push.to_body())) + 1 + len(push.attachment())
    upper = parse("request-feeds", {**sub.to_body(), "feed_id": FEED.upper()})
    assert upper.feed_id == FEED


@pytest.mark.parametrize("band, change", [
    ("provide-feeds", {}),  # a subscription on the provider's band
    ("request-feeds", {"type": "newSubfeedMessages"}),
    ("request-feeds", {"type": "requestFile"}),
    ("request-files", {}),
    ("request-feeds", {"feed_id": "ab" * 31}),
    ("request-feeds", {"feed_id": None}),
    ("request-feeds", {"subfeed_hash": "xyz"}),
    ("request-feeds", {"subfeed_hash": 7}),
    ("request-feeds", {"position": -1}),
    ("request-feeds", {"position": 1.0}),
    ("request-feeds", {"position": True}),
    ("request-feeds", {"position": 2**53}),
    ("request-feeds", {"position": None}),
    ("request-feeds", {"bucket_rejected": 1}),
    ("request-feeds", {"bucket_rejected": "yes"}),
    ("request-feeds", {"renewal": 1}),
    ("request-feeds", {"renewal": None}),
])
def test_malformed_subscriptions_are_the_peers_fault(band, change):
    body = {**SubscribeToSubfeed(FEED, SUB, 3).to_body(), **change}
    with pytest.raises(MalformedFeedMessage):
        parse(band, body)


@pytest.mark.parametrize("change, attachment", [
    ({}, None),  # no lines attached
    ({}, b"x"),  # not in segment form: the last line has no LF
    ({"messages": ["x"]}, None),  # v1 put them in the body as JSON strings: not read any more
    ({"type": "subfeedUploaded", "count": -3}, None), ({"type": "subfeedUploaded", "count": "3"}, None),
])
def test_malformed_provider_messages_are_the_peers_fault(change, attachment):
    body = {**NewSubfeedMessages(FEED, SUB, (b"x",)).to_body(), **change}
    with pytest.raises(MalformedFeedMessage):
        parse("provide-feeds", body, attachment)


def test_subscriptions_to_many_subfeeds_of_one_feed_travel_in_one_message_per_500():
    hashes = [f"{i:040x}" for i in range(1203)]
    singles = [SubscribeToSubfeed(FEED, h, i) for i, h in enumerate(hashes)]
    other_feed = SubscribeToSubfeed("ef" * 32, SUB, 4)  # alone in its feed: the single form
    rejected = SubscribeToSubfeed(FEED, SUB, 2, bucket_rejected=True)  # travels alone
    again = SubscribeToSubfeed(FEED, hashes[0], 99)  # listed twice: the last position counts
    batched = batch_subscriptions([*singles, other_feed, rejected, again])
    many = [m for m in batched if isinstance(m, SubscribeToSubfeeds)]
    assert [len(m.subfeeds) for m in many] == [SUBSCRIBE_MANY_MAX, SUBSCRIBE_MANY_MAX, 203]
    assert {m for m in batched if isinstance(m, SubscribeToSubfeed)} == {other_feed, rejected}
    expected = [SubscribeToSubfeed(FEED, h, 99 if i == 0 else i) for i, h in enumerate(hashes)]
    assert [s for m in many for s in m.each()] == expected
    # Round trip; the envelope's own fields are ignored; one message fits the relay's limit.
    body = {**many[0].to_body(), "channel": "lab", "band": "request-feeds", "time_ms": 1}
    assert parse("request-feeds", body) == many[0] and many[0].attachment() is None
    assert many[0].to_body()["subfeeds"][1] == [hashes[1], 1]
    assert len(orjson.dumps(many[0].to_body())) < 40_000


def test_renewals_say_so_in_both_forms_and_travel_apart_from_other_subscriptions():
    # The single form: the flag only when set, read back; an older reader's body has none.
    renewal = SubscribeToSubfeed(FEED, SUB, 12, renewal=True)
    assert renewal.to_body()["renewal"] is True
    assert "renewal" not in SubscribeToSubfeed(FEED, SUB, 12).to_body()
    assert parse("request-feeds", renewal.to_body()) == renewal
    assert parse("request-feeds", SubscribeToSubfeed(FEED, SUB, 12).to_body()).renewal is False
    # The batched form: one flag beside the pairs (an older provider, which reads only the
    # pairs, still takes every pair), said of each subscription it stands for.
    hashes = [f"{i:040x}" for i in range(4)]
    renewals = [SubscribeToSubfeed(FEED, h, 5, renewal=True) for h in hashes[:2]]
    others = [SubscribeToSubfeed(FEED, h, 5) for h in hashes[2:]]
    batched = batch_subscriptions([renewals[0], others[0], renewals[1], others[1]])
    assert batched == [SubscribeToSubfeeds(FEED, ((hashes[0], 5), (hashes[1], 5)), renewal=True),
                       SubscribeToSubfeeds(FEED, ((hashes[2], 5), (hashes[3], 5)))]
    body = batched[0].to_body()
    assert body["renewal"] is True and body["subfeeds"] == [[hashes[0], 5], [hashes[1], 5]]
    assert "renewal" not in batched[1].to_body()
    assert parse("request-feeds", body) == batched[0] and batched[0].each() == renewals
    assert parse("request-feeds", batched[1].to_body()).each() == others
    # A subfeed listed as a renewal and as another subscription is not a renewal (the other
    # may follow a gap); alone in its feed and kind it goes in the single form, flag and all.
    later = batch_subscriptions([others[0], SubscribeToSubfeed(FEED, hashes[2], 6, renewal=True),
                                 SubscribeToSubfeed("ef" * 32, SUB, 3, renewal=True)])
    assert later == [SubscribeToSubfeed(FEED, hashes[2], 6),
                     SubscribeToSubfeed("ef" * 32, SUB, 3, renewal=True)]


def test_the_owners_word_on_what_it_holds_travels_batched():
    held = SubfeedsHeld(FEED, ((SUB, 7), ("01" * 20, 0)))
    assert held.to_body() == {"type": "subfeedsHeld", "feed_id": FEED,
                              "subfeeds": [[SUB, 7], ["01" * 20, 0]]}
    assert parse("provide-feeds", held.to_body()) == held and held.attachment() is None
    for change in ({"subfeeds": []}, {"subfeeds": [[SUB, -1]]}, {"subfeeds": [[SUB]]},
                   {"subfeeds": [[SUB, 1]] * (SUBSCRIBE_MANY_MAX + 1)}, {"feed_id": 3}):
        with pytest.raises(MalformedFeedMessage):
            parse("provide-feeds", {**held.to_body(), **change})
    with pytest.raises(MalformedFeedMessage):  # a provider's message, not a reader's
        parse("request-feeds", held.to_body())


@pytest.mark.parametrize("change", [
    {"subfeeds": []},
    {"subfeeds": [[SUB, 1]] * (SUBSCRIBE_MANY_MAX + 1)},
    {"subfeeds": {SUB: 1}},
    {"subfeeds": [[SUB]]},
    {"subfeeds": [[SUB, 1, 2]]},
    {"subfeeds": [[SUB, -1]]},
    {"subfeeds": [[SUB, 1], ["xyz", 1]]},  # one bad pair: the whole message
    {"subfeeds": [[7, 1]]},
    {"subfeeds": [[SUB, True]]},
    {"feed_id": "ab" * 31},
    {"subfeeds": None},
    {"renewal": "true"},
])
def test_malformed_batched_subscriptions_are_the_peers_fault(change):
    body = {**SubscribeToSubfeeds(FEED, ((SUB, 3),)).to_body(), **change}
    with pytest.raises(MalformedFeedMessage):
        parse("request-feeds", body)
    with pytest.raises(MalformedFeedMessage):  # and only on the reader's band
        parse("provide-feeds", SubscribeToSubfeeds(FEED, ((SUB, 3),)).to_body())


def test_a_batched_renewal_is_handled_as_its_subscriptions_with_one_save():
    p = FeedProvider()
    hashes = [f"{i:040x}" for i in range(300)]
    message = SubscribeToSubfeeds(FEED, tuple((h, 5) for h in hashes))
    counts = {(FEED, h): 5 for h in hashes} | {(FEED, hashes[0]): 7}  # one is behind: pushed
    actions = p.on_subscribe_many(T0, WALL0, "lab", READER, message.each(), may_provide=True,
                                  sender_allowed=True, local_counts=counts, owns_feed=True)
    [save] = of(SaveSubscriptions, actions)
    assert len(save.rows) == 300 and isinstance(actions[0], SaveSubscriptions)  # saved first
    assert of(PushRange, actions) == [PushRange(SubfeedOnChannel("lab", FEED, hashes[0]), 5, 7)]
    assert len(p.subscriptions(T0)) == 300
    # Renewed later: one save of the 300 renewed rows again, nothing pushed.
    actions = p.on_subscribe_many(T0 + 20, WALL0 + 20, "lab", READER,
                                  SubscribeToSubfeeds(FEED, tuple((h, 7 if i == 0 else 5)
                                                                  for i, h in enumerate(hashes))).each(),
                                  may_provide=True, sender_allowed=True, local_counts=counts,
                                  owns_feed=True)
    assert [type(a) for a in actions] == [SaveSubscriptions]
    assert {r.expires for r in actions[0].rows} == {WALL0 + 20 + SUBSCRIPTION_TTL_SECONDS}
    # A sender not allowed: nothing kept, nothing saved.
    q = FeedProvider()
    [report] = q.on_subscribe_many(T0, WALL0, "lab", READER, message.each(), may_provide=True,
                                   sender_allowed=False, local_counts=counts, owns_feed=True)
    assert isinstance(report, Report) and q.subscriptions(T0) == []


# ============================================================================ follower
def subscribed_follower(local_count: int = 0) -> FeedFollower:
    f = FeedFollower(HERE)
    f.start(T0, may_request=True)
    f.on_head(T0, None, local_count)
    assert f.state is FollowerState.SUBSCRIBED
    return f


def test_follower_without_the_role_gives_up_and_stays_quiet():
    f = FeedFollower(HERE)
    actions = f.start(T0, may_request=False)
    assert of(GiveUp, actions) == [GiveUp(HERE, "this node lacks the request-feeds role")]
    assert "request-feeds" in of(Report, actions)[0].text
    assert f.state is FollowerState.STOPPED and f.next_deadline() is None
    assert f.on_nudge(T0) == [] and f.on_timer(T0 + 1e6) == []
    assert f.on_subfeed_uploaded(T0, SubfeedUploaded(FEED, SUB, 9), 0) == []


def test_follower_reads_the_head_then_subscribes_and_renews():
    f = FeedFollower(HERE)
    assert f.start(T0, may_request=True) == [ReadHead(HERE, T0 + CATCH_UP_TIMEOUT_SECONDS)]
    assert f.next_deadline() is None  # waiting for the driver, who enforces the read's deadline
    # No head in the bucket: nothing was published yet.
    assert f.on_head(T0 + 0.1, None, 0) == [Publish("lab", SubscribeToSubfeed(FEED, SUB, 0))]
    renewal = renewal_due(T0 + 0.1)  # RENEW_SECONDS later, on the grid every follower shares
    assert f.next_deadline() == renewal and renewal >= T0 + 0.1 + RENEW_SECONDS
    assert renewal % RENEW_ALIGN_SECONDS == 0 and renewal < T0 + 0.1 + RENEW_SECONDS + RENEW_ALIGN_SECONDS
    assert f.on_timer(renewal - 0.01) == []  # early: nothing
    assert f.on_timer(renewal) == [ReadHead(HERE, renewal + CATCH_UP_TIMEOUT_SECONDS)]
    # Pushes arrived meanwhile: the renewal carries the store's count.
    assert published(f.on_head(T0 + 21, head(40), 40)) == [SubscribeToSubfeed(FEED, SUB, 40)]


def test_renewals_republish_the_subscription_and_read_the_bucket_only_every_few_minutes():
    f = FeedFollower(HERE)
    f.start(T0, may_request=True)  # reads the head at T0
    f.on_head(T0, None, 0)
    t = renewal_due(T0)
    while t < T0 + BUCKET_RECHECK_SECONDS:
        # Pushes arrived meanwhile: the renewal carries the store's count, no bucket read.
        assert f.on_timer(t, 7) == [Publish("lab", SubscribeToSubfeed(FEED, SUB, 7, renewal=True))]
        assert f.state is FollowerState.SUBSCRIBED and f.next_deadline() == renewal_due(t)
        t = renewal_due(t)
    # the last read is BUCKET_RECHECK_SECONDS old: read the head again
    assert f.on_timer(t, 7) == [ReadHead(HERE, t + CATCH_UP_TIMEOUT_SECONDS)]
    f.on_head(t, None, 7)
    assert of(Publish, f.on_timer(renewal_due(t), 7))  # and publish-only renewals again
    # A nudge still reads the bucket at once, whenever the last read was.
    assert of(ReadHead, f.on_nudge(renewal_due(t) + 1))


def test_follower_behind_the_bucket_imports_its_missing_segments_and_tail():
    f = FeedFollower(HERE)
    f.start(T0, may_request=True)
    [action] = f.on_head(T0, head(2500), 1200)
    assert isinstance(action, ImportFromBucket)
    assert action.segments == range(1, 2) and len(action.tail) == 500
    assert action.deadline == T0 + CATCH_UP_TIMEOUT_SECONDS and f.state is FollowerState.IMPORTING
    actions = f.on_imported(T0 + 3, 1300, 2500)
    assert "imported 1300 messages" in of(Report, actions)[0].text
    assert published(actions) == [SubscribeToSubfeed(FEED, SUB, 2500)]


def test_follower_ahead_of_the_bucket_subscribes_at_once():
    f = FeedFollower(HERE)
    f.start(T0, may_request=True)
    assert published(f.on_head(T0, head(300), 300)) == [SubscribeToSubfeed(FEED, SUB, 300)]


@pytest.mark.parametrize("how", ["malformed head", "rejected import"])
def test_rejected_bucket_data_pauses_then_asks_providers_for_a_new_copy(how):
    f = FeedFollower(HERE)
    f.start(T0, may_request=True)
    if how == "malformed head":
        actions = f.on_head(T0, b'{"v":1,"count":5}', 0)
    else:
        f.on_head(T0, head(1300), 0)
        actions = f.on_catch_up_failed(T0, CatchUpFailure.REJECTED, 0, "bad signature")
    assert [r.severity for r in actions] == [Severity.WARNING] and "rejected bucket data" in actions[0].text
    assert f.state is FollowerState.BACKING_OFF
    assert f.next_deadline() == T0 + REJECTED_RETRY_SECONDS
    assert f.on_nudge(T0 + 0.5) == [] and f.on_timer(T0 + 0.5) == []  # no spinning
    actions = f.on_timer(T0 + REJECTED_RETRY_SECONDS)
    assert published(actions)[0] == SubscribeToSubfeed(FEED, SUB, 0, bucket_rejected=True)
    assert of(ReadHead, actions)  # the nudge during the pause was kept
    # The flag goes with one subscription only.
    assert published(f.on_head(T0 + 2, None, 0)) == [SubscribeToSubfeed(FEED, SUB, 0)]


@pytest.mark.parametrize("failure, severity", [
    (CatchUpFailure.FORK, Severity.ERROR),
    (CatchUpFailure.TIMED_OUT, Severity.WARNING),
    (CatchUpFailure.UNREACHABLE, Severity.INFO),
])
def test_other_catch_up_failures_subscribe_anyway_and_retry_at_the_renewal(failure, severity):
    f = FeedFollower(HERE)
    f.start(T0, may_request=True)
    f.on_head(T0, head(2500), 0)
    actions = f.on_catch_up_failed(T0 + 60, failure, 1000, "detail")
    assert of(Report, actions)[0].severity is severity
    assert published(actions) == [SubscribeToSubfeed(FEED, SUB, 1000)]
    assert f.next_deadline() == renewal_due(T0 + 60)


def test_a_nudge_during_a_catch_up_starts_one_more_after_it_and_no_nudge_doubles_up():
    f = FeedFollower(HERE)
    f.start(T0, may_request=True)
    assert f.on_nudge(T0) == [] and f.on_nudge(T0) == []  # reading the head: remembered once
    actions = f.on_head(T0 + 1, None, 0)
    assert [type(a) for a in actions] == [Publish, ReadHead]
    assert published(f.on_head(T0 + 2, None, 0)) == [SubscribeToSubfeed(FEED, SUB, 0)]
    assert f.state is FollowerState.SUBSCRIBED  # no third catch-up


def test_a_nudge_before_the_start_adds_nothing_to_its_catch_up():
    f = FeedFollower(HERE)
    assert f.on_nudge(T0) == []  # the channel connected as the follower was made
    f.start(T0, may_request=True)
    assert [type(a) for a in f.on_head(T0, None, 0)] == [Publish]


def test_only_a_plain_renewal_says_renewal_and_a_subscription_after_a_gap_does_not():
    # tests/daemon/test_feeds_exchange.py::test_a_gap_sends_the_reader_back_to_the_bucket: a
    # reader that dropped a push must be pushed it again, even right after it went out.
    f = FeedFollower(HERE)
    f.start(T0, may_request=True)
    assert published(f.on_head(T0, None, 10)) == [SubscribeToSubfeed(FEED, SUB, 10)]
    t = renewal_due(T0)
    assert published(f.on_timer(t, 10)) == [SubscribeToSubfeed(FEED, SUB, 10, renewal=True)]
    # A push past our end: back to the bucket, then a subscription that is no renewal.
    [read] = f.on_new_messages(t + 1, InlineOutcome.GAP, READER)
    assert isinstance(read, ReadHead)
    f.on_head(t + 1.1, head(15), 10)
    assert published(f.on_imported(t + 1.2, 5, 15)) == [SubscribeToSubfeed(FEED, SUB, 15)]
    # Nor one after a nudge, a failed catch-up, or a rejected bucket copy.
    f.on_nudge(t + 2)
    assert published(f.on_head(t + 2, None, 15)) == [SubscribeToSubfeed(FEED, SUB, 15)]
    f.on_nudge(t + 3)
    assert published(f.on_catch_up_failed(t + 3, CatchUpFailure.UNREACHABLE, 15)) == [
        SubscribeToSubfeed(FEED, SUB, 15)]
    # The next renewal with nothing in between is one again.
    t = renewal_due(t + 3)
    assert published(f.on_timer(t, 16)) == [SubscribeToSubfeed(FEED, SUB, 16, renewal=True)]


def test_while_the_owner_says_what_it_holds_renewals_read_no_bucket_and_more_catches_up():
    f = subscribed_follower(7)  # read the bucket at T0
    t = renewal_due(T0)
    said = T0
    while t < T0 + 3 * BUCKET_RECHECK_SECONDS:
        if t - said >= HELD_MIN_INTERVAL_SECONDS:  # the owner answers a renewal now and then
            assert f.on_subfeed_held(t, 7, 7) == []
            said = t
        # No bucket read, however long since the last: the owner vouches for the bucket.
        assert published(f.on_timer(t, 7)) == [SubscribeToSubfeed(FEED, SUB, 7, renewal=True)]
        t = renewal_due(t)
    # The owner falls silent (offline): BUCKET_RECHECK_SECONDS after its last word, read again.
    while t - said < BUCKET_RECHECK_SECONDS:
        assert of(Publish, f.on_timer(t, 7))
        t = renewal_due(t)
    assert f.on_timer(t, 7) == [ReadHead(HERE, t + CATCH_UP_TIMEOUT_SECONDS)]
    f.on_head(t, head(7), 7)
    # The owner holds more than we do (pushes were lost): catch up at once.
    assert of(ReadHead, f.on_subfeed_held(t + 1, 9, 7))


def test_a_provider_that_connects_hears_the_subscription_again_at_once():
    f = subscribed_follower(4)
    t = T0 + 3
    # Published again now, as a renewal, and the next renewal counts from now.
    assert f.on_provider_connected(t, 6) == [Publish("lab", SubscribeToSubfeed(FEED, SUB, 6, renewal=True))]
    assert f.state is FollowerState.SUBSCRIBED and f.next_deadline() == renewal_due(t)
    # Catching up, it subscribes when that ends anyway.
    f.on_nudge(t + 1)
    assert f.state is FollowerState.READING_HEAD and f.on_provider_connected(t + 1, 6) == []
    backing_off = subscribed_follower()
    backing_off.on_nudge(t)
    backing_off.on_catch_up_failed(t, CatchUpFailure.REJECTED, 0, "bad head")
    assert backing_off.on_provider_connected(t, 0) == []
    # Whose messages wait for witnesses (no count): its last position, as a renewal.
    assert published(subscribed_follower(2).on_provider_connected(t, None)) == [
        SubscribeToSubfeed(FEED, SUB, 2, renewal=True)]


def test_nudges_reconnects_announcements_and_gaps_catch_up_now():
    f = subscribed_follower(10)
    assert f.on_nudge(T0 + 1) == [ReadHead(HERE, T0 + 1 + CATCH_UP_TIMEOUT_SECONDS)]
    f.on_head(T0 + 1, None, 10)
    # An announcement of what we already hold changes nothing; of more, catches up.
    assert f.on_subfeed_uploaded(T0 + 2, SubfeedUploaded(FEED, SUB, 10), 10) == []
    assert of(ReadHead, f.on_subfeed_uploaded(T0 + 2, SubfeedUploaded(FEED, SUB, 11), 10))
    f.on_head(T0 + 2, head(11), 11)
    # A push that does not chain onto the local end sends us back to the bucket.
    assert f.on_new_messages(T0 + 3, InlineOutcome.STORED, READER) == []
    assert of(ReadHead, f.on_new_messages(T0 + 3, InlineOutcome.GAP, READER))


def test_bad_inline_pushes_are_reported_not_raised():
    f = subscribed_follower()
    [fork] = f.on_new_messages(T0, InlineOutcome.FORK, READER, "two messages 4")
    [bad] = f.on_new_messages(T0, InlineOutcome.REJECTED, READER, "bad signature")
    assert fork.severity is Severity.ERROR and "FORK" in fork.text and READER[:12] in fork.text
    assert bad.severity is Severity.WARNING and "rejected messages" in bad.text
    assert f.state is FollowerState.SUBSCRIBED


def test_driving_a_follower_wrongly_is_our_fault():
    f = FeedFollower(HERE)
    with pytest.raises(FeedProtocolMisuse):
        f.on_head(T0, None, 0)  # no ReadHead was asked for
    f.start(T0, may_request=True)
    with pytest.raises(FeedProtocolMisuse):
        f.start(T0, may_request=True)
    with pytest.raises(FeedProtocolMisuse):
        f.on_imported(T0, 0, 0)  # reading the head, not importing
    f.on_head(T0, None, 0)
    with pytest.raises(FeedProtocolMisuse):
        f.on_catch_up_failed(T0, CatchUpFailure.TIMED_OUT, 0)


def test_every_transition_of_the_table_happens():
    """Walk a follower through every row of TRANSITIONS (none is dead)."""
    seen = set()

    def track(f, call):
        before = f.state
        call()
        seen.add((before, f.state))

    a = FeedFollower(HERE)
    track(a, lambda: a.start(T0, may_request=False))
    b = FeedFollower(HERE)
    track(b, lambda: b.start(T0, may_request=True))
    track(b, lambda: b.on_head(T0, None, 0))  # nothing new
    track(b, lambda: b.on_nudge(T0))
    track(b, lambda: b.on_head(T0, head(5), 0))  # behind
    track(b, lambda: b.on_imported(T0, 5, 5))
    b.on_nudge(T0)
    track(b, lambda: b.on_catch_up_failed(T0, CatchUpFailure.UNREACHABLE, 5))
    b.on_nudge(T0)
    track(b, lambda: b.on_head(T0, b"garbage", 5))  # rejected while reading
    track(b, lambda: b.on_timer(T0 + REJECTED_RETRY_SECONDS))
    b.on_nudge(T0 + 2)
    b.on_head(T0 + 2, head(9), 5)
    track(b, lambda: b.on_catch_up_failed(T0 + 2, CatchUpFailure.REJECTED, 5))
    b.on_timer(T0 + 4)
    b.on_nudge(T0 + 4)
    b.on_head(T0 + 4, head(9), 5)
    track(b, lambda: b.on_catch_up_failed(T0 + 4, CatchUpFailure.TIMED_OUT, 5))
    track(b, lambda: b.on_timer(renewal_due(T0 + 4), 5))  # renewal: publish only
    assert {(s, t) for (s, _step), t in TRANSITIONS.items()} <= seen


# ============================================================================ provider
def subscribe(p: FeedProvider, now: float, position: int, count: int, *, rejected=False, owns=True,
              allowed=True, may_provide=True, channel="lab", wall=None, renewal=False):
    message = SubscribeToSubfeed(FEED, SUB, position, bucket_rejected=rejected, renewal=renewal)
    return p.on_subscribe(now, WALL0 + (now - T0) if wall is None else wall, channel, READER, message,
                          may_provide=may_provide, sender_allowed=allowed, local_count=count,
                          owns_feed=owns)


def finish_sync(p: FeedProvider, now: float, count: int, bucket_head: bytes | None = None,
                where: SubfeedOnChannel = HERE):
    """Answer a ReadBucketState and the UploadSegments it leads to; returns all actions."""
    actions = p.on_bucket_state(now, where, bucket_head, count, head(count))
    if of(UploadSegments, actions):
        actions += p.on_bucket_done(now, where)
    return actions


def test_subscriptions_need_the_provide_role_and_an_allowed_sender():
    p = FeedProvider()
    assert subscribe(p, T0, 0, 5, may_provide=False) == []
    [report] = subscribe(p, T0, 0, 5, allowed=False)
    assert "not allowed to request feeds on lab" in report.text
    assert p.subscriptions(T0) == [] and p.next_deadline() is None


def test_a_reader_slightly_behind_gets_the_messages_inline_and_then_every_new_one():
    p = FeedProvider()
    actions = subscribe(p, T0, 3, 10)
    assert of(PushRange, actions) == [PushRange(HERE, 3, 10)]
    [save] = of(SaveSubscriptions, actions)
    assert save.rows == (SavedSubscription("lab", FEED, SUB, WALL0 + SUBSCRIPTION_TTL_SECONDS),)
    assert not of(ReadBucketState, actions)  # inline, not through the bucket
    assert p.on_local_counts(T0 + 1, {(FEED, SUB): 10}) == []
    assert p.on_local_counts(T0 + 1, {(FEED, SUB): 12}) == [PushRange(HERE, 10, 12)]
    assert p.on_local_counts(T0 + 2, {(FEED, SUB): 12}) == []
    assert p.subfeeds() == {(FEED, SUB)}


def test_a_reader_far_behind_is_served_through_the_bucket_and_told_so():
    p = FeedProvider()
    actions = subscribe(p, T0, 0, INLINE_MAX_MESSAGES + 1)
    assert not of(PushRange, actions) and of(ReadBucketState, actions) == [ReadBucketState(HERE)]
    actions = subscribe(p, T0, 200, 201)
    assert of(PushRange, actions) == [PushRange(HERE, 200, 201)] and not of(ReadBucketState, actions)
    p2 = FeedProvider()
    subscribe(p2, T0, 0, 2500)
    [upload] = p2.on_bucket_state(T0, HERE, None, 2500, head(2500))
    assert upload == UploadSegments(HERE, range(0, 2), 2500, provisional_heads=True)
    assert published(p2.on_bucket_done(T0 + 1, HERE)) == [SubfeedUploaded(FEED, SUB, 2500)]


def test_subscriptions_are_saved_at_once_by_default():
    p = FeedProvider()  # a provider killed right after a reader subscribed must still know it
    assert of(SaveSubscriptions, subscribe(p, T0, 5, 5))
    assert of(SaveSubscriptions, subscribe(p, T0 + 0.01, 5, 5))


def test_subscriptions_are_saved_at_most_once_per_interval_and_a_put_off_save_comes(monkeypatch):
    monkeypatch.setattr(feed_provider_module, "SAVE_MIN_INTERVAL_SECONDS", 5.0)  # the tunable
    SAVE_MIN_INTERVAL_SECONDS = 5.0
    p = FeedProvider()
    assert of(SaveSubscriptions, subscribe(p, T0, 5, 5))  # the first: saved at once
    others = [SubscribeToSubfeed(FEED, f"{i:040x}", 5) for i in range(50)]
    for i, message in enumerate(others):  # fifty more readers within a second: no save each
        actions = p.on_subscribe(T0 + i / 100, WALL0 + i / 100, "lab", READER, message,
                                 may_provide=True, sender_allowed=True, local_count=5, owns_feed=True)
        assert not of(SaveSubscriptions, actions)
    assert p.next_deadline() <= T0 + SAVE_MIN_INTERVAL_SECONDS  # the driver wakes for it
    assert not of(SaveSubscriptions, p.on_timer(T0 + SAVE_MIN_INTERVAL_SECONDS - 0.1))
    [save] = of(SaveSubscriptions, p.on_timer(T0 + SAVE_MIN_INTERVAL_SECONDS))
    # Only what changed since the first save (incremental), with their wall-clock expiries.
    assert len(save.rows) == 50 and save.expired_before == WALL0 + SAVE_MIN_INTERVAL_SECONDS
    assert {row.subfeed_hash for row in save.rows} == {m.subfeed_hash for m in others}
    assert min(row.expires for row in save.rows) == WALL0 + SUBSCRIPTION_TTL_SECONDS
    assert not of(SaveSubscriptions, p.on_timer(T0 + 2 * SAVE_MIN_INTERVAL_SECONDS))  # nothing new
    later = T0 + 3 * SAVE_MIN_INTERVAL_SECONDS
    assert of(SaveSubscriptions, subscribe(p, later, 5, 5))  # a renewal after a quiet spell


def test_renewals_at_the_count_the_bucket_holds_start_no_bucket_job():
    p = FeedProvider()
    subscribe(p, T0, 5, 5)
    assert p.on_timer(T0 + 1) == [ReadBucketState(HERE)]  # the first: is the bucket up to date?
    finish_sync(p, T0 + 1.1, 5, head(5))
    for t in (T0 + 20, T0 + 40, T0 + 60):  # renewals while nothing changes: no head read
        subscribe(p, t, 5, 5)
        assert not of(ReadBucketState, p.on_timer(t + 1))
    p.on_local_counts(T0 + 61, {(FEED, SUB): 6})  # new messages: the copy is brought up to date
    # from the count it was found at (the head is not read again: see BUCKET_UPDATES_TRUSTED)
    assert p.on_timer(T0 + 62) == [ReadBucketState(HERE, known_count=5)]
    assert of(UploadSegments, p.on_bucket_state(T0 + 62, HERE, head(5), 6, head(6)))
    [_failed_report] = p.on_bucket_failed(T0 + 63, HERE, "refused")  # not known good any more
    subscribe(p, T0 + 80, 6, 6)
    assert p.on_timer(T0 + 81) == [ReadBucketState(HERE)]
    # A subscription expires on time even though the earliest expiry is only tracked lazily.
    q = FeedProvider()
    subscribe(q, T0, 5, 5)
    subscribe(q, T0 + 30, 5, 5)  # renewed: now expires at T0 + 90
    assert q.next_deadline() <= T0 + SUBSCRIPTION_TTL_SECONDS  # a wake that may find nothing
    q.on_timer(T0 + SUBSCRIPTION_TTL_SECONDS)
    assert q.subscriptions(T0 + SUBSCRIPTION_TTL_SECONDS) == [HERE]
    q.on_timer(T0 + 30 + SUBSCRIPTION_TTL_SECONDS)
    assert q.subscriptions(T0 + 30 + SUBSCRIPTION_TTL_SECONDS) == [] and q.next_deadline() is None


def test_a_reader_that_is_up_to_date_gets_nothing_but_a_renewed_subscription():
    p = FeedProvider()
    actions = subscribe(p, T0, 10, 10)
    assert [type(a) for a in actions] == [SaveSubscriptions]


def test_a_replica_with_nothing_keeps_no_subscription_but_the_owner_does():
    replica = FeedProvider()
    assert subscribe(replica, T0, 0, 0, owns=False) == [] and replica.subscriptions(T0) == []
    owner = FeedProvider()
    assert of(SaveSubscriptions, subscribe(owner, T0, 0, 0, owns=True))
    assert owner.on_local_counts(T0 + 5, {(FEED, SUB): 1}) == [PushRange(HERE, 0, 1)]


def test_subscriptions_expire_unless_renewed():
    p = FeedProvider()
    subscribe(p, T0, 5, 5)
    assert p.next_deadline() == T0 + BUCKET_DEBOUNCE_SECONDS
    subscribe(p, T0 + 50, 5, 5)  # renewal
    assert p.on_local_counts(T0 + 100, {(FEED, SUB): 6}) == [PushRange(HERE, 5, 6)]
    assert p.on_local_counts(T0 + 50 + SUBSCRIPTION_TTL_SECONDS, {(FEED, SUB): 7}) == []
    assert p.subscriptions(T0 + 111) == [] and p.subfeeds() == set()


def test_bucket_updates_are_debounced_and_merged():
    p = FeedProvider()
    subscribe(p, T0, 5, 5)
    p.on_local_counts(T0 + 0.1, {(FEED, SUB): 6})
    p.on_local_counts(T0 + 0.2, {(FEED, SUB): 7})
    assert p.next_deadline() == T0 + BUCKET_DEBOUNCE_SECONDS
    assert p.on_timer(T0 + 0.4) == []
    assert p.on_timer(T0 + BUCKET_DEBOUNCE_SECONDS) == [ReadBucketState(HERE)]  # one, for all three
    assert p.on_timer(T0 + 1) == []
    # While that job runs, more changes: the next job waits for it, and is only one.
    p.on_local_counts(T0 + 1.1, {(FEED, SUB): 8})
    assert p.on_timer(T0 + 1.6) == []  # due, but merged into the running job's successor
    p.on_local_counts(T0 + 1.7, {(FEED, SUB): 9})
    [upload] = p.on_bucket_state(T0 + 1.8, HERE, head(5), 7, head(7))
    assert upload == UploadSegments(HERE, range(0, 0), 7, provisional_heads=True)
    # no announce: nobody asked; planned from the count it wrote, the head read at 0.5 s
    assert p.on_bucket_done(T0 + 1.9, HERE) == [ReadBucketState(HERE, known_count=7)]
    assert p.on_timer(T0 + 2.2) == []  # the change at 1.7: queued behind the running job
    assert finish_sync(p, T0 + 2.3, 9, head(7)) == [
        UploadSegments(HERE, range(0, 0), 9, provisional_heads=True), ReadBucketState(HERE, known_count=9)]
    assert finish_sync(p, T0 + 2.4, 9, head(9)) == []  # up to date; no announce: nobody asked
    assert p.next_deadline() == T0 + SUBSCRIPTION_TTL_SECONDS  # nothing left but the expiry


def test_a_bucket_copy_is_updated_from_the_count_it_was_brought_to_and_its_head_read_again_now_and_then():
    """Under steady appends the copy is updated every debounce interval: each update plans from
    the count the provider found or wrote (no 0.5 MB head read, no local head built), and every
    BUCKET_UPDATES_TRUSTED + 1-th one reads the head again."""
    p = FeedProvider()
    subscribe(p, T0, 5, 5)
    count, t, reads = 5, T0, 0
    for _ in range(2 * (BUCKET_UPDATES_TRUSTED + 1)):
        count, t = count + 1, t + 1
        if t - T0 >= 30:
            subscribe(p, t - 0.5, count - 1, count - 1)  # a renewal: the subscription lives on
        p.on_local_counts(t, {(FEED, SUB): count})
        [read] = of(ReadBucketState, p.on_timer(t + BUCKET_DEBOUNCE_SECONDS))
        if read.known_count is None:
            reads += 1
            actions = p.on_bucket_state(t + 0.6, HERE, head(count - 1), count, head(count))
        else:
            assert read.known_count == count - 1  # what the last update wrote
            actions = p.on_bucket_planned(t + 0.6, HERE, plan_from_count(count, read.known_count), count)
        upload = UploadSegments(HERE, range(0, 0), count, provisional_heads=True)
        assert of(UploadSegments, actions) == [upload]
        assert not of(ReadBucketState, p.on_bucket_done(t + 0.7, HERE))
    assert reads == 2  # the first update, and the one after BUCKET_UPDATES_TRUSTED trusted ones


@pytest.mark.parametrize("distrust", ["failed", "rejected", "reconnected"])
def test_a_failed_update_a_rejected_copy_or_a_reconnect_makes_the_next_update_read_the_head(distrust):
    p = FeedProvider()
    subscribe(p, T0, 5, 5)
    assert p.on_timer(T0 + 1) == [ReadBucketState(HERE)]
    finish_sync(p, T0 + 1, 5, head(5))
    p.on_local_counts(T0 + 2, {(FEED, SUB): 6})
    assert p.on_timer(T0 + 3) == [ReadBucketState(HERE, known_count=5)]
    after: list = []  # every action from the distrust on
    if distrust == "failed":
        after += p.on_bucket_failed(T0 + 3.1, HERE, "refused")
    else:
        finish_sync(p, T0 + 3.1, 6)
        if distrust == "rejected":
            after += subscribe(p, T0 + 3.2, 2, 6, rejected=True)  # rewritten from message 2
            assert of(UploadSegments, after) == [UploadSegments(HERE, range(0, 0), 6)]
            after += p.on_bucket_done(T0 + 3.3, HERE)
        else:
            after += p.on_connected(T0 + 3.2, WALL0 + 3.2, "lab", {(FEED, SUB): 6})
    after += p.on_local_counts(T0 + 4, {(FEED, SUB): 7})
    after += p.on_timer(T0 + 5)
    assert of(ReadBucketState, after)[0] == ReadBucketState(HERE)  # the head is read


@pytest.mark.parametrize("local, bucket, plan", [
    (0, 0, BucketPlan(upload=False)),  # nothing to provide
    (1500, 1500, BucketPlan(upload=False)),  # up to date
    (1400, 1500, BucketPlan(upload=False)),  # the bucket is ahead: left alone
    (2500, 1500, BucketPlan(True, range(1, 2))),  # the segment holding 1500 on, then the head
    (1501, 1500, BucketPlan(True, range(1, 1))),  # the head only
])
def test_plan_from_count_is_the_head_plan_when_the_head_is_ours(local, bucket, plan):
    assert plan_from_count(local, bucket) == plan
    if plan.upload:
        assert plan_bucket_update(local, head(local), head(bucket)) == plan


def test_an_announcement_asked_for_during_a_job_comes_after_the_next_one():
    p = FeedProvider()
    subscribe(p, T0, 5, 5)
    assert p.on_timer(T0 + 1) == [ReadBucketState(HERE)]
    assert not of(ReadBucketState, p.on_connected(T0 + 1.1, WALL0, "lab", {(FEED, SUB): 5}))
    assert finish_sync(p, T0 + 1.2, 5, head(5)) == [ReadBucketState(HERE, known_count=5)]
    assert published(finish_sync(p, T0 + 1.3, 5, head(5))) == [SubfeedUploaded(FEED, SUB, 5)]


@pytest.mark.parametrize("local, bucket, upload, segments, bad_head", [
    (0, None, False, None, False),  # nothing to provide
    (2500, None, True, range(0, 2), False),  # empty bucket
    (2500, 1500, True, range(1, 2), False),  # behind by a segment and a tail
    (2500, 2400, True, range(2, 2), False),  # only the head
    (2500, 2600, False, None, False),  # the bucket is ahead (another provider has more)
    (2500, 2500, False, None, False),  # the same head
    (2500, "tampered", True, range(2, 2), True),  # our count, other bytes: replaced
    (2500, "garbage", True, range(0, 2), False),  # unreadable: as if empty
])
def test_which_segments_and_heads_are_uploaded(local, bucket, upload, segments, bad_head):
    if bucket == "tampered":
        bucket_head = encode_head(2500, [b"{}"] * 500)
    elif bucket == "garbage":
        bucket_head = b"not json"
    else:
        bucket_head = None if bucket is None else head(bucket)
    plan = plan_bucket_update(local, head(local), bucket_head)
    assert plan.upload is upload and plan.replaces_bad_head is bad_head
    if upload:
        assert plan.segments == segments
    p = FeedProvider()
    subscribe(p, T0, 0, 300)  # far enough behind to announce
    actions = p.on_bucket_state(T0, HERE, bucket_head, local, head(local))
    assert bool(of(UploadSegments, actions)) is upload
    assert any("replacing a bad head" in r.text for r in of(Report, actions)) is bad_head
    if not upload:  # done at once, announcing what we hold (if anything)
        assert published(actions) == ([SubfeedUploaded(FEED, SUB, local)] if local else [])


def test_a_long_upload_announces_its_provisional_heads_to_a_waiting_reader_only():
    p = FeedProvider()
    subscribe(p, T0, 0, 20_000)  # far behind: the job announces
    [upload] = p.on_bucket_state(T0, HERE, None, 20_000, head(20_000))
    assert upload == UploadSegments(HERE, range(0, 20), 20_000, provisional_heads=True)
    assert published(p.on_bucket_progress(T0 + 0.1, HERE, 1000)) == [SubfeedUploaded(FEED, SUB, 1000)]
    assert published(p.on_bucket_progress(T0 + 0.2, HERE, 2999)) == [SubfeedUploaded(FEED, SUB, 2999)]
    assert published(p.on_bucket_done(T0 + 1, HERE)) == [SubfeedUploaded(FEED, SUB, 20_000)]
    with pytest.raises(FeedProtocolMisuse):
        p.on_bucket_progress(T0 + 1.1, HERE, 3000)  # no upload runs
    # A debounced update (nobody waits) uploads provisional heads too, but announces none.
    q = FeedProvider()
    subscribe(q, T0, 5, 5)
    q.on_local_counts(T0 + 0.1, {(FEED, SUB): 20_000})
    assert q.on_timer(T0 + 1) == [ReadBucketState(HERE)]
    [upload] = q.on_bucket_state(T0 + 1, HERE, head(5), 20_000, head(20_000))
    assert upload.provisional_heads
    with pytest.raises(FeedProtocolMisuse):
        q.on_bucket_progress(T0 + 1.05, SubfeedOnChannel("other", FEED, SUB), 1000)  # no job there
    assert q.on_bucket_progress(T0 + 1.1, HERE, 1000) == []


def test_the_provisional_count_ends_at_a_segments_last_signed_message():
    unsigned, signed = b'{"n":1}\t', b'{"n":1}\tsig'
    every = b"".join(signed + b"\n" for _ in range(1000))
    assert signed_count_in_segment(every, 0) == 1000
    assert signed_count_in_segment(every, 7) == 8000
    last_at_998 = b"".join((signed if i == 998 else unsigned) + b"\n" for i in range(1000))
    assert signed_count_in_segment(last_at_998, 2) == 2999
    first_only = b"".join((signed if i == 0 else unsigned) + b"\n" for i in range(1000))
    assert signed_count_in_segment(first_only, 0) == 1
    none = b"".join(unsigned + b"\n" for _ in range(1000))
    assert signed_count_in_segment(none, 3) is None
    with pytest.raises(ValueError):
        signed_count_in_segment(b"".join(unsigned + b"\n" for _ in range(10)), 0)


def test_a_rejected_bucket_copy_is_rewritten_at_most_once_per_interval():
    p = FeedProvider()
    actions = subscribe(p, T0, 1200, 3500, rejected=True)
    [warning] = [r for r in of(Report, actions) if r.severity is Severity.WARNING]
    assert "rejected the lab bucket's copy" in warning.text and "from message 1200" in warning.text
    # Segments from the reader's position and the head, whatever the bucket says: no head read.
    assert of(UploadSegments, actions) == [UploadSegments(HERE, range(1, 3), 3500)]
    assert not of(ReadBucketState, actions)
    # The reader is far behind, so then the usual update and announcement follow.
    assert p.on_bucket_done(T0 + 1, HERE) == [ReadBucketState(HERE)]
    assert published(finish_sync(p, T0 + 1, 3500, head(3500))) == [SubfeedUploaded(FEED, SUB, 3500)]
    # Rejected again within the interval: no second rewrite (only the update, which finds it fine).
    assert of(UploadSegments, subscribe(p, T0 + 5, 3400, 3500, rejected=True)) == []
    assert p.on_timer(T0 + 9) == [ReadBucketState(HERE)]  # the debounce
    finish_sync(p, T0 + 9, 3500, head(3500))
    again = subscribe(p, T0 + REPAIR_MIN_INTERVAL_SECONDS, 3400, 3500, rejected=True)
    assert of(UploadSegments, again) == [UploadSegments(HERE, range(3, 3), 3500)]
    assert of(PushRange, again) == [PushRange(HERE, 3400, 3500)]
    # A reader that holds everything we have cannot have rejected anything of ours.
    assert not of(UploadSegments, subscribe(FeedProvider(), T0, 3500, 3500, rejected=True))


def test_a_reconnected_channel_gets_its_bucket_copies_and_announcements():
    p = FeedProvider()
    other = SubfeedOnChannel("elsewhere", FEED, SUB)
    subscribe(p, T0, 5, 5)
    subscribe(p, T0, 5, 5, channel="elsewhere")
    empty = SubscribeToSubfeed(FEED, "ef" * 20, 0)
    p.on_subscribe(T0, WALL0, "lab", READER, empty, may_provide=True, sender_allowed=True,
                   local_count=0, owns_feed=True)
    assert p.subfeeds("lab") == {(FEED, SUB), (FEED, "ef" * 20)}
    actions = p.on_connected(T0 + 1, WALL0 + 1, "lab", {(FEED, SUB): 8, (FEED, "ef" * 20): 0})
    assert actions == [ReadBucketState(HERE)]  # not the empty subfeed, not the other channel
    # With the provide-feeds role there, it says first that it is back (providerConnected).
    assert p.on_connected(T0 + 1.5, WALL0 + 1.5, "lab", {}, may_provide=True) == [
        Publish("lab", ProviderConnected())]
    assert published(finish_sync(p, T0 + 2, 8)) == [SubfeedUploaded(FEED, SUB, 8)]
    assert p.on_local_counts(T0 + 3, {(FEED, SUB): 8}) == [PushRange(other, 5, 8)]  # lab has 8 already


def test_saved_subscriptions_are_taken_up_when_their_channel_connects():
    fresh = SavedSubscription("lab", FEED, SUB, WALL0 + 30)
    stale = SavedSubscription("lab", FEED, "ef" * 20, WALL0 - 1)
    later = SavedSubscription("elsewhere", FEED, SUB, WALL0 + 40)
    p = FeedProvider([fresh, stale, later])
    assert p.subfeeds() == set()  # nothing live before a channel connects
    assert p.subfeeds("lab") == {(FEED, SUB), (FEED, "ef" * 20)}
    actions = p.on_connected(T0, WALL0, "lab", {(FEED, SUB): 7, (FEED, "ef" * 20): 3})
    assert actions == [ReadBucketState(HERE)]
    assert p.subscriptions(T0) == [HERE]
    # signed: what its readers said about unsigned pushes was not saved
    assert p.on_local_counts(T0 + 1, {(FEED, SUB): 9}) == [PushRange(HERE, 7, 9, signed=True)]
    assert p.on_local_counts(T0 + 30, {(FEED, SUB): 10}) == []  # expired when saved said so
    # A save writes what changed (live ones in wall time); rows not yet taken up stay saved as
    # they are, and those expired by now go.
    [save] = of(SaveSubscriptions, subscribe(p, T0 + 31, 10, 10, wall=WALL0 + 31))
    renewed = SavedSubscription("lab", FEED, SUB, WALL0 + 31 + SUBSCRIPTION_TTL_SECONDS)
    assert save.rows == (renewed,) and save.expired_before == WALL0 + 31


def test_a_failed_bucket_job_is_reported_and_announces_nothing():
    p = FeedProvider()
    subscribe(p, T0, 0, 300)
    [report] = p.on_bucket_failed(T0 + 1, HERE, "ConnectError: refused")
    assert report.severity is Severity.INFO and "refused" in report.text
    assert p.on_timer(T0 + 1) == [ReadBucketState(HERE)]  # the debounced update still comes
    with pytest.raises(FeedProtocolMisuse):
        p.on_bucket_done(T0 + 2, HERE)  # reading, not uploading
    finish_sync(p, T0 + 2, 300)
    with pytest.raises(FeedProtocolMisuse):
        p.on_bucket_done(T0 + 3, HERE)  # no job at all


def test_inline_pushes_are_cut_after_signed_messages_within_the_limits():
    s = InlineSplitter(FEED, SUB)
    pieces = s.add(lines(450)) + s.finish()
    assert [len(p.lines) for p in pieces] == [200, 200, 50]
    assert b"".join(b"".join(p.lines) for p in pieces) == b"".join(lines(450))
    # Only every 150th message is signed: a piece runs on to the next signature.
    s = InlineSplitter(FEED, SUB)
    pieces = s.add(lines(300, signed_every=150)[:170]) + s.add(lines(300, signed_every=150)[170:])
    assert [len(p.lines) for p in pieces + s.finish()] == [300]
    # Bytes: pieces of about INLINE_MAX_BYTES.
    big = [b'{"n":%d,"pad":"%s"}' % (i, b"x" * 1000) for i in range(100)]
    pieces = InlineSplitter(FEED, SUB).add(big)
    assert all(sum(map(len, p.lines)) >= INLINE_MAX_BYTES for p in pieces)
    assert all(sum(map(len, p.lines)) < INLINE_MAX_BYTES + 1100 for p in pieces)


def test_a_piece_too_big_for_pub_sub_goes_through_the_bucket():
    s = InlineSplitter(FEED, SUB)
    assert s.add([b'{"n":0,"pad":"%s"}' % (b"x" * 60_000)]) == [TooBigToPush(1)]
    p = FeedProvider()
    subscribe(p, T0, 0, 1)
    actions = p.on_push_oversized(T0, HERE)
    assert of(ReadBucketState, actions) == [ReadBucketState(HERE)]
    assert published(finish_sync(p, T0, 1)) == [SubfeedUploaded(FEED, SUB, 1)]


def test_a_published_subfeed_keeps_its_bucket_copy_current_with_nobody_subscribed():
    p = FeedProvider()
    # Published with messages: the bucket is brought up to date at once, and announced.
    assert p.set_published(T0, [HERE], {(FEED, SUB): 1200}) == [ReadBucketState(HERE)]
    assert p.subfeeds() == {(FEED, SUB)} and p.subfeeds("lab") == {(FEED, SUB)}
    assert published(finish_sync(p, T0, 1200)) == [SubfeedUploaded(FEED, SUB, 1200)]
    assert p.set_published(T0, [HERE], {(FEED, SUB): 1200}) == []  # unchanged: nothing to do
    # Growth: no inline push (nobody listens), a debounced bucket update.
    assert p.on_local_counts(T0 + 1, {(FEED, SUB): 1201}) == []
    assert p.next_deadline() == T0 + 1 + BUCKET_DEBOUNCE_SECONDS
    assert p.on_timer(T0 + 1 + BUCKET_DEBOUNCE_SECONDS) == [ReadBucketState(HERE, known_count=1200)]
    finish_sync(p, T0 + 2, 1201)
    # The channel reconnects: brought up to date again (appends may have happened offline),
    # from the head read again (another node may have written it meanwhile).
    assert of(ReadBucketState, p.on_connected(T0 + 3, WALL0 + 3, "lab", {(FEED, SUB): 1205})) == [
        ReadBucketState(HERE)]
    finish_sync(p, T0 + 3, 1205)
    assert p.on_connected(T0 + 4, WALL0 + 4, "other", {(FEED, SUB): 1205}) == []
    # Unpublished: no more updates.
    assert p.set_published(T0 + 5, [], {}) == [] and p.subfeeds() == set()
    assert p.on_local_counts(T0 + 6, {(FEED, SUB): 1300}) == [] and p.next_deadline() is None


def test_an_empty_published_subfeed_is_uploaded_once_it_has_messages():
    p = FeedProvider()
    assert p.set_published(T0, [HERE], {(FEED, SUB): 0}) == []
    assert p.on_local_counts(T0 + 1, {(FEED, SUB): 1}) == []
    assert p.on_timer(T0 + 1 + BUCKET_DEBOUNCE_SECONDS) == [ReadBucketState(HERE)]


def test_a_renewal_that_crossed_pushes_in_flight_is_not_pushed_them_again_but_a_reader_after_a_gap_is():
    # bench/network/bench_fanout.py: with N readers renewing while the owner appends, every
    # renewal sent just before a push reached it re-pushed that range to all N readers (N^2).
    p = FeedProvider()
    subscribe(p, T0, 10, 10)
    assert p.on_local_counts(T0 + 1, {(FEED, SUB): 12}) == [PushRange(HERE, 10, 12)]
    # A reader's renewal written before the push reached it: nothing is pushed again.
    assert not of(PushRange, subscribe(p, T0 + 1.01, 10, 12, renewal=True))
    assert not of(PushRange, subscribe(p, T0 + 1.5, 11, 12, renewal=True))
    # A reader that dropped the push (a gap) and caught up from a bucket still behind
    # subscribes without `renewal`: pushed at once, however recent the push.
    assert of(PushRange, subscribe(p, T0 + 1.5, 10, 12)) == [PushRange(HERE, 10, 12)]
    # So is every subscription of an older reader (it never says `renewal`).
    assert of(PushRange, subscribe(p, T0 + 1.6, 11, 12)) == [PushRange(HERE, 11, 12)]
    # A renewal further behind than the recent pushes still gets the whole missing range.
    assert of(PushRange, subscribe(p, T0 + 1.7, 8, 12, renewal=True)) == [PushRange(HERE, 8, 12)]
    # ... and that push counts as recent for the next renewals.
    assert not of(PushRange, subscribe(p, T0 + 1.8, 9, 12, renewal=True))
    # Once the grace has passed, a renewal still behind (it lost the push) gets it again.
    later = T0 + 1.8 + REPUSH_GRACE_SECONDS + 0.1
    assert of(PushRange, subscribe(p, later, 10, 12, renewal=True)) == [PushRange(HERE, 10, 12)]
    # Messages not pushed yet (the store grew before the provider heard of it) are pushed to a
    # renewal, without the recent ones it crossed; the growth then pushes nothing again.
    assert of(PushRange, subscribe(p, later + 0.1, 11, 13, renewal=True)) == [PushRange(HERE, 12, 13)]
    assert p.on_local_counts(later + 0.2, {(FEED, SUB): 13}) == []


def test_the_owner_tells_current_readers_what_it_and_the_bucket_hold_once_an_interval():
    p = FeedProvider()
    held = [Publish("lab", SubfeedsHeld(FEED, ((SUB, 5),)))]
    # Not before the bucket is known to hold the subfeed's messages.
    assert not of(Publish, subscribe(p, T0, 5, 5))
    assert p.on_timer(T0 + 1) == [ReadBucketState(HERE)]
    finish_sync(p, T0 + 1.1, 5, head(5))
    assert of(Publish, subscribe(p, T0 + 20, 5, 5, renewal=True)) == held
    # Said for every reader of the channel at once: not again within the interval.
    assert not of(Publish, subscribe(p, T0 + 25, 5, 5, renewal=True))
    assert not of(Publish, subscribe(p, T0 + 20 + HELD_MIN_INTERVAL_SECONDS - 1, 5, 5))
    assert of(Publish, subscribe(p, T0 + 20 + HELD_MIN_INTERVAL_SECONDS, 5, 5)) == held
    # A reader behind is pushed, not told; a replica never says it (others may hold more).
    later = T0 + 20 + 2 * HELD_MIN_INTERVAL_SECONDS
    assert of(Publish, subscribe(p, later, 4, 5)) == [] and of(PushRange, subscribe(p, later, 4, 5))
    q = FeedProvider()
    subscribe(q, T0, 5, 5, owns=False)
    q.on_timer(T0 + 1)
    finish_sync(q, T0 + 1.1, 5, head(5))
    assert not of(Publish, subscribe(q, T0 + 20, 5, 5, owns=False))
    # A batched renewal of many subfeeds: one message per 500 of those due.
    r = FeedProvider()
    hashes = [f"{i:040x}" for i in range(600)]
    wheres = [SubfeedOnChannel("lab", FEED, h) for h in hashes]
    counts = {(FEED, h): 3 for h in hashes}
    renewal = SubscribeToSubfeeds(FEED, tuple((h, 3) for h in hashes), renewal=True).each()
    r.on_subscribe_many(T0, WALL0, "lab", READER, renewal, may_provide=True, sender_allowed=True,
                        local_counts=counts, owns_feed=True)
    assert len(r.on_timer(T0 + 1)) == 600  # each bucket copy read once
    for where in wheres:
        finish_sync(r, T0 + 2, 3, head(3), where)
    actions = r.on_subscribe_many(T0 + 20, WALL0 + 20, "lab", READER, renewal, may_provide=True,
                                  sender_allowed=True, local_counts=counts, owns_feed=True)
    said = [a.message for a in of(Publish, actions)]
    assert [len(m.subfeeds) for m in said] == [500, 100]
    assert {pair for m in said for pair in m.subfeeds} == {(h, 3) for h in hashes}


# ============================================================================ unsigned pushes
def test_a_subscription_says_whether_its_reader_takes_unsigned_pushes():
    """This version's readers always say so; a message that does not (an older node's) parses
    as not taking them; the flag must be a boolean."""
    assert SubscribeToSubfeed(FEED, SUB, 3).to_body()["unsigned_pushes"] is True
    many = SubscribeToSubfeeds(FEED, ((SUB, 3), ("ef" * 20, 4)))
    assert many.to_body()["unsigned_pushes"] is True
    assert all(m.unsigned_pushes for m in parse("request-feeds", many.to_body()).each())
    old = {"type": "subscribeToSubfeed", "feed_id": FEED, "subfeed_hash": SUB, "position": 3}
    assert parse("request-feeds", old).unsigned_pushes is False
    old_many = {"type": "subscribeToSubfeeds", "feed_id": FEED, "subfeeds": [[SUB, 3]]}
    assert not any(m.unsigned_pushes for m in parse("request-feeds", old_many).each())
    for bad in ("yes", 1, None):
        with pytest.raises(MalformedFeedMessage, match="unsigned_pushes"):
            parse("request-feeds", {**old, "unsigned_pushes": bad})
        with pytest.raises(MalformedFeedMessage, match="unsigned_pushes"):
            parse("request-feeds", {**old_many, "unsigned_pushes": bad})
    assert all(m.unsigned_pushes for m in batch_subscriptions([SubscribeToSubfeed(FEED, SUB, 1),
                                                              SubscribeToSubfeed(FEED, "ef" * 20, 2)])
               for m in (m.each() if isinstance(m, SubscribeToSubfeeds) else [m]))


def test_pushes_are_signed_while_any_reader_did_not_say_it_takes_them_unsigned():
    p = FeedProvider()

    def sub(now, position, count, *, unsigned, reader=READER):
        message = SubscribeToSubfeed(FEED, SUB, position, unsigned_pushes=unsigned)
        return of(PushRange, p.on_subscribe(now, WALL0 + now - T0, "lab", reader, message,
                                            may_provide=True, sender_allowed=True, local_count=count,
                                            owns_feed=True))

    assert sub(T0, 3, 5, unsigned=True) == [PushRange(HERE, 3, 5, signed=False)]
    assert p.on_local_counts(T0 + 1, {(FEED, SUB): 6}) == [PushRange(HERE, 5, 6, signed=False)]
    # An older reader subscribes too: one push reaches both, so it is signed from now on...
    assert sub(T0 + 2, 4, 6, unsigned=False, reader="f2" * 32) == [PushRange(HERE, 4, 6, signed=True)]
    assert p.on_local_counts(T0 + 3, {(FEED, SUB): 7}) == [PushRange(HERE, 6, 7, signed=True)]
    # ... while the newer one renews ...
    sub(T0 + 30, 7, 7, unsigned=True)
    assert p.on_local_counts(T0 + 31, {(FEED, SUB): 8}) == [PushRange(HERE, 7, 8, signed=True)]
    # ... until the older one's subscription has run out (it did not renew).
    end = T0 + 2 + SUBSCRIPTION_TTL_SECONDS
    assert p.on_local_counts(end - 0.5, {(FEED, SUB): 9}) == [PushRange(HERE, 8, 9, signed=True)]
    assert p.on_local_counts(end, {(FEED, SUB): 10}) == [PushRange(HERE, 9, 10, signed=False)]

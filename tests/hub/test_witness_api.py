"""The hub as witness: POST /api/witness (spec/witness.md §4.1), on a real hub process."""

from __future__ import annotations

import sqlite3
import time

import pytest

import kachery_feeds as kf
from kachery_feeds.checkpoints import checkpoint_from_last, parse_cosignature_line, verify_cosignature
from kachery_node.errors import HubRequestError


def _refusal(call) -> HubRequestError:
    with pytest.raises(HubRequestError) as info:
        call()
    return info.value


@pytest.fixture
def provider(hub, make_actor, channel_name):
    owner, node = make_actor("owner"), make_actor("node")
    owner.client.create_channel(channel_name)
    node.client.request_roles(channel_name, node.node_id, ["provide-feeds", "request-feeds"])
    owner.client.grant(channel_name, node.node_id, ["provide-feeds", "request-feeds"])
    return node


def _lines(sf, start=0, end=None):
    return [x.decode() for x in sf.get_signed_messages(start, end)]


def test_cosign_refusals_and_history(hub, provider, channel_name, make_actor, tmp_path):
    sf = kf.open_store(tmp_path / "f.db").create_feed().load_subfeed("s")
    for i in range(4):
        sf.append_message({"i": i})  # each signed: every count is a checkpoint
    ask = provider.client.witness_request
    where = {"channel": channel_name, "feed_id": sf.feed_id, "subfeed_hash": sf.subfeed_hash}
    # The witness holds nothing: sending only the last message is answered with where to start.
    err = _refusal(lambda: ask("cosign_checkpoint", **where, lines=_lines(sf, 3)))
    assert (err.status, err.code, err.details["reason"], err.details["size"]) == (
        409, "witness_refused", "missing_messages", 0)
    t0 = int(time.time())
    answer = ask("cosign_checkpoint", **where, lines=_lines(sf))
    assert answer["witness"] == hub.hub_id
    cp = checkpoint_from_last(sf.feed_id, sf.subfeed_hash, sf.get_signed_messages(3)[0])
    assert answer["checkpoint"] == cp.text().decode()
    cos = parse_cosignature_line(answer["cosignature"])
    assert verify_cosignature(cp, cos) and cos.witness == hub.hub_id and abs(cos.timestamp - t0) <= 2
    # An older checkpoint is stale; a rival history is a fork, proven.
    err = _refusal(lambda: ask("cosign_checkpoint", **where, lines=_lines(sf, 0, 2)))
    assert (err.details["reason"], err.details["size"]) == ("stale_checkpoint", 4)
    with sqlite3.connect(sf._store.path) as src, sqlite3.connect(tmp_path / "clone.db") as dst:
        src.backup(dst)
    clone = kf.open_store(tmp_path / "clone.db").load_subfeed(sf.uri)
    sf.append_message({"i": "a"})
    clone.append_message({"i": "b"})
    ask("cosign_checkpoint", **where, lines=_lines(sf, 4))
    err = _refusal(lambda: ask("cosign_checkpoint", **where, lines=_lines(clone, 4)))
    assert err.details["reason"] == "fork"
    assert kf.verify_fork_proof(err.details["proof"].encode()).position == 4
    sf.append_message({"i": "a2"})
    err = _refusal(lambda: ask("cosign_checkpoint", **where, lines=_lines(sf, 5)))
    assert err.details["reason"] == "forked"
    history = ask("witness_history", **where)
    assert [row["size"] for row in history["cosignatures"]] == [4, 5]
    assert history["fork_proofs"] and kf.verify_fork_proof(history["fork_proofs"][0].encode()).position == 4
    # In the hub's log, the refusals that are steps of the protocol (every provider's first
    # checkpoint of a subfeed meets "missing_messages") are INFO; a fork is a WARNING.
    refusals = {reason: line.split()[2] for line in hub.log().splitlines()
                if f"from {provider.node_id[:12]}" in line and "witness_refused" in line
                for reason in ("missing_messages", "stale_checkpoint", "fork", "forked")
                if f": {reason}:" in line}
    assert refusals == {"missing_messages": "INFO", "stale_checkpoint": "INFO", "fork": "WARNING",
                        "forked": "WARNING"}, hub.log()[-3000:]


def test_bad_witness_requests_change_nothing(hub, provider, channel_name, make_actor, tmp_path):
    sf = kf.open_store(tmp_path / "f.db").create_feed().load_subfeed("s")
    sf.append_messages([{"i": i} for i in range(2)])
    ask = provider.client.witness_request
    where = {"channel": channel_name, "feed_id": sf.feed_id, "subfeed_hash": sf.subfeed_hash}
    for bad in ([], ["not a wire line"], [1], "x"):
        err = _refusal(lambda b=bad: ask("cosign_checkpoint", **where, lines=b))
        assert err.status in (400, 409), err
    err = _refusal(lambda: ask("cosign_checkpoint", **{**where, "feed_id": "AB"}, lines=_lines(sf)))
    assert err.code == "malformed_request"
    forged = _lines(sf)
    forged[-1] = forged[-1][:-4] + "0000"
    err = _refusal(lambda: ask("cosign_checkpoint", **where, lines=forged))
    assert err.details["reason"] == "invalid"
    err = _refusal(lambda: ask("report_fork", channel=channel_name, proof="{}"))
    assert err.code == "malformed_request"
    err = _refusal(lambda: ask("nonsense", channel=channel_name))
    assert err.code == "malformed_request"
    assert ask("witness_history", **where)["cosignatures"] == []  # nothing was cosigned
    # Only providers of the channel may ask for cosignatures (and only members for anything).
    reader = make_actor("reader")
    err = _refusal(lambda: reader.client.witness_request("cosign_checkpoint", **where, lines=_lines(sf)))
    assert err.code == "not_allowed"


def test_the_channel_page_shows_forks(hub, make_actor, channel_name, tmp_path):
    import httpx

    owner, node = make_actor("owner"), make_actor("node")
    owner.client.create_channel(channel_name)
    node.client.request_roles(channel_name, node.node_id, ["provide-feeds"])
    owner.client.grant(channel_name, node.node_id, ["provide-feeds"])
    sf = kf.open_store(tmp_path / "f.db").create_feed().load_subfeed("s")
    sf.append_message({"i": 0})
    with sqlite3.connect(sf._store.path) as src, sqlite3.connect(tmp_path / "clone.db") as dst:
        src.backup(dst)
    clone = kf.open_store(tmp_path / "clone.db").load_subfeed(sf.uri)
    sf.append_message({"i": "a"})
    clone.append_message({"i": "b"})
    where = {"channel": channel_name, "feed_id": sf.feed_id, "subfeed_hash": sf.subfeed_hash}
    with httpx.Client(base_url=hub.url, timeout=10) as browser:
        browser.get(owner.client.login_link().removeprefix(hub.url), follow_redirects=True)
        assert 'id=forks' not in browser.get(f"/channels/{channel_name}").text
        node.client.witness_request("cosign_checkpoint", **where, lines=_lines(sf))
        _refusal(lambda: node.client.witness_request("cosign_checkpoint", **where, lines=_lines(clone, 1)))
        page = browser.get(f"/channels/{channel_name}").text
    assert "id=forks" in page and f"feed://{sf.feed_id}/~{sf.subfeed_hash}" in page and "message 1" in page


def test_the_witness_reads_segments_from_the_channels_bucket(hub, provider, channel_name, tmp_path):
    """spec/witness.md §4.1 ``segments_to``: the hub imports the messages it lacks from the
    segments in its own bucket (checked as lines are); the request carries only the rest."""
    import httpx

    from kachery_node.protocol.bucket_layout import pathify
    from kachery_node.protocol.feed_bucket import segment_for

    sf = kf.open_store(tmp_path / "f.db").create_feed().load_subfeed("s")
    for start in range(0, 3400, 700):
        sf.append_messages([{"i": i} for i in range(start, min(3400, start + 700))])
    ask = provider.client.witness_request
    where = {"channel": channel_name, "feed_id": sf.feed_id, "subfeed_hash": sf.subfeed_hash}
    prefix = f"feeds/{pathify(sf.feed_id)}/subfeeds/{pathify(sf.subfeed_hash)}/segments/"
    for i in range(3):
        data = segment_for(sf, i)
        [url] = provider.client.upload_urls(channel_name, [{"path": prefix + str(i), "size": len(data)}])
        assert httpx.put(url, content=data, timeout=30).status_code == 200
    # Without the field, lines from 3000 start past the witness's count.
    err = _refusal(lambda: ask("cosign_checkpoint", **where, lines=_lines(sf, 3000)))
    assert (err.details["reason"], err.details["size"]) == ("missing_messages", 0)
    answer = ask("cosign_checkpoint", **where, segments_to=3, lines=_lines(sf, 3000))
    cp = checkpoint_from_last(sf.feed_id, sf.subfeed_hash, sf.get_signed_messages(3399)[0])
    assert answer["checkpoint"] == cp.text().decode()
    # A segment the bucket does not hold: the witness says how far it got.
    sf.append_messages([{"i": i} for i in range(3400, 5200)])
    err = _refusal(lambda: ask("cosign_checkpoint", **where, segments_to=5, lines=_lines(sf, 5000)))
    assert (err.details["reason"], err.details["size"]) == ("missing_messages", 3400)
    for bad in (-1, "3", True, 2**60):
        err = _refusal(lambda b=bad: ask("cosign_checkpoint", **where, segments_to=b, lines=_lines(sf, 3399)))
        assert err.code == "malformed_request"


def _upload_segments(provider, channel_name, sf, indices, tamper=None):
    import httpx

    from kachery_node.protocol.bucket_layout import pathify
    from kachery_node.protocol.feed_bucket import segment_for

    prefix = f"feeds/{pathify(sf.feed_id)}/subfeeds/{pathify(sf.subfeed_hash)}/segments/"
    for i in indices:
        data = segment_for(sf, i)
        if tamper == i:
            data = data.replace(b'"i":1010', b'"i":9999')
        [url] = provider.client.upload_urls(channel_name, [{"path": prefix + str(i), "size": len(data)}])
        assert httpx.put(url, content=data, timeout=30).status_code == 200


@pytest.mark.parametrize("bucket", ["segments", "no segments", "tampered segment"])
@pytest.mark.trio
async def test_a_provider_falls_back_to_lines_when_the_hub_cannot_read_the_bucket(
        hub, provider, channel_name, tmp_path, caplog, bucket):
    """The provider side of ``segments_to`` (witness_driver.py) against the real hub: with the
    segments in the hub's bucket the hub reads them; without them (as with an older hub or a
    channel whose bucket is elsewhere: its count does not move) or with a tampered one
    (*invalid*), the provider sends the same range as lines; every way, the checkpoint is
    cosigned by the hub."""
    import logging

    import anyio
    import httpx

    from kachery_feeds.checkpoints import parse_witnessed_checkpoint
    from kachery_node.daemon.channel_link import BucketObjectMissing
    from kachery_node.daemon.witness_driver import WitnessDriver
    from kachery_node.identity import Keypair
    from kachery_node.protocol.bucket_layout import subfeed_checkpoint_path
    from kachery_node.protocol.feed_messages import SubfeedOnChannel
    from tests.daemon.memory_link import MemoryChannel, MemoryLink

    class HubWitnessLink(MemoryLink):
        """Pub-sub in memory; witness requests and the bucket (where the checkpoint object
        lands) the real hub's."""

        async def witness_request(self, type_, **fields):
            return await anyio.to_thread.run_sync(
                lambda: provider.client.witness_request(type_, channel=channel_name, **fields))

        async def bucket_get(self, path, start=None, end=None):
            answer = await anyio.to_thread.run_sync(
                lambda: httpx.get(f"{hub.url}/bucket/{path}", timeout=30))
            if answer.status_code == 404:
                raise BucketObjectMissing(path)
            answer.raise_for_status()
            return answer.content

        async def upload(self, path, data, *, progress=None):
            relative = path[len(channel_name) + 1:]

            def put():
                [url] = provider.client.upload_urls(channel_name, [{"path": relative, "size": len(data)}])
                httpx.put(url, content=data, timeout=30).raise_for_status()
            await anyio.to_thread.run_sync(put)

    store = kf.open_store(tmp_path / "owner.db")
    sf = store.create_feed().load_subfeed("s")
    for start in range(0, 3400, 700):
        sf.append_messages([{"i": i} for i in range(start, min(3400, start + 700))])
    if bucket == "segments":
        _upload_segments(provider, channel_name, sf, range(3))
    elif bucket == "tampered segment":
        _upload_segments(provider, channel_name, sf, range(3), tamper=1)
    memory = MemoryChannel(channel_name)
    keys = Keypair.generate()
    memory.membership[keys.public_hex] = frozenset(["provide-feeds"])
    link = HubWitnessLink(memory, keys, frozenset(["provide-feeds"]), None)
    where = SubfeedOnChannel(channel_name, sf.feed_id, sf.subfeed_hash)
    caplog.set_level(logging.INFO, logger="kachery.feeds")
    await WitnessDriver(store).witness(link, where, 3400)
    path = subfeed_checkpoint_path(channel_name, sf.feed_id, sf.subfeed_hash)
    obj = parse_witnessed_checkpoint(httpx.get(f"{hub.url}/bucket/{path}", timeout=30).content)
    assert obj.checkpoint.size == 3400 and obj.witnesses() == [hub.hub_id]
    read_bucket = "from its bucket" in caplog.text
    assert read_bucket == (bucket == "segments")

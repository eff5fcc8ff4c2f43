# ruff: noqa: E501
"""The embedded relay from the outside: real hub processes, real WebSocket connections."""

from __future__ import annotations

from contextlib import AsyncExitStack, asynccontextmanager

import orjson
import psutil
import pytest
import trio
import trio_websocket

from kachery_node.errors import HubRequestError
from kachery_node.hub import relay as relay_module
from kachery_node.identity import Keypair
from kachery_node.protocol import relay_frames
from kachery_node.protocol.pubsub_tokens import issue_token
from kachery_node.transport.pubsub.open_pubsub import open_pubsub

from .conftest import Actor, HubProcess

pytestmark = pytest.mark.trio

#: Messages are bytes (pub-sub v2); these tests send small JSON documents as their bytes.
j = orjson.dumps


def data(message) -> object:
    return orjson.loads(message.data)


def ops_of(frame: str | bytes) -> list[dict]:
    """A raw frame from the relay as a list of operations: JSON ones from a text frame, and
    ``{"op": "message", ...}`` for each record of a binary frame."""
    if isinstance(frame, bytes):
        return [{"op": "message", "band": r.band, "from": r.sender, "data": orjson.loads(r.message)}
                for r in relay_frames.decode_messages(frame)]
    ops = orjson.loads(frame)
    return ops if isinstance(ops, list) else [ops]


def auth_op(token: object, **extra: object) -> str:
    return orjson.dumps({"op": "auth", "token": token, "v": 2, **extra}).decode()


@pytest.fixture(scope="module")
def relay_hub(tmp_path_factory):
    h = HubProcess(tmp_path_factory.mktemp("relayhub"), "--heartbeat", "0.5", "--max-publish-rate", "50",
                   "--max-message-bytes", "2000")
    yield h
    h.stop()


@pytest.fixture(scope="module")
def short_hub(tmp_path_factory):
    h = HubProcess(tmp_path_factory.mktemp("shorthub"), "--token-ttl", "2", "--heartbeat", "0.5")
    yield h
    h.stop()


_n = iter(range(1000))


def setup_channel(hub, roles_by_label: dict[str, list[str]]) -> tuple[str, Actor, dict[str, Actor]]:
    owner = Actor(hub.url, "owner")
    name = f"relay.t{next(_n)}"
    owner.client.create_channel(name)
    actors = {}
    for label, roles in roles_by_label.items():
        a = Actor(hub.url, label)
        a.client.register_node(label)
        a.client.request_roles(name, a.node_id, roles)
        owner.client.grant(name, a.node_id, roles)
        actors[label] = a
    return name, owner, actors


async def creds(actor: Actor, channel: str) -> dict:
    return await trio.to_thread.run_sync(actor.client.pubsub_credentials, channel)


def relay_figures(owner: Actor, ch: str) -> dict:
    """The channel's relay figures from ``kachery hub status`` (its owner's view)."""
    [status] = [c for c in owner.client.hub_status()["channels"] if c["channel"] == ch]
    return status["relay"]


async def test_fan_out_between_requesters_and_providers(relay_hub):
    ch, owner, a = setup_channel(relay_hub, {"req": ["request-files"], "p1": ["provide-files"], "p2": ["provide-files"]})
    req_band, prov_band = f"{ch}-requestFiles", f"{ch}-provideFiles"
    async with open_pubsub(await creds(a["req"], ch)) as req, open_pubsub(await creds(a["p1"], ch)) as p1, \
            open_pubsub(await creds(a["p2"], ch)) as p2:
        assert req.connected["capability"] == {req_band: ["publish"], prov_band: ["subscribe"]}
        await req.subscribe(prov_band)
        await p1.subscribe(req_band)
        await p2.subscribe(req_band)
        for i in range(20):
            await req.publish(req_band, j({"type": "requestFile", "i": i}))
        for p in (p1, p2):
            got = [await p.receive(timeout=5) for _ in range(20)]
            assert [data(m)["i"] for m in got] == list(range(20))
            assert {m.sender for m in got} == {a["req"].node_id} and {m.band for m in got} == {req_band}
        await p1.publish(prov_band, j({"type": "uploadFileStatus", "status": "finished"}), ack=True)
        m = await req.receive(timeout=5)
        assert (m.sender, data(m)["status"]) == (a["p1"].node_id, "finished")
    # The relay read the publishes off the socket itself (hub/direct_receive.py).
    figures = relay_figures(owner, ch)
    assert figures["messages_in"] == figures["messages_in_direct"] == 21, figures


async def test_capabilities_are_enforced_per_band(relay_hub):
    ch, _, a = setup_channel(relay_hub, {"req": ["request-files"], "prov": ["provide-files"]})
    other, _, _b = setup_channel(relay_hub, {"x": ["provide-files"]})
    async with open_pubsub(await creds(a["req"], ch)) as req, open_pubsub(await creds(a["prov"], ch)) as prov:
        await prov.subscribe(f"{ch}-requestFiles")
        for band in (f"{ch}-requestFiles", f"{ch}-requestFeeds", f"{other}-requestFiles", "anything"):
            with pytest.raises(HubRequestError) as info:
                await req.subscribe(band)
            assert info.value.code == "capability_denied"
        for band in (f"{ch}-provideFiles", f"{ch}-requestTasks", f"{other}-requestFiles"):
            with pytest.raises(HubRequestError) as info:
                await req.publish(band, j({"sneaky": True}), ack=True)
            assert info.value.code == "capability_denied"
        await req.publish(f"{ch}-requestFiles", j({"ok": 1}), ack=True)
        m = await prov.receive(timeout=5)
        assert data(m) == {"ok": 1}  # the refused publishes were never delivered
    assert "capability_denied" in relay_hub.log()


async def test_oversized_messages_and_rate_limit(relay_hub):
    ch, owner, a = setup_channel(relay_hub, {"req": ["request-files"], "prov": ["provide-files"]})
    band = f"{ch}-requestFiles"
    async with open_pubsub(await creds(a["req"], ch)) as req, open_pubsub(await creds(a["prov"], ch)) as prov:
        await prov.subscribe(band)
        with pytest.raises(HubRequestError) as info:
            await req.publish(band, j({"blob": "x" * 3000}), ack=True)
        assert info.value.code == "too_large"
        await req.publish(band, j({"after": "too_large"}), ack=True)  # the connection is still fine
        assert data(await prov.receive(timeout=5)) == {"after": "too_large"}
        # 50/s with a burst of 100: 300 at once must hit the limit
        for i in range(300):
            await req.publish(band, j({"i": i}))
        with pytest.raises(HubRequestError) as info:
            async for _ in req.messages():
                pass
        assert info.value.code == "rate_limited"
        received = 0
        with trio.move_on_after(1):
            while True:
                await prov.receive(timeout=2)
                received += 1
        assert 50 <= received < 200
    assert "rate_limited" in relay_hub.log()
    figures = relay_figures(owner, ch)  # the fast path's too
    assert figures["messages_in"] == figures["messages_in_direct"] >= received + 1, figures


async def _expect_close(ws, within: float) -> int:
    with trio.fail_after(within):
        try:
            while True:
                await ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            return exc.reason.code


async def test_auth_is_required_and_checked(relay_hub):
    ch, _, a = setup_channel(relay_hub, {"req": ["request-files"]})
    good = (await creds(a["req"], ch))["token"]
    url = "ws" + relay_hub.url[4:] + "/pubsub"
    async with trio_websocket.open_websocket_url(url) as ws:  # publish before auth
        await ws.send_message(orjson.dumps([{"op": "publish", "band": f"{ch}-requestFiles", "data": 1}]).decode())
        reply = orjson.loads(await ws.get_message())[0]
        assert (reply["op"], reply["code"]) == ("error", "invalid_token")
        assert await _expect_close(ws, 5) == 4001
    forged = issue_token(Keypair.generate(), node_id=a["req"].node_id, channel=ch,
                         capability={f"{ch}-requestFiles": ["publish", "subscribe"]}, now_ms=int(trio.current_time()))
    payload, sig = good.split(".")
    tampered = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1] + "." + sig
    for token in (forged, tampered, "garbage", 12):
        async with trio_websocket.open_websocket_url(url) as ws:
            await ws.send_message(auth_op(token, id=1))
            reply = orjson.loads(await ws.get_message())[0]
            assert (reply["op"], reply["code"]) == ("error", "invalid_token"), token
            assert await _expect_close(ws, 5) == 4001
    async with trio_websocket.open_websocket_url(url) as ws:  # malformed frames: error, connection kept
        await ws.send_message(auth_op(good, id=1))
        assert orjson.loads(await ws.get_message())[0]["op"] == "connected"
        v1_publish = orjson.dumps({"op": "publish", "band": f"{ch}-requestFiles", "data": "x"}).decode()
        record = relay_frames.encode_publish(0, f"{ch}-requestFiles", b"m")
        for bad in ("{nope", "[1]", '{"op": "fly"}', '{"op": "publish"}', v1_publish,
                    b"", b"\x07garbage", record[:-1], record + b"\x01"):
            await ws.send_message(bad)
            while True:
                reply = orjson.loads(await ws.get_message())[0]
                if reply["op"] != "heartbeat":
                    break
            assert (reply["op"], reply["code"]) == ("error", "malformed_request"), bad
            if bad == v1_publish:
                assert "binary frame" in reply["message"]
    async with trio_websocket.open_websocket_url(url) as ws:  # binary publish before auth
        await ws.send_message(relay_frames.encode_publish(3, f"{ch}-requestFiles", b"m"))
        reply = orjson.loads(await ws.get_message())[0]
        assert (reply["op"], reply["code"], reply["id"]) == ("error", "invalid_token", 3)
        assert await _expect_close(ws, 5) == 4001


async def test_a_version_1_client_is_told_to_upgrade(relay_hub):
    ch, _, a = setup_channel(relay_hub, {"req": ["request-files"]})
    good = (await creds(a["req"], ch))["token"]
    async with trio_websocket.open_websocket_url("ws" + relay_hub.url[4:] + "/pubsub") as ws:
        await ws.send_message(orjson.dumps({"op": "auth", "token": good, "id": 1}).decode())  # no "v"
        reply = orjson.loads(await ws.get_message())[0]
        assert (reply["op"], reply["code"], reply["status"]) == ("error", "unsupported_version", 426)
        assert "v2" in reply["message"] and "upgrade" in reply["message"]
        assert await _expect_close(ws, 5) == 4026


async def test_messages_travel_as_the_bytes_they_are(relay_hub):
    """Binary frames: a message's bytes arrive unchanged (no JSON escaping on the way), with
    the publisher the relay vouches for."""
    ch, _, a = setup_channel(relay_hub, {"req": ["request-files"], "prov": ["provide-files"]})
    band = f"{ch}-requestFiles"
    message = bytes(range(256)) + b'"\\\n\t' * 100
    async with open_pubsub(await creds(a["req"], ch)) as req, open_pubsub(await creds(a["prov"], ch)) as prov:
        await prov.subscribe(band)
        await req.publish(band, message, ack=True)
        m = await prov.receive(timeout=5)
        assert (m.band, m.sender, m.data) == (band, a["req"].node_id, message)


async def test_dead_connections_are_dropped_but_live_ones_kept(relay_hub):
    ch, _, a = setup_channel(relay_hub, {"req": ["request-files"]})
    c = await creds(a["req"], ch)
    url = "ws" + relay_hub.url[4:] + "/pubsub"
    async with open_pubsub(c) as live:  # answers heartbeats automatically
        async with trio_websocket.open_websocket_url(url) as silent:
            await silent.send_message(auth_op(c["token"]))
            beats = 0
            with trio.fail_after(5):
                try:
                    while True:
                        ops = ops_of(await silent.get_message())
                        beats += sum(op["op"] == "heartbeat" for op in ops)
                except trio_websocket.ConnectionClosed as exc:
                    code = exc.reason.code
            assert code == 4002 and beats >= 1
        await live.publish(f"{ch}-requestFiles", j({"still": "here"}), ack=True)
    assert "connection presumed dead" in relay_hub.log()


async def test_expired_token_and_in_band_renewal(short_hub):
    ch, owner, a = setup_channel(short_hub, {"req": ["request-files", "provide-files"], "prov": ["provide-files"]})
    band = f"{ch}-requestFiles"
    async with open_pubsub(await creds(a["req"], ch)) as doomed:
        await trio.sleep(2.3)
        with pytest.raises(HubRequestError) as info:
            await doomed.publish(band, j({"late": True}), ack=True)
        assert info.value.code in ("expired", "token_expired", "connection_closed")

    async def renew():
        return await creds(a["req"], ch)

    async with open_pubsub(await creds(a["req"], ch), renew=renew) as kept, \
            open_pubsub(await creds(a["prov"], ch), renew=lambda: creds(a["prov"], ch)) as prov:
        await kept.subscribe(band)
        await prov.subscribe(band)
        await trio.sleep(4.5)  # two token lifetimes
        await kept.publish(band, j({"renewed": True}), ack=True)
        assert data(await prov.receive(timeout=5)) == {"renewed": True}
        assert data(await kept.receive(timeout=5)) == {"renewed": True}  # echo: it subscribed too
        # the owner withdraws provide-files: at the next renewal the subscription goes
        await trio.to_thread.run_sync(lambda: owner.client.revoke(ch, a["req"].node_id, ["provide-files"]))
        with pytest.raises(HubRequestError) as info:
            await kept.receive(timeout=5)
        assert info.value.code == "unsubscribed"
        with pytest.raises(HubRequestError) as info:
            await kept.subscribe(band)
        assert info.value.code == "capability_denied"


async def test_revocation_and_deletion_take_effect_at_once(relay_hub):
    ch, owner, a = setup_channel(relay_hub, {"req": ["request-files"], "prov": ["provide-files"]})
    req_band, prov_band = f"{ch}-requestFiles", f"{ch}-provideFiles"
    async with open_pubsub(await creds(a["req"], ch)) as req, open_pubsub(await creds(a["prov"], ch)) as prov:
        await req.subscribe(prov_band)
        await prov.subscribe(req_band)
        await req.publish(req_band, j({"n": 1}), ack=True)
        assert data(await prov.receive(timeout=5)) == {"n": 1}
        # the owner revokes: the live connection loses the capability now, not at token expiry
        await trio.to_thread.run_sync(lambda: owner.client.revoke(ch, a["req"].node_id, ["request-files"]))
        with pytest.raises(HubRequestError) as info:
            await req.receive(timeout=5)
        assert info.value.code == "unsubscribed"
        with pytest.raises(HubRequestError) as info:
            await req.publish(req_band, j({"n": 2}), ack=True)
        assert info.value.code == "capability_denied"
        # deleting the channel withdraws everything from everyone
        await trio.to_thread.run_sync(lambda: owner.client.delete_channel(ch))
        with pytest.raises(HubRequestError) as info:
            await prov.receive(timeout=5)
        assert info.value.code == "unsubscribed"
        with pytest.raises(HubRequestError) as info:
            await prov.publish(prov_band, j({"n": 3}), ack=True)
        assert info.value.code == "capability_denied"
    with pytest.raises(HubRequestError) as info:
        await creds(a["prov"], ch)
    assert info.value.code == "unknown_channel"


async def try_open(credentials: dict) -> str | None:
    """Open a relay connection with ``credentials``: None if accepted, else the refusal's code."""
    try:
        async with open_pubsub(credentials):
            return None
    except HubRequestError as exc:
        return exc.code
    except BaseExceptionGroup as group:  # raised inside the client's nursery
        leaves = group.subgroup(HubRequestError)
        assert leaves is not None, group
        return leaves.exceptions[0].code


async def refusal(credentials: dict) -> str:
    """The code with which the relay refuses ``credentials``."""
    code = await try_open(credentials)
    assert code is not None, "the relay accepted the token"
    return code


async def test_tokens_from_before_a_revocation_are_refused_also_after_a_restart(tmp_path):
    hub = HubProcess(tmp_path / "hub", "--heartbeat", "0.5")
    try:
        ch, owner, a = setup_channel(hub, {"q": ["request-files", "provide-files"]})
        q, req_band, prov_band = a["q"], f"{ch}-requestFiles", f"{ch}-provideFiles"
        old = await creds(q, ch)
        async with open_pubsub(old) as conn:
            await conn.subscribe(req_band)
            await trio.to_thread.run_sync(lambda: owner.client.revoke(ch, q.node_id, ["provide-files"]))
            with pytest.raises(HubRequestError) as info:
                await conn.receive(timeout=5)
            assert info.value.code == "unsubscribed"
            # Renewing with the token from before the revocation is refused: the connection keeps
            # its narrowed rights and cannot subscribe to requestFiles again.
            with pytest.raises(HubRequestError) as info:
                await conn.renew_token(old)
            assert info.value.code == "invalid_token"
            with pytest.raises(HubRequestError) as info:
                await conn.subscribe(req_band)
            assert info.value.code == "capability_denied"
        # A new connection with the old token is refused too.
        assert await refusal(old) == "invalid_token"
        # A token issued after the decision carries the narrowed rights, and works.
        new = await creds(q, ch)
        async with open_pubsub(new) as conn:
            await conn.subscribe(prov_band)
            with pytest.raises(HubRequestError) as info:
                await conn.subscribe(req_band)
            assert info.value.code == "capability_denied"
        assert "issued before a revocation" in hub.log()
        # The decision survives a restart (same hub key, so the old token still verifies).
        hub.restart()
        relay_url = "ws" + hub.url[4:] + "/pubsub"
        old, new = {**old, "url": relay_url}, {**new, "url": relay_url}
        assert await refusal(old) == "invalid_token"
        async with open_pubsub(new) as conn:
            await conn.subscribe(prov_band)
    finally:
        hub.stop()


async def test_tokens_of_a_deleted_channel_do_not_work_for_a_new_one_of_that_name(relay_hub):
    ch, owner, a = setup_channel(relay_hub, {"q": ["provide-files"]})
    q = a["q"]
    old = await creds(q, ch)
    owner.client.delete_channel(ch)
    owner.client.create_channel(ch)
    q.client.request_roles(ch, q.node_id, ["provide-files"])
    owner.client.grant(ch, q.node_id, ["provide-files"])
    assert await refusal(old) == "invalid_token"
    async with open_pubsub(await creds(q, ch)) as conn:
        await conn.subscribe(f"{ch}-requestFiles")


CLIENT_MAX_FRAME = 16 << 20  # what kachery's relay client accepts (pubsub/embedded.py)
RELAY_MAX_FRAME = 1 << 20  # what the relay sends at most (spec/pubsub.md §3)


@pytest.fixture(scope="module")
def bulk_hub(tmp_path_factory):
    """A hub that lets one node publish tens of MB quickly and keeps a large backlog."""
    h = HubProcess(tmp_path_factory.mktemp("bulkhub"), "--max-publish-rate", "100000",
                   "--max-queue-bytes", str(256 << 20))
    yield h
    h.stop()


@asynccontextmanager
async def subscribed_socket(hub, credentials: dict, band: str):
    """A raw WebSocket (the client library's frame cap, no read-ahead) subscribed to ``band``:
    while the test does not read it, the relay's writes stall as a paused subscriber's do."""
    async with trio_websocket.open_websocket_url(
            "ws" + hub.url[4:] + "/pubsub", max_message_size=CLIENT_MAX_FRAME, message_queue_size=1,
            connect_timeout=10, disconnect_timeout=2) as ws:
        await ws.send_message(orjson.dumps([{"op": "auth", "token": credentials["token"], "v": 2},
                                            {"op": "subscribe", "band": band, "id": 1}]).decode())
        with trio.fail_after(10):
            while not any(op.get("op") == "subscribed" for op in ops_of(await ws.get_message())):
                pass
        yield ws


async def publish_bulk(pub, band: str, count: int, size: int) -> None:
    """Publish ``count`` messages of ``size`` bytes, acknowledging every 15th (the client batches
    unacknowledged publishes into one frame, which must stay under the relay's 1 MiB)."""
    blob = "x" * size
    for i in range(count):
        await pub.publish(band, j({"i": i, "blob": blob}), ack=(i % 15 == 14 or i == count - 1))


async def test_a_paused_subscribers_backlog_comes_in_frames_its_client_accepts(bulk_hub):
    ch, _, a = setup_channel(bulk_hub, {"pub": ["request-files"], "sub": ["provide-files"]})
    band, count = f"{ch}-requestFiles", 800
    async with subscribed_socket(bulk_hub, await creds(a["sub"], ch), band) as sub:
        async with open_pubsub(await creds(a["pub"], ch)) as pub:
            # 40 MB while the subscriber does not read: most of it waits in the relay.
            with trio.fail_after(60):
                await publish_bulk(pub, band, count, 50_000)
        got, largest = [], 0
        with trio.fail_after(60):
            while len(got) < count:
                frame = await sub.get_message()  # ConnectionClosed (1009) if a frame is too large
                largest = max(largest, len(frame if isinstance(frame, bytes) else frame.encode()))
                got += [op["data"]["i"] for op in ops_of(frame) if op["op"] == "message"]
        assert got == list(range(count))
        assert largest <= RELAY_MAX_FRAME, largest


async def wait_for_log(hub, text: str, timeout: float) -> None:
    with trio.fail_after(timeout):
        while text not in hub.log():
            await trio.sleep(0.05)


async def test_a_stalled_subscriber_is_dropped_and_the_hub_stays_small(tmp_path):
    hub = HubProcess(tmp_path / "hub", "--max-publish-rate", "100000", "--max-queue-bytes", str(4 << 20))
    try:
        ch, _, a = setup_channel(hub, {"pub": ["request-files"], "sub": ["provide-files"]})
        band, count = f"{ch}-requestFiles", 3000
        proc = psutil.Process(hub.proc.pid)
        base = peak = proc.memory_info().rss
        async with subscribed_socket(hub, await creds(a["sub"], ch), band) as sub, \
                open_pubsub(await creds(a["pub"], ch)) as pub:
            async def sample_rss() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, proc.memory_info().rss)
                    await trio.sleep(0.01)

            async with trio.open_nursery() as watch:
                watch.start_soon(sample_rss)
                # 90 MB to a subscriber that does not read.
                with trio.fail_after(90):
                    await publish_bulk(pub, band, count, 30_000)
                await wait_for_log(hub, "slow consumer", 10)
                watch.cancel_scope.cancel()
            # The subscriber reads again: what was in flight, then the close.
            received = 0
            with trio.fail_after(30), pytest.raises(trio_websocket.ConnectionClosed) as closed:
                while True:
                    received += sum(op["op"] == "message" for op in ops_of(await sub.get_message()))
            assert closed.value.reason.code == 4008
            assert received < count
            # The publisher and the relay carry on.
            await pub.publish(band, j({"after": "drop"}), ack=True)
        grew = (peak - base) / 2**20
        assert grew < 48, f"hub grew by {grew:.0f} MiB"
    finally:
        hub.stop()


async def test_a_subscriber_that_never_reads_again_is_disconnected_after_its_close_grace(tmp_path):
    """The relay closes a stalled subscriber (4008), but its socket takes nothing more, not
    even the close frame: the hub's sends to it block, and the ASGI server's send cannot be
    cancelled. The connection must still end (its socket aborted) within the close grace,
    freeing the node's connection slot, not hang for as long as the peer keeps its TCP window
    shut."""
    hub = HubProcess(tmp_path / "hub", "--max-publish-rate", "100000", "--max-queue-bytes", str(2 << 20))
    try:
        ch, owner, a = setup_channel(hub, {"pub": ["request-files"], "sub": ["provide-files"]})
        band = f"{ch}-requestFiles"

        async def sub_connections() -> int:
            status = await trio.to_thread.run_sync(owner.client.hub_status)
            [c] = [c for c in status["channels"] if c["channel"] == ch]
            return next((n["relay_connections"] for n in c["nodes"] if n["node"] == a["sub"].node_id), 0)

        async with subscribed_socket(hub, await creds(a["sub"], ch), band), \
                open_pubsub(await creds(a["pub"], ch)) as pub:
            assert await sub_connections() == 1
            with trio.fail_after(90):  # 30 MB to a subscriber that does not read
                await publish_bulk(pub, band, 1000, 30_000)
            await wait_for_log(hub, "slow consumer", 10)
            with trio.fail_after(relay_module.CLOSE_GRACE_S + 15):
                while await sub_connections():
                    await trio.sleep(0.2)
            await pub.publish(band, j({"after": "drop"}), ack=True)  # the relay carries on
        assert "aborting" in hub.log()
        assert "Traceback" not in hub.log() and " ERROR " not in hub.log(), hub.log()
    finally:
        hub.stop()


async def test_the_publish_rate_is_per_node_whatever_its_connections(relay_hub):
    ch, _, a = setup_channel(relay_hub, {"req": ["request-files"], "prov": ["provide-files"]})
    band, token = f"{ch}-requestFiles", await creds(a["req"], ch)
    async with open_pubsub(await creds(a["prov"], ch)) as prov, AsyncExitStack() as stack:
        await prov.subscribe(band)
        pubs = [await stack.enter_async_context(open_pubsub(token)) for _ in range(5)]
        start = trio.current_time()
        # 5 connections x 100: each alone is within the burst (100), together they are not.
        for i in range(100):
            for k, pub in enumerate(pubs):
                await pub.publish(band, j({"k": k, "i": i}))
        for k, pub in enumerate(pubs):  # a last message on each, accepted once allowance returns
            with trio.fail_after(10):
                while True:
                    try:
                        await pub.publish(band, j({"k": k, "done": True}), ack=True)
                        break
                    except HubRequestError as exc:
                        assert exc.code == "rate_limited"
                        await trio.sleep(0.05)
        elapsed = trio.current_time() - start
        flood, done = 0, 0
        with trio.fail_after(10):
            while done < len(pubs):  # each connection's last message follows its accepted ones
                m = await prov.receive(timeout=10)
                done += data(m).get("done", False)
                flood += "i" in data(m)
        assert 100 <= flood <= 100 + 50 * elapsed + 10, (flood, elapsed)
    assert "all its connections together" in relay_hub.log()


async def test_connections_per_node_are_capped(relay_hub):
    ch, _, a = setup_channel(relay_hub, {"req": ["request-files"], "other": ["request-files"]})
    token = await creds(a["req"], ch)
    async with AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(open_pubsub(token)) for _ in range(8)]
        assert await refusal(token) == "rate_limited"
        assert await refusal(await creds(a["req"], ch)) == "rate_limited"  # a new token too
        url = "ws" + relay_hub.url[4:] + "/pubsub"
        async with trio_websocket.open_websocket_url(url) as ws:
            await ws.send_message(auth_op(token["token"], id=1))
            reply = orjson.loads(await ws.get_message())[0]
            assert (reply["op"], reply["code"]) == ("error", "rate_limited")
            assert await _expect_close(ws, 5) == 4029
        async with open_pubsub(await creds(a["other"], ch)) as other:  # other nodes are not affected
            await other.publish(f"{ch}-requestFiles", j({"ok": 1}), ack=True)
        await conns[0].aclose()
        with trio.fail_after(10):  # the relay notices the close, then has room for one more
            while (code := await try_open(token)) == "rate_limited":
                await trio.sleep(0.05)
        assert code is None
    assert "relay connections on" in relay_hub.log()


async def test_fan_out_writes_straight_into_idle_subscribers_sockets_in_order(tmp_path):
    """A hub served in this process (``serve_hub``, as ``kachery hub serve`` runs it) so that its
    relay's counters can be read: messages to subscribers with nothing queued are written into
    their sockets at once (one frame built for all); the ones that arrive while a subscriber is
    not reading queue behind what its socket did not take; every subscriber gets every message,
    whole and in order."""
    from types import SimpleNamespace

    from kachery_node.hub.relay import DIRECT_MIN_INTERVAL_S
    from kachery_node.hub.serve import serve_hub

    async with trio.open_nursery() as nursery:
        hub = await nursery.start(serve_hub, tmp_path / "hub", "127.0.0.1", 0)
        where = SimpleNamespace(url=hub.public_url)
        ch, _, a = await trio.to_thread.run_sync(setup_channel, where, {
            "pub": ["request-files"], "s1": ["provide-files"], "s2": ["provide-files"]})
        band = f"{ch}-requestFiles"
        async with subscribed_socket(where, await creds(a["s1"], ch), band) as s1, \
                subscribed_socket(where, await creds(a["s2"], ch), band) as s2, \
                open_pubsub(await creds(a["pub"], ch)) as pub:
            # 1. One message at a time, each received before the next and spaced by more than
            # the relay's DIRECT_MIN_INTERVAL_S: all written directly.
            for i in range(20):
                await trio.sleep(DIRECT_MIN_INTERVAL_S * 1.5)
                await pub.publish(band, j({"i": i}), ack=True)
                for sub in (s1, s2):
                    with trio.fail_after(10):
                        assert [op["data"]["i"] for op in ops_of(await sub.get_message())
                                if op["op"] == "message"] == [i]
            assert hub.relay.direct_frames >= 40
            # 2. 6 MB to s2 while it does not read (s1 reads): its socket fills, a frame may be
            # begun in it, the rest queue behind (a burst: batched by the writers); then it reads
            # everything, in order.
            got1: list[int] = []

            async def read_s1() -> None:
                while len(got1) < 120:
                    got1.extend(op["data"]["i"] for op in ops_of(await s1.get_message())
                                if op["op"] == "message")

            async with trio.open_nursery() as readers:
                readers.start_soon(read_s1)
                with trio.fail_after(60):
                    await publish_bulk(pub, band, 120, 50_000)
            got2: list[int] = []
            with trio.fail_after(60):
                while len(got2) < 120:
                    got2.extend(op["data"]["i"] for op in ops_of(await s2.get_message())
                                if op["op"] == "message")
            assert got1 == got2 == list(range(120))
        nursery.cancel_scope.cancel()


async def test_publishes_are_written_straight_into_the_socket_when_it_is_idle_and_stay_in_order(bulk_hub):
    """A publish made while the client sends nothing else goes into the socket from the
    publishing task (no hand-off to the writer task); one that the socket takes only in part
    (here 30 kB through a send buffer of a few kB) is finished before anything else is sent; a
    burst goes through the writer. Every message arrives, whole and in order, acknowledged or
    not; and the client's socket has Nagle off."""
    import socket

    from kachery_node.transport.pubsub.relay_client import DIRECT_MIN_INTERVAL_S

    ch, _, a = setup_channel(bulk_hub, {"req": ["request-files"], "prov": ["provide-files"]})
    band = f"{ch}-requestFiles"
    async with open_pubsub(await creds(a["req"], ch)) as req, open_pubsub(await creds(a["prov"], ch)) as prov:
        await prov.subscribe(band)
        sock = req._ws.socket
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        sent: list[int] = []

        async def publish(i: int, size: int = 10, ack: bool = False) -> None:
            await req.publish(band, j({"i": i, "blob": "x" * size}), ack=ack)
            sent.append(i)

        for i in range(10):  # spaced: each one written directly
            await trio.sleep(DIRECT_MIN_INTERVAL_S * 1.5)
            await publish(i, ack=(i % 2 == 0))
        assert req.direct_publishes == 10
        # A small send buffer: each message goes into the socket in part, the rest after it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        for i in range(10, 20):
            await trio.sleep(DIRECT_MIN_INTERVAL_S * 1.5)
            await publish(i, size=30_000, ack=(i == 15))
        direct = req.direct_publishes
        assert direct == 20
        for i in range(20, 60):  # a burst: mostly through the writer
            await publish(i, size=100 if i % 3 else 30_000)
        assert req.direct_publishes < direct + 40
        got = []
        with trio.fail_after(30):
            while len(got) < len(sent):
                m = await prov.receive(timeout=10)
                got.append(data(m)["i"])
        assert got == sent == list(range(60))


async def test_the_publisher_hears_its_own_messages_and_the_relay_has_nagle_off(tmp_path):
    """Echo (spec/pubsub.md): a publisher subscribed to the band gets its messages too (written
    after the other subscribers', Relay.flush_direct), directly into both sockets; the relay's
    side of every connection has Nagle off."""
    import socket
    from types import SimpleNamespace

    from kachery_node.hub import direct_send
    from kachery_node.hub.serve import serve_hub

    async with trio.open_nursery() as nursery:
        hub = await nursery.start(serve_hub, tmp_path / "hub", "127.0.0.1", 0)
        where = SimpleNamespace(url=hub.public_url)
        ch, _, a = await trio.to_thread.run_sync(setup_channel, where, {
            "both": ["request-files", "provide-files"], "other": ["provide-files"]})
        band = f"{ch}-requestFiles"
        async with open_pubsub(await creds(a["both"], ch)) as both, \
                open_pubsub(await creds(a["other"], ch)) as other:
            await both.subscribe(band)
            await other.subscribe(band)
            assert direct_send._servers
            for server in direct_send._servers.values():
                assert server.stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            before = hub.relay.direct_frames
            for i in range(5):
                await trio.sleep(0.01)
                await both.publish(band, j({"i": i}), ack=True)
                for sub in (other, both):
                    assert data(await sub.receive(timeout=10)) == {"i": i}
            assert hub.relay.direct_frames - before >= 10
        nursery.cancel_scope.cancel()


async def test_a_subscriber_without_echo_is_not_sent_its_own_messages(relay_hub):
    """``"echo": false`` (spec/pubsub.md): the relay keeps a connection's own publications on that
    band from it; others still get them, echo stays the default, and subscribing again with
    echo brings it back. Each connection's messages arrive in publish order, so the other node's
    message arriving first shows that the own one, published before it, was not sent."""
    ch, _, a = setup_channel(relay_hub, {"quiet": ["request-files", "provide-files"],
                                         "loud": ["request-files", "provide-files"]})
    band = f"{ch}-requestFiles"
    async with open_pubsub(await creds(a["quiet"], ch)) as quiet, \
            open_pubsub(await creds(a["loud"], ch)) as loud:
        await quiet.subscribe(band, echo=False)
        await loud.subscribe(band)
        await quiet.publish(band, j({"from": "quiet"}), ack=True)
        await loud.publish(band, j({"from": "loud"}), ack=True)
        assert [data(await loud.receive(timeout=5)) for _ in range(2)] == [{"from": "quiet"}, {"from": "loud"}]
        assert data(await quiet.receive(timeout=5)) == {"from": "loud"}
        await quiet.subscribe(band)  # echo again
        await quiet.publish(band, j({"from": "quiet", "again": True}), ack=True)
        assert data(await quiet.receive(timeout=5)) == {"from": "quiet", "again": True}
    good = (await creds(a["quiet"], ch))["token"]
    async with trio_websocket.open_websocket_url("ws" + relay_hub.url[4:] + "/pubsub") as ws:
        await ws.send_message(auth_op(good, id=1))
        assert orjson.loads(await ws.get_message())[0]["op"] == "connected"
        for echo in ("no", 0, None):
            await ws.send_message(orjson.dumps({"op": "subscribe", "band": band, "echo": echo, "id": 2}).decode())
            while True:
                reply = orjson.loads(await ws.get_message())[0]
                if reply["op"] != "heartbeat":
                    break
            assert (reply["op"], reply["code"]) == ("error", "malformed_request"), echo

# ruff: noqa: E501
"""The Ably backend: the real ably SDK against tests/ably_fake_server.py, which checks token
requests (MAC, time, nonce) and capabilities the way Ably documents."""

from __future__ import annotations

import json
import stat
import time

import httpx
import orjson
import pytest
import trio

from kachery_node.errors import HubRequestError
from kachery_node.transport.hub_client import HubClient
from kachery_node.transport.pubsub.ably_backend import token_request_mac
from kachery_node.transport.pubsub.open_pubsub import open_pubsub
from tests.hub.conftest import Actor, HubProcess
from tests.standins import AblyFake

pytestmark = pytest.mark.trio


#: Messages are bytes (pub-sub v2): these tests send small JSON documents as their bytes.
j = orjson.dumps


def data(message) -> object:
    return orjson.loads(message.data)


@pytest.fixture(scope="module")
def ably(tmp_path_factory):
    server = AblyFake(tmp_path_factory.mktemp("ably"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ably_hub(tmp_path_factory):
    h = HubProcess(tmp_path_factory.mktemp("ablyhub"), "--token-ttl", "3")
    yield h
    h.stop()


_n = iter(range(1000))


def ably_channel(hub, ably, roles_by_label: dict[str, list[str]]) -> tuple[str, Actor, dict[str, Actor]]:
    owner = Actor(hub.url, "owner")
    name = f"ably.t{next(_n)}"
    owner.client.create_channel(name, config={"pubsub": {"backend": "ably", "endpoint": ably.endpoint,
                                                         "rest_url": ably.rest_url}},
                                secrets={"pubsub": {"api_key": ably.api_key}})
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


async def test_token_requests_carry_exactly_the_bands_and_are_signed_as_ably_documents(ably_hub, ably):
    from ably.types.tokenrequest import TokenRequest

    ch, owner, a = ably_channel(ably_hub, ably, {"req": ["request-files"]})
    c = await creds(a["req"], ch)
    req = c["token_request"]
    assert json.loads(req["capability"]) == {f"{ch}-provideFiles": ["subscribe"], f"{ch}-requestFiles": ["publish"]}
    assert req["clientId"] == a["req"].node_id and req["ttl"] == 3000 and req["keyName"] == ably.api_key.split(":")[0]
    # The same MAC the ably SDK computes for a token request (RSA9g).
    sdk = TokenRequest(key_name=req["keyName"], client_id=req["clientId"], nonce=req["nonce"], mac=None,
                       capability=req["capability"], ttl=req["ttl"], timestamp=req["timestamp"])
    sdk.sign_request(ably.api_key.split(":")[1])
    assert sdk.mac == req["mac"] == token_request_mac(ably.api_key.split(":")[1], req)
    secret = ably.api_key.split(":")[1]
    seen = [json.dumps(c), json.dumps(a["req"].client.channel_info(ch)), json.dumps(owner.client.show_channel(ch)),
            a["req"].client.membership_segment(ch).decode(), (ably_hub.dir / "hub.log").read_text()]
    assert not any(secret in text for text in seen)
    # The server checks the MAC: a token request with a widened capability is refused.
    wider = {**req, "capability": json.dumps({"*": ["*"]})}
    resp = httpx.post(f"{ably.rest_url}/keys/{req['keyName']}/requestToken", json=wider, timeout=5)
    assert resp.status_code == 401 and resp.json()["error"]["code"] == 40101
    ok = httpx.post(f"{ably.rest_url}/keys/{req['keyName']}/requestToken", json=req, timeout=5)
    assert ok.status_code == 201 and ok.json()["clientId"] == a["req"].node_id
    replay = httpx.post(f"{ably.rest_url}/keys/{req['keyName']}/requestToken", json=req, timeout=5)
    assert replay.status_code == 401 and replay.json()["error"]["code"] == 40104  # nonce used once


async def test_fan_out_and_refusals_through_the_sdk(ably_hub, ably):
    ch, _, a = ably_channel(ably_hub, ably, {"req": ["request-files"], "prov": ["provide-files"]})
    async with open_pubsub(await creds(a["req"], ch)) as req, open_pubsub(await creds(a["prov"], ch)) as prov:
        await prov.subscribe(f"{ch}-requestFiles")
        await req.subscribe(f"{ch}-provideFiles")
        await req.publish(f"{ch}-requestFiles", j({"want": 1}), ack=True)
        m = await prov.receive(5)
        assert (m.band, m.sender, data(m)) == (f"{ch}-requestFiles", a["req"].node_id, {"want": 1})
        await prov.publish(f"{ch}-provideFiles", j({"have": 1}))
        m = await req.receive(5)
        assert m.sender == a["prov"].node_id and data(m) == {"have": 1}
        with pytest.raises(HubRequestError) as e:
            await req.publish(f"{ch}-provideFiles", j({"fake": 1}), ack=True)
        assert e.value.code == "capability_denied" and "40160" in e.value.message
        with pytest.raises(HubRequestError) as e:
            await req.subscribe(f"{ch}-other")
        assert e.value.code == "capability_denied"
        await req.publish(f"{ch}-requestFiles", j({"want": 2}), ack=True)  # still fine after refusals
        assert data(await prov.receive(5)) == {"want": 2}
    assert "refused publish" in ably.log()


async def test_expired_tokens_are_refused_and_renewal_is_in_band(ably_hub, ably):
    ch, _, a = ably_channel(ably_hub, ably, {"req": ["request-files"], "prov": ["provide-files"]})
    c = await creds(a["req"], ch)
    async with open_pubsub(c) as doomed:  # no renewal: the server disconnects at expiry
        with pytest.raises(HubRequestError) as e:
            await doomed.receive(timeout=8)
        assert e.value.code == "expired"
    assert f"token expired for {a['req'].node_id}" in ably.log()  # the server's DISCONNECTED 40142
    async with open_pubsub(await creds(a["req"], ch), renew=lambda: creds(a["req"], ch)) as req, \
            open_pubsub(await creds(a["prov"], ch), renew=lambda: creds(a["prov"], ch)) as prov:
        await prov.subscribe(f"{ch}-requestFiles")
        started = time.monotonic()
        i = 0
        while time.monotonic() - started < 7:  # past two 3 s tokens
            await req.publish(f"{ch}-requestFiles", j({"i": i}), ack=True)
            assert data(await prov.receive(5)) == {"i": i}
            i += 1
            await trio.sleep(0.5)


async def test_a_revocation_makes_ably_drop_the_node_at_once(ably, tmp_path):
    """With hour-long tokens, the hub's call to Ably's revokeTokens is what cuts the node off."""
    hub = HubProcess(tmp_path / "hub", "--token-ttl", "3600")
    try:
        ch, owner, a = ably_channel(hub, ably, {"req": ["request-files", "request-feeds"],
                                                "prov": ["provide-files"]})
        # Joining and being granted roles narrows nothing: no revocation is sent (one arriving
        # late would cut the token the node is about to get).
        assert not [x for x in owner.client.show_channel(ch)["activity"] if x["kind"] == "revoke_credentials"]
        async with open_pubsub(await creds(a["prov"], ch)) as prov, open_pubsub(await creds(a["req"], ch)) as req:
            await prov.subscribe(f"{ch}-requestFiles")
            await req.publish(f"{ch}-requestFiles", j({"before": 1}), ack=True)
            assert data(await prov.receive(5)) == {"before": 1}
            await trio.to_thread.run_sync(owner.client.revoke, ch, a["prov"].node_id, ["provide-files"])
            with trio.fail_after(5), pytest.raises(HubRequestError) as e:  # not in an hour: now
                await prov.receive(timeout=5)
            # Ably says 40141 (token revoked); the SDK then asks for a new token, which this
            # client (no renewer) cannot get: the connection ends with 401.
            assert e.value.status == 401, e.value
            await req.publish(f"{ch}-requestFiles", j({"after": 1}), ack=True)  # others carry on
        assert f"disconnecting revoked {a['prov'].node_id}" in ably.log()
        activity = [x["detail"] for x in owner.client.show_channel(ch)["activity"]]
        assert f"ably revoked node {a['prov'].node_id[:12]}…'s credentials" in activity, activity
        # The node's old token is refused; asking the hub again gets only what it still holds.
        with pytest.raises(HubRequestError, match="no effective roles"):
            await creds(a["prov"], ch)
        await trio.to_thread.run_sync(owner.client.revoke, ch, a["req"].node_id, ["request-files"])
        narrowed = await creds(a["req"], ch)
        assert json.loads(narrowed["token_request"]["capability"]) == {
            f"{ch}-provideFeeds": ["subscribe"], f"{ch}-requestFeeds": ["publish"]}
        # A token issued after the owner's decision survives the revocation, however late the
        # hub's call reaches Ably (issuedBefore is the decision time).
        async with open_pubsub(narrowed) as req:
            revoked = f"ably revoked node {a['req'].node_id[:12]}…'s credentials"
            with trio.fail_after(10):
                while revoked not in [x["detail"] for x in owner.client.show_channel(ch)["activity"]]:
                    await trio.sleep(0.05)
            await trio.sleep(0.3)
            await req.publish(f"{ch}-requestFeeds", j({"still": "connected"}), ack=True)
        # Only the channel's API key may revoke: Ably's 40101 for anything else.
        key_name = ably.api_key.split(":")[0]
        resp = httpx.post(f"{ably.rest_url}/keys/{key_name}/revokeTokens", auth=(key_name, "wrong"),
                          json={"targets": [f"clientId:{a['req'].node_id}"]}, timeout=5)
        assert resp.status_code == 401 and resp.json()["error"]["code"] == 40101
    finally:
        hub.stop()


async def test_a_revocation_outlives_an_ably_outage_and_a_killed_hub(tmp_path):
    """Ably cannot be told when the owner revokes, and the hub is killed before it can be: the
    revocation waits in hub.db, and the restarted hub cuts the node off once Ably answers."""
    ably = AblyFake(tmp_path / "ably")  # its own: the outage must not reach other tests
    hub = HubProcess(tmp_path / "hub", "--token-ttl", "3600")
    try:
        ch, owner, a = ably_channel(hub, ably, {"req": ["request-files"], "prov": ["provide-files"]})
        async with open_pubsub(await creds(a["prov"], ch)) as prov, open_pubsub(await creds(a["req"], ch)) as req:
            await prov.subscribe(f"{ch}-requestFiles")
            ably.revoke_outage(True)
            await trio.to_thread.run_sync(owner.client.revoke, ch, a["prov"].node_id, ["provide-files"])
            short = f"{a['prov'].node_id[:12]}…"
            with trio.fail_after(10):
                while not any(f"could not revoke node {short}'s credentials yet" in x["detail"]
                              for x in owner.client.show_channel(ch)["activity"]):
                    await trio.sleep(0.05)
            await req.publish(f"{ch}-requestFiles", j({"during": "outage"}), ack=True)
            assert data(await prov.receive(5)) == {"during": "outage"}  # Ably still lets it in

            hub.proc.kill()  # SIGKILL: nothing is flushed at exit
            hub.proc.wait(10)
            assert stat.S_IMODE((hub.dir / "hub.db").stat().st_mode) == 0o600  # it holds the key
            ably.revoke_outage(False)
            hub.start()
            with trio.fail_after(15), pytest.raises(HubRequestError) as e:
                await prov.receive(timeout=15)
            assert e.value.status == 401, e.value
        owner_client = HubClient(hub.url, user_key=owner.user_key, node_key=owner.node_key)
        details = [x["detail"] for x in owner_client.show_channel(ch)["activity"]]
        assert f"ably revoked node {short}'s credentials" in details, details
        assert "refused revokeTokens: outage" in ably.log()
        assert ably.api_key.split(":")[1] not in hub.log()
    finally:
        hub.stop()
        ably.stop()

# ruff: noqa: E501
"""The NATS backend against real nats-server processes in operator (JWT) mode: the hub mints
per-node users, and the *server* refuses what a node may not do."""

from __future__ import annotations

import time

import orjson
import pytest
import trio

from kachery_node.errors import HubRequestError
from kachery_node.transport.pubsub import nats_jwt
from kachery_node.transport.pubsub.open_pubsub import open_pubsub
from tests.hub.conftest import Actor, HubProcess
from tests.standins import NatsCluster

pytestmark = pytest.mark.trio


#: Messages are bytes (pub-sub v2): these tests send small JSON documents as their bytes.
j = orjson.dumps


def data(message) -> object:
    return orjson.loads(message.data)


@pytest.fixture(scope="module")
def nats(tmp_path_factory):
    cluster = NatsCluster(tmp_path_factory.mktemp("nats"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def nats_hub(tmp_path_factory):
    h = HubProcess(tmp_path_factory.mktemp("natshub"), "--token-ttl", "3")
    yield h
    h.stop()


_n = iter(range(1000))


def nats_channel(hub, nats, roles_by_label: dict[str, list[str]]) -> tuple[str, Actor, dict[str, Actor]]:
    owner = Actor(hub.url, "owner")
    name = f"nats.t{next(_n)}"
    owner.client.create_channel(name, config={"pubsub": {"backend": "nats", "url": nats.url()}},
                                secrets={"pubsub": {"account_seed": nats.account_seed}})
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


async def test_credentials_are_narrow_and_the_account_seed_stays_on_the_hub(nats_hub, nats):
    ch, owner, a = nats_channel(nats_hub, nats, {"req": ["request-files"]})
    c = await creds(a["req"], ch)
    assert c["backend"] == "nats" and c["servers"] == [nats.url()]
    claims = nats_jwt.decode_jwt_claims(c["user_jwt"])
    assert claims["iss"] == nats_jwt.public_key(nats.account_seed)
    assert claims["sub"] == nats_jwt.public_key(c["user_seed"])  # a fresh user per credential
    assert claims["nats"]["pub"] == {"allow": [f"kachery.{ch}.requestFiles.{a['req'].node_id}"]}
    assert claims["nats"]["sub"] == {"allow": [f"kachery.{ch}.provideFiles.*"]}
    assert claims["exp"] - time.time() <= 3 + 1
    # Nothing a member or the owner can read carries the account seed.
    seen = [str(c), str(a["req"].client.channel_info(ch)), str(owner.client.show_channel(ch)),
            a["req"].client.membership_segment(ch).decode(), (nats_hub.dir / "hub.log").read_text()]
    assert not any(nats.account_seed in text for text in seen)
    assert "account_seed" not in str(owner.client.show_channel(ch)["config"])


async def test_fan_out_and_the_server_vouches_for_the_sender(nats_hub, nats):
    ch, _, a = nats_channel(nats_hub, nats, {"req": ["request-files"], "p1": ["provide-files"], "p2": ["provide-files"]})
    async with open_pubsub(await creds(a["req"], ch)) as req, open_pubsub(await creds(a["p1"], ch)) as p1, \
            open_pubsub(await creds(a["p2"], ch)) as p2:
        for p in (p1, p2):
            await p.subscribe(f"{ch}-requestFiles")
        await req.subscribe(f"{ch}-provideFiles")
        await req.publish(f"{ch}-requestFiles", j({"want": "x"}), ack=True)
        for p in (p1, p2):
            m = await p.receive(5)
            assert (m.band, m.sender, data(m)) == (f"{ch}-requestFiles", a["req"].node_id, {"want": "x"})
        await p1.publish(f"{ch}-provideFiles", j({"have": "x"}))
        m = await req.receive(5)
        assert m.sender == a["p1"].node_id and data(m) == {"have": "x"}


async def test_the_server_refuses_publish_and_subscribe_outside_the_capability(nats_hub, nats):
    ch, _, a = nats_channel(nats_hub, nats, {"req": ["request-files"], "prov": ["provide-files"]})
    async with open_pubsub(await creds(a["req"], ch)) as req, open_pubsub(await creds(a["prov"], ch)) as prov:
        await prov.subscribe(f"{ch}-requestFiles")
        with pytest.raises(HubRequestError) as e:  # a requester may not provide
            await req.publish(f"{ch}-provideFiles", j({"fake": 1}), ack=True)
        assert e.value.code == "capability_denied" and "permissions violation" in e.value.message.lower()
        with pytest.raises(HubRequestError) as e:  # nor listen to other requesters
            await req.subscribe(f"{ch}-requestFiles")
        assert e.value.code == "capability_denied"
        # A client that lies about who it is: the subject must end in its own node ID.
        forged = {**await creds(a["req"], ch), "node": a["prov"].node_id}
        async with open_pubsub(forged) as liar:
            with pytest.raises(HubRequestError) as e:
                await liar.publish(f"{ch}-requestFiles", j({"as": "prov"}), ack=True)
            assert e.value.code == "capability_denied"
        # The refusals changed nothing: the connection works, the provider heard only the real request.
        await req.publish(f"{ch}-requestFiles", j({"real": 1}), ack=True)
        m = await prov.receive(5)
        assert data(m) == {"real": 1} and m.sender == a["req"].node_id
    assert "Publish Violation" in (nats.root / "nats-0.log").read_text()


async def test_forged_or_expired_credentials_are_refused_by_the_server(nats_hub, nats):
    ch, _, a = nats_channel(nats_hub, nats, {"req": ["request-files"]})
    c = await creds(a["req"], ch)
    # A user JWT signed by an account the server does not trust (not the channel's).
    other = nats_jwt.new_seed("account")
    seed = nats_jwt.new_seed("user")
    rogue = {**c, "user_seed": seed, "user_jwt": nats_jwt.user_jwt(
        other, nats_jwt.public_key(seed), "rogue", publish=[">"], subscribe=[">"], expires_s=int(time.time()) + 60)}
    with pytest.raises(HubRequestError) as e:
        async with open_pubsub(rogue):
            pass
    assert e.value.code == "pubsub_unreachable" and "authorization" in e.value.message.lower()
    # A JWT whose permissions were edited after signing.
    claims_edited = c["user_jwt"].split(".")
    body = nats_jwt.decode_jwt_claims(c["user_jwt"])
    body["nats"]["pub"] = {"allow": [">"]}
    import base64

    import orjson
    claims_edited[1] = base64.urlsafe_b64encode(orjson.dumps(body)).rstrip(b"=").decode()
    with pytest.raises(HubRequestError):
        async with open_pubsub({**c, "user_jwt": ".".join(claims_edited)}):
            pass
    # Expired: the hub's tokens live 3 s here; the server closes the connection at expiry.
    async with open_pubsub(c) as doomed:
        await doomed.subscribe(f"{ch}-provideFiles")
        with pytest.raises(HubRequestError) as e:
            await doomed.receive(timeout=8)
        assert e.value.code == "expired", e.value.message
    await trio.sleep(max(0.0, nats_jwt.decode_jwt_claims(c["user_jwt"])["exp"] + 1.1 - time.time()))
    with pytest.raises(HubRequestError) as e:  # and refuses it from then on
        async with open_pubsub(c):
            pass
    assert "authorization violation" in e.value.message.lower()


async def test_renewal_keeps_a_connection_past_expiry(nats_hub, nats):
    ch, _, a = nats_channel(nats_hub, nats, {"req": ["request-files"], "prov": ["provide-files"]})
    async with open_pubsub(await creds(a["req"], ch), renew=lambda: creds(a["req"], ch)) as req, \
            open_pubsub(await creds(a["prov"], ch), renew=lambda: creds(a["prov"], ch)) as prov:
        await prov.subscribe(f"{ch}-requestFiles")
        first = req.credentials["user_jwt"]
        for i in range(8):  # 8 s: well past the 3 s tokens
            await req.publish(f"{ch}-requestFiles", j({"i": i}), ack=True)
            m = await prov.receive(5)
            while data(m) != {"i": i}:  # a message may arrive on both connections while they overlap
                assert data(m)["i"] < i
                m = await prov.receive(5)
            await trio.sleep(1)
        assert req.credentials["user_jwt"] != first

# ruff: noqa: E501
"""The hub API from the outside: a real hub process, signed requests over HTTP."""

from __future__ import annotations

import time

import httpx
import pytest

import kachery_feeds as kf
from kachery_node.errors import HubRequestError
from kachery_node.identity import Keypair
from kachery_node.protocol.hub_requests import make_body, sign_body
from kachery_node.protocol.membership import Membership, import_segment
from kachery_node.protocol.roles import capabilities


def now_ms() -> int:
    return int(time.time() * 1000)


def _refused(code: str, status: int):
    class Ctx:
        def __enter__(self):
            return self

        def __exit__(self, typ, exc, tb):
            assert typ is HubRequestError, f"expected refusal {code}, got {typ}"
            assert (exc.code, exc.status) == (code, status), str(exc)
            return True

    return Ctx()


def _post(hub, path, body: bytes, headers: dict) -> httpx.Response:
    return httpx.post(f"{hub.url}{path}", content=body, headers=headers, timeout=10)


def test_create_join_grant_effective_roles(hub, make_actor, channel_name):
    owner, member = make_actor("owner"), make_actor("member")
    info = owner.client.create_channel(channel_name)
    assert info["owner"] == owner.user_id and info["membership_uri"].endswith("/membership")
    member.client.request_roles(channel_name, member.node_id, ["request-files", "provide-feeds"])
    r = owner.client.grant(channel_name, member.node_id, ["request-files", "request-tasks"])
    assert r == {"channel": channel_name, "node": member.node_id, "granted": ["request-files", "request-tasks"],
                 "requested": ["request-files", "provide-feeds"], "effective": ["request-files"]}
    creds = member.client.pubsub_credentials(channel_name)
    # exactly the bands of the effective roles: publish request, subscribe provide
    assert creds["capability"] == capabilities(channel_name, ["request-files"]) == {
        f"{channel_name}-requestFiles": ["publish"], f"{channel_name}-provideFiles": ["subscribe"]}
    r = owner.client.revoke(channel_name, member.node_id, ["request-files"])
    assert r["effective"] == []
    with _refused("not_allowed", 403):
        member.client.pubsub_credentials(channel_name)


def test_membership_feed_is_signed_and_verifiable(hub, make_actor, channel_name, tmp_path):
    owner, member = make_actor("owner"), make_actor("member")
    feed_id = owner.client.create_channel(channel_name)["feed_id"]
    member.client.request_roles(channel_name, member.node_id, ["provide-files"])
    owner.client.grant(channel_name, member.node_id, ["provide-files", "request-feeds"])
    owner.client.revoke(channel_name, member.node_id, ["request-feeds"])
    store = kf.open_store(tmp_path / "feeds.db")
    m = member.client.fetch_membership(channel_name, store, feed_id)
    assert m.owner == owner.user_id
    assert m.may(member.node_id, "provide-files") and not m.may(member.node_id, "request-feeds")
    assert [p["type"] for p in store.load_subfeed(f"feed://{feed_id}/membership").get_messages()] == [
        "channel", "request", "grant", "revoke"]
    # incremental fetch: only new messages come
    owner.client.grant(channel_name, member.node_id, ["request-files"])
    assert member.client.fetch_membership(channel_name, store, feed_id).may(member.node_id, "request-files") is False
    member.client.request_roles(channel_name, member.node_id, ["provide-files", "request-files"])
    assert member.client.fetch_membership(channel_name, store, feed_id).roles_of(member.node_id) == [
        "request-files", "provide-files"]
    # the segment does not verify under another feed ID: a node trusts only the key it was given
    segment = member.client.membership_segment(channel_name)
    with pytest.raises(kf.VerificationError):
        import_segment(kf.open_store(tmp_path / "other.db"), Keypair.generate().public_hex, segment)
    tampered = segment.replace(b"provide-files", b"provide-tasks", 1)
    with pytest.raises(kf.VerificationError):
        import_segment(kf.open_store(tmp_path / "t.db"), feed_id, tampered)
    m2 = Membership.from_subfeed(store.load_subfeed(f"feed://{feed_id}/membership"), channel_name)
    assert m2.roles_of(member.node_id) == ["request-files", "provide-files"]


def test_non_owner_cannot_grant_and_nothing_changes(hub, make_actor, channel_name):
    owner, mallory = make_actor("owner"), make_actor("mallory")
    owner.client.create_channel(channel_name)
    mallory.client.request_roles(channel_name, mallory.node_id, ["provide-files"])
    before = owner.client.show_channel(channel_name)["members"]
    with _refused("not_allowed", 403):
        mallory.client.grant(channel_name, mallory.node_id, ["provide-files"])
    with _refused("not_allowed", 403):
        mallory.client.delete_channel(channel_name)
    assert owner.client.show_channel(channel_name)["members"] == before
    assert "refused POST /api/user (403 not_allowed)" in hub.log()


def test_node_roles_only_by_its_owner(hub, make_actor, channel_name):
    owner, victim, mallory = make_actor("owner"), make_actor("victim"), make_actor("mallory")
    owner.client.create_channel(channel_name)
    with _refused("not_allowed", 403):
        mallory.client.request_roles(channel_name, victim.node_id, ["provide-files"])


def test_unknown_and_unregistered(hub, make_actor, channel_name):
    owner = make_actor("owner")
    stranger = make_actor("stranger", register=False)
    owner.client.create_channel(channel_name)
    with _refused("unknown_channel", 404):
        owner.client.show_channel("no.such-channel")
    with _refused("unknown_node", 403):
        owner.client.grant(channel_name, stranger.node_id, ["request-files"])
    with _refused("unknown_node", 403):
        stranger.client.pubsub_credentials(channel_name)
    with _refused("unknown_node", 403):
        stranger.client.upload_urls(channel_name, [{"path": "sha1/aa/bb/cc/x", "size": 1}])
    # registered but not a member
    outsider = make_actor("outsider")
    with _refused("not_allowed", 403):
        outsider.client.pubsub_credentials(channel_name)
    with _refused("not_allowed", 403):
        outsider.client.membership_segment(channel_name)
    with _refused("unknown_channel", 404):
        outsider.client.pubsub_credentials("no.such-channel")


def test_registration_needs_both_keys(hub):
    node, user, other = Keypair.generate(), Keypair.generate(), Keypair.generate()
    hub_id = hub.hub_id
    body = make_body("register_node", hub_id, time_ms=now_ms(), node=node.public_hex, user=user.public_hex, label="x")
    # only the node signature
    r = _post(hub, "/api/register-node", body, sign_body(node, "node", body))
    assert (r.status_code, r.json()["error"]["code"]) == (401, "bad_signature")
    # user signature made by another key
    headers = {**sign_body(node, "node", body), **sign_body(other, "user", body)}
    headers["Kachery-User-Id"] = user.public_hex
    r = _post(hub, "/api/register-node", body, headers)
    assert (r.status_code, r.json()["error"]["code"]) == (401, "bad_signature")
    # the body names someone else than the signers
    body2 = make_body("register_node", hub_id, time_ms=now_ms(), node=node.public_hex, user=other.public_hex, label="x")
    r = _post(hub, "/api/register-node", body2, {**sign_body(node, "node", body2), **sign_body(user, "user", body2)})
    assert (r.status_code, r.json()["error"]["code"]) == (400, "malformed_request")
    # both: fine
    r = _post(hub, "/api/register-node", body, {**sign_body(node, "node", body), **sign_body(user, "user", body)})
    assert r.status_code == 200 and r.json()["created"] is True
    # another person cannot take the node over, even holding the node key
    body3 = make_body("register_node", hub_id, time_ms=now_ms(), node=node.public_hex, user=other.public_hex, label="x")
    r = _post(hub, "/api/register-node", body3, {**sign_body(node, "node", body3), **sign_body(other, "user", body3)})
    assert (r.status_code, r.json()["error"]["code"]) == (409, "conflict")


def test_replayed_stale_foreign_and_malformed_requests(hub, make_actor, channel_name):
    owner = make_actor("owner")
    hub_id = hub.hub_id
    body = make_body("create_channel", hub_id, time_ms=now_ms(), channel=channel_name)
    headers = sign_body(owner.user_key, "user", body)
    assert _post(hub, "/api/user", body, headers).status_code == 200
    r = _post(hub, "/api/user", body, headers)  # the same bytes again
    assert (r.status_code, r.json()["error"]["code"]) == (409, "replayed_request")

    stale = make_body("list_channels", hub_id, time_ms=now_ms() - 120_000)
    r = _post(hub, "/api/user", stale, sign_body(owner.user_key, "user", stale))
    assert (r.status_code, r.json()["error"]["code"]) == (401, "stale_request")
    future = make_body("list_channels", hub_id, time_ms=now_ms() + 120_000)
    assert _post(hub, "/api/user", future, sign_body(owner.user_key, "user", future)).status_code == 401

    other_hub = make_body("list_channels", Keypair.generate().public_hex, time_ms=now_ms())
    r = _post(hub, "/api/user", other_hub, sign_body(owner.user_key, "user", other_hub))
    assert (r.status_code, r.json()["error"]["code"]) == (401, "bad_signature")

    tampered = body.replace(channel_name.encode(), b"evil.channel")
    r = _post(hub, "/api/user", tampered, headers)
    assert (r.status_code, r.json()["error"]["code"]) == (401, "bad_signature")

    r = _post(hub, "/api/user", body, {})
    assert (r.status_code, r.json()["error"]["code"]) == (401, "bad_signature")

    # a user signature does not pass as a node signature (domain separation)
    nb = make_body("pubsub_token", hub_id, time_ms=now_ms(), channel=channel_name)
    us = sign_body(owner.node_key, "user", nb)
    r = _post(hub, "/api/node", nb, {"Kachery-Node-Id": owner.node_id,
                                     "Kachery-Node-Signature": us["Kachery-User-Signature"]})
    assert (r.status_code, r.json()["error"]["code"]) == (401, "bad_signature")

    for bad in (b"{not json", b"[1,2]", b'{"type":"list_channels"}', b"\xff\xfe"):
        r = _post(hub, "/api/user", bad, sign_body(owner.user_key, "user", bad))
        assert (r.status_code, r.json()["error"]["code"]) == (400, "malformed_request"), bad
    unknown = make_body("make_me_admin", hub_id, time_ms=now_ms())
    r = _post(hub, "/api/user", unknown, sign_body(owner.user_key, "user", unknown))
    assert (r.status_code, r.json()["error"]["code"]) == (400, "malformed_request")
    log = hub.log()
    assert "replayed_request" in log and "stale_request" in log and "malformed_request" in log


def test_channel_names(hub, make_actor):
    owner = make_actor("owner")
    long_name = "a" * 18 + "." + "b" * 21  # 40 characters: the original broke pub-sub above 27
    assert len(long_name) == 40
    owner.client.create_channel(long_name)
    assert long_name in [c["channel"] for c in owner.client.list_channels()]
    with _refused("conflict", 409):
        owner.client.create_channel(long_name)
    for bad in ("ab", "a" * 41, "bad name", "a..b", ".ab", "ab/c", "é-chan"):
        with _refused("invalid_channel_name", 400):
            owner.client.create_channel(bad)
    with _refused("malformed_request", 400):
        owner.client.create_channel("cfg.chan", config={"pubsub": {"backend": "ably"}, "bucket": {"backend": "embedded"}})
    owner.client.delete_channel(long_name)
    assert long_name not in [c["channel"] for c in owner.client.list_channels()]


def test_upload_urls_follow_roles(hub, make_actor, channel_name):
    owner, node = make_actor("owner"), make_actor("node")
    owner.client.create_channel(channel_name)
    node.client.request_roles(channel_name, node.node_id, ["provide-files", "request-feeds"])
    owner.client.grant(channel_name, node.node_id, ["provide-files", "request-feeds"])
    urls = node.client.upload_urls(channel_name, [{"path": "sha1/aa/aa/aa/" + "a" * 40, "size": 10}])
    assert urls[0].startswith(f"{hub.url}/bucket/{channel_name}/sha1/aa/aa/aa/")
    with _refused("not_allowed", 403):  # feeds need provide-feeds
        node.client.upload_urls(channel_name, [{"path": "feeds/aa/bb/x", "size": 10}])
    for bad in ("../other/sha1/x", "sha1/../../x", "/etc/passwd", "sha1\\x", "sha1/a\x00b", "other/x", "sha1",
                "sha1/aa/x", "sha1/aa/bb/cc/" + "a" * 40):
        with pytest.raises(HubRequestError) as info:
            node.client.upload_urls(channel_name, [{"path": bad, "size": 10}])
        assert info.value.code == "invalid_path", bad
    with _refused("malformed_request", 400):
        node.client.upload_urls(channel_name, [{"path": "sha1/aa/aa/aa/" + "a" * 40}])
    with _refused("malformed_request", 400):
        node.client.upload_urls(channel_name, [])


def test_restart_loses_nothing_and_keeps_nonces(hub, make_actor, channel_name):
    owner, node = make_actor("owner"), make_actor("node")
    owner.client.create_channel(channel_name)
    node.client.request_roles(channel_name, node.node_id, ["request-files"])
    owner.client.grant(channel_name, node.node_id, ["request-files"])
    body = make_body("list_channels", hub.hub_id, time_ms=now_ms())
    headers = sign_body(owner.user_key, "user", body)
    assert _post(hub, "/api/user", body, headers).status_code == 200
    hub_id = hub.hub_id
    # A revocation goes through the background queue for external pub-sub services too.
    owner.client.revoke(channel_name, node.node_id, ["request-files"])
    owner.client.grant(channel_name, node.node_id, ["request-files"])
    stopping = time.monotonic()
    hub.stop()  # SIGTERM: the hub exits on its own, background tasks included
    assert hub.proc.returncode == 0 and time.monotonic() - stopping < 5, hub.proc.returncode
    hub.start()
    assert hub.hub_id == hub_id
    r = _post(hub, "/api/user", body, headers)
    assert (r.status_code, r.json()["error"]["code"]) == (409, "replayed_request")
    owner.client.url = node.client.url = hub.url
    assert owner.client.show_channel(channel_name)["members"][0]["effective"] == ["request-files"]
    assert node.client.pubsub_credentials(channel_name)["capability"]

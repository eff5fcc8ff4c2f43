# ruff: noqa: E501
"""The pure protocol pieces, without any network: envelopes, tokens, signed URLs, roles, membership."""

from __future__ import annotations

import pytest

from kachery_node.errors import (
    BadSignatureError,
    CapabilityError,
    ExpiredError,
    InvalidChannelNameError,
    InvalidPathError,
    InvalidTokenError,
    MalformedRequestError,
    StaleRequestError,
)
from kachery_node.identity import Keypair
from kachery_node.protocol import membership as mb
from kachery_node.protocol.channel_names import validate_channel_name
from kachery_node.protocol.hub_requests import make_body, sign_body, verify_request
from kachery_node.protocol.membership import Membership, MembershipError
from kachery_node.protocol.pubsub_tokens import issue_token, verify_token
from kachery_node.protocol.roles import (
    BANDS,
    ROLES,
    capabilities,
    check_capability,
    effective_roles,
    upload_role,
)
from kachery_node.protocol.signed_urls import sign_upload_url, validate_object_key, verify_upload

HUB = Keypair.generate()
NOW = 1_700_000_000_000


def test_roles_and_bands_table():
    assert len(ROLES) == 6 and len(BANDS) == 6
    caps = capabilities("lab", list(ROLES))
    assert caps == {f"lab-{b}": ["publish", "subscribe"] for b in BANDS}
    assert capabilities("lab", ["provide-tasks"]) == {"lab-provideTasks": ["publish"], "lab-requestTasks": ["subscribe"]}
    assert capabilities("lab", []) == {}
    assert effective_roles(["request-files", "provide-files"], ["provide-files", "request-tasks"]) == ["provide-files"]
    check_capability(caps, "lab-requestFiles", "publish")
    with pytest.raises(CapabilityError):
        check_capability(capabilities("lab", ["request-files"]), "lab-requestFiles", "subscribe")
    assert upload_role("sha1/aa/bb") == "provide-files" and upload_role("task_results/x") == "provide-tasks"
    with pytest.raises(InvalidPathError):
        upload_role("mutables/x")
    with pytest.raises(MalformedRequestError):
        capabilities("lab", ["admin"])


@pytest.mark.parametrize("name", ["abc", "lab.ephys-2024", "a" * 40, "A_b-c.d.e"])
def test_valid_channel_names(name):
    assert validate_channel_name(name) == name


@pytest.mark.parametrize("name", ["ab", "a" * 41, "a..b", ".abc", "abc.", "a b", "a/b", "ñandú", "", None, 5])
def test_invalid_channel_names(name):
    with pytest.raises(InvalidChannelNameError):
        validate_channel_name(name)


def test_signed_request_round_trip_and_failures():
    user = Keypair.generate()
    body = make_body("list_channels", HUB.public_hex, time_ms=NOW)
    headers = sign_body(user, "user", body)
    signer, obj = verify_request("user", body, headers, hub_id=HUB.public_hex, now=NOW + 59_000)
    assert signer == user.public_hex and obj["type"] == "list_channels"
    with pytest.raises(StaleRequestError):
        verify_request("user", body, headers, hub_id=HUB.public_hex, now=NOW + 61_000)
    with pytest.raises(BadSignatureError):  # other hub
        verify_request("user", body, headers, hub_id=Keypair.generate().public_hex, now=NOW)
    with pytest.raises(BadSignatureError):  # a user signature is not a node signature
        verify_request("node", body, {"Kachery-Node-Id": user.public_hex,
                                      "Kachery-Node-Signature": headers["Kachery-User-Signature"]},
                       hub_id=HUB.public_hex, now=NOW)
    with pytest.raises(BadSignatureError):  # one changed byte
        verify_request("user", body.replace(b"list", b"lisT"), headers, hub_id=HUB.public_hex, now=NOW)
    with pytest.raises(MalformedRequestError):
        verify_request("user", b'{"type": 1}', headers, hub_id=HUB.public_hex, now=NOW)
    short_nonce = make_body("x", HUB.public_hex, time_ms=NOW, nonce="abc")
    with pytest.raises(MalformedRequestError):
        verify_request("user", short_nonce, sign_body(user, "user", short_nonce), hub_id=HUB.public_hex, now=NOW)


def test_tokens():
    node = Keypair.generate().public_hex
    caps = capabilities("lab", ["request-files"])
    token = issue_token(HUB, node_id=node, channel="lab", capability=caps, now_ms=NOW, ttl_ms=1000)
    claims = verify_token(token, hub_id=HUB.public_hex, now_ms=NOW + 999)
    assert (claims.node, claims.channel, claims.capability, claims.expires_ms) == (node, "lab", caps, NOW + 1000)
    with pytest.raises(ExpiredError):
        verify_token(token, hub_id=HUB.public_hex, now_ms=NOW + 1000)
    with pytest.raises(InvalidTokenError):
        verify_token(token, hub_id=Keypair.generate().public_hex, now_ms=NOW)
    payload, sig = token.split(".")
    with pytest.raises(InvalidTokenError):
        verify_token(payload[::-1] + "." + sig, hub_id=HUB.public_hex, now_ms=NOW)
    for bad in ("", "a.b.c", None, "!!!.???"):
        with pytest.raises(InvalidTokenError):
            verify_token(bad, hub_id=HUB.public_hex, now_ms=NOW)


def test_signed_urls():
    node = Keypair.generate().public_hex
    url = sign_upload_url(HUB, "http://h/bucket", "lab/sha1/aa/x", max_size=10, expires=1000, node_id=node)
    path, query = url.split("?")
    assert path == "http://h/bucket/lab/sha1/aa/x"
    q = dict(kv.split("=") for kv in query.split("&"))
    grant = verify_upload(HUB.public_hex, "lab/sha1/aa/x", q, now_s=1000)
    assert (grant.max_size, grant.node) == (10, node)
    with pytest.raises(ExpiredError):
        verify_upload(HUB.public_hex, "lab/sha1/aa/x", q, now_s=1001)
    with pytest.raises(BadSignatureError):
        verify_upload(HUB.public_hex, "lab/sha1/aa/y", q, now_s=0)
    with pytest.raises(BadSignatureError):
        verify_upload(HUB.public_hex, "lab/sha1/aa/x", {**q, "max_size": "11"}, now_s=0)
    with pytest.raises(BadSignatureError):
        verify_upload(HUB.public_hex, "lab/sha1/aa/x", {**q, "node": "0" * 64}, now_s=0)
    with pytest.raises(BadSignatureError):
        verify_upload(HUB.public_hex, "lab/sha1/aa/x", {k: v for k, v in q.items() if k != "sig"}, now_s=0)


@pytest.mark.parametrize("key", ["lab/../x", "../lab/x", "/lab/x", "lab//x", "lab/x/", "lab\\x", "lab/a\x00b",
                                 "lab/.tmp/x", "lab/./x", "lab", "", "lab/x y", "lab/é", "lab/" + "a" * 1100])
def test_object_keys_refused(key):
    with pytest.raises(InvalidPathError):
        validate_object_key(key)


def test_membership_replay():
    owner, other = "o" * 64, "x" * 64
    n1, n2 = "1" * 64, "2" * 64
    msgs = [mb.channel_message("lab", owner, {}, NOW),
            mb.request_message(n1, "u" * 64, ["request-files", "provide-files"], NOW),
            mb.grant_message("grant", n1, ["provide-files", "request-tasks"], owner, NOW),
            mb.grant_message("grant", n2, ["request-files"], owner, NOW),
            mb.grant_message("revoke", n1, ["request-tasks"], owner, NOW)]
    m = Membership.from_payloads("lab", msgs)
    assert m.roles_of(n1) == ["provide-files"] and m.granted(n1) == ["provide-files"]
    assert m.roles_of(n2) == [] and m.nodes() == [n1, n2]
    m.apply(mb.request_message(n1, "u" * 64, [], NOW))  # leave
    assert m.roles_of(n1) == []
    m.apply(mb.delete_message(owner, NOW))
    assert m.deleted and m.roles_of(n2) == []
    with pytest.raises(MembershipError):
        m.apply(mb.grant_message("grant", n1, ["provide-files"], owner, NOW))
    with pytest.raises(MembershipError):  # a feed for another channel
        Membership.from_payloads("other", msgs)
    with pytest.raises(MembershipError):  # grants by someone else than the owner
        Membership.from_payloads("lab", [msgs[0], mb.grant_message("grant", n1, ["provide-files"], other, NOW)])
    with pytest.raises(MembershipError):
        Membership.from_payloads("lab", [msgs[0], {"type": "grant", "node": n1, "roles": ["root"], "by": owner}])
    with pytest.raises(MembershipError):
        Membership.from_payloads("lab", [msgs[0], {"type": "mystery"}])

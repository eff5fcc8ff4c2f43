"""Roles on a channel, enforced across real processes (issue 5): each refusal, as a user sees it.

* a node without the request role cannot ask (files, feeds);
* a node without the provide role never sees requests and cannot get upload URLs;
* providers check requesters against the channel's signed membership feed, so a request that
  reaches them from a node without the role (a relay that learns of a revocation only when the
  token expires) is dropped, and logged.
"""

from __future__ import annotations

import time

import httpx
import pytest
import trio

import kachery_feeds as kf
import kachery_node as kn
from kachery_node.identity import load_node_key
from kachery_node.protocol.bucket_layout import file_path
from kachery_node.protocol.file_messages import FileRequest, new_request_id
from kachery_node.protocol.node_messages import seal
from kachery_node.protocol.roles import ROLE_BANDS, band_name
from kachery_node.storage.followed_subfeeds import read_followed
from kachery_node.transport.hub_client import HubClient
from kachery_node.transport.pubsub.open_pubsub import open_pubsub
from tests.network.conftest import ALL_ROLES, PUBSUB_COMBINATIONS, QUICK_ANSWERS
from tests.network.test_faults import fetch, wait_until


# Pub-sub: each refusal is the daemon's, the hub's or the pub-sub service's own (each service
# enforces the roles of the credentials the hub issued); the bucket is never reached.
@pytest.mark.lab_combinations(*PUBSUB_COMBINATIONS)
def test_a_node_without_the_request_role_cannot_ask(lab):
    alice = lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ["request-feeds"])  # may follow feeds, may not ask for files
    uri = kn.open_storage(alice.storage_dir).store_bytes(b"alice's data\n", "data.txt")
    lines = fetch(bob, uri)
    assert lines[-1]["type"] == "error" and lines[-1]["kind"] == "NotFoundError", lines
    assert "does not have the request-files role" in lines[-1]["error"]
    assert "requestFile" not in alice.log() and "uploaded" not in alice.log()
    assert not lab.bucket_object(file_path("lab", kn.parse_uri(uri).sha1)).exists()

    carol = lab.add_node("carol", ["request-files"])  # may ask for files, may not follow feeds
    source = kf.open_store(alice.storage_dir / "feeds.db").create_feed().load_subfeed("log")
    source.append_message({"secret": True})
    r = httpx.post(f"{carol.client.base_url}/api/feeds/follow", json={"uri": source.uri},
                   headers={"Authorization": "Bearer " + _token(carol)}, timeout=10)
    assert r.status_code == 403, r.text
    assert "request-feeds role" in r.json()["error"]
    assert read_followed(carol.storage_dir) == []  # not remembered either


@pytest.mark.lab_combinations(*PUBSUB_COMBINATIONS)
def test_a_node_without_the_provide_role_never_sees_requests_and_cannot_upload(lab):
    alice = lab.add_node("alice", ["request-files", "request-feeds"])
    bob = lab.add_node("bob", ["request-files"], config=QUICK_ANSWERS)
    uri = kn.open_storage(alice.storage_dir).store_bytes(b"only alice has this\n", "a.txt")
    lines = fetch(bob, uri)
    assert lines[-1]["type"] == "error" and "no provider answered" in lines[-1]["error"], lines
    assert "requestFile" not in alice.log()  # she is not subscribed to requests at all

    r = httpx.post(f"{alice.client.base_url}/api/files/upload", json={"uri": uri, "channel": "lab"},
                   headers={"Authorization": "Bearer " + _token(alice)}, timeout=30)
    assert r.status_code >= 400, r.text
    assert "provide-files role" in r.json()["error"], r.text
    assert not lab.bucket_object(file_path("lab", kn.parse_uri(uri).sha1)).exists()
    # Nor can the node's key get an upload URL from the hub directly.
    key = load_node_key(alice.storage_dir)
    with HubClient(lab.hub.url, node_key=key) as hub, pytest.raises(kn.KacheryError, match="provide-files"):
        hub.upload_urls("lab", [{"path": file_path("", kn.parse_uri(uri).sha1)[1:], "size": 20}])


def _token(node) -> str:
    return (node.storage_dir / "daemon-token").read_text().strip()


@pytest.mark.lab_combinations(*PUBSUB_COMBINATIONS)
def test_providers_drop_requests_the_signed_membership_does_not_allow(make_lab, lab_backends):
    lab = make_lab("--token-ttl", "60")
    alice = lab.add_node("alice", ALL_ROLES)
    mallory = lab.add_node("mallory", ["request-files"], start=False)
    key = load_node_key(mallory.storage_dir)
    with HubClient(lab.hub.url, node_key=key) as hub:
        credentials = hub.pubsub_credentials("lab")  # valid for 60 s, with request-files
    lab.owner.run("channel", "revoke", "lab", mallory.node_id, "request-files")
    alice.stop()  # so that her view of the membership surely includes the revocation
    alice.start()
    lab.wait_connected(alice)
    uri = kn.open_storage(alice.storage_dir).store_bytes(b"not for mallory\n", "m.txt")
    sha1 = kn.parse_uri(uri).sha1

    # Mallory publishes a well-formed, correctly signed request with her still-valid token.
    refusal = trio.run(_publish_request_as, credentials, key, sha1)
    # The embedded relay refuses a token issued before a revocation concerning its node
    # (spec/pubsub.md §3). NATS accepts it on a new connection until it expires (live connections
    # are narrowed at once): the provider's own check of the signed membership is what refuses her.
    if lab_backends.startswith("embedded"):
        assert refusal is not None and "issued before a revocation" in refusal, refusal
    if refusal is None:
        wait_until(lambda: "may not publish on request-files" in alice.log(), 10,
                   "alice to drop mallory's request", alice)
        assert mallory.node_id[:12] in alice.log()
    else:  # a relay that knows of the revocation refuses it first: fine too
        assert "request" in refusal or "revocation" in refusal, refusal
    # No waiting here: the daemon decides to drop a message before any handler sees it (the log
    # line above is written then), and a relay's refusal means the message went nowhere; so no
    # upload of this file was started or will be.
    assert not lab.bucket_object(file_path("lab", sha1)).exists()
    assert f"uploaded {sha1}" not in alice.log()


async def _publish_request_as(credentials, key, sha1: str) -> str | None:
    """Publish a signed requestFile as the holder of ``credentials``; the relay's refusal or None."""
    body = FileRequest(sha1, new_request_id(), None, None, False).to_body()
    data = seal(key, channel="lab", band="request-files", body=body, now_ms=int(time.time() * 1000))
    try:
        with trio.fail_after(10):
            async with open_pubsub(credentials) as pubsub:
                await pubsub.publish(band_name("lab", ROLE_BANDS["request-files"][0]), data, ack=True)
    except (kn.KacheryError, OSError) as exc:
        return str(exc)
    except BaseExceptionGroup as group:  # refused inside the client's nursery (at auth)
        refused = group.subgroup((kn.KacheryError, OSError))
        if refused is None:
            raise
        return str(refused.exceptions[0])
    return None

# ruff: noqa: E501
"""The hub's web UI in headless Chromium: sign in with a one-time link, create a channel, grant and
revoke roles with checkboxes. Screenshots go to test-artifacts/."""

from __future__ import annotations

import json

import httpx

from .conftest import Actor


def test_login_create_grant_revoke_in_browser(hub, chromium, artifacts):
    owner = Actor(hub.url, "owner")
    owner.client.create_channel("web.existing")
    member = Actor(hub.url, "member-node")
    member.client.register_node("member-node")
    member.client.request_roles("web.existing", member.node_id, ["request-files", "provide-files"])

    link = owner.client.login_link()
    page = chromium.new_page()
    page.navigate(link)
    page.wait_for("document.querySelector('h1') && document.querySelector('h1').textContent === 'Your channels'")
    assert page.evaluate("document.body.innerText").count("web.existing") == 1
    page.screenshot(artifacts / "hub-home.png")

    # create a channel with the form
    page.evaluate("document.getElementById('new-channel').value = 'web.created-in-browser'")
    page.evaluate("document.querySelector('#create-form button').click()")
    page.wait_for("location.pathname === '/channels/web.created-in-browser'")
    assert "web.created-in-browser" in [c["channel"] for c in owner.client.list_channels()]
    # a bad name is refused with a clear message and creates nothing
    page.navigate(f"{hub.url}/")
    page.evaluate("document.getElementById('new-channel').value = 'x'")
    page.evaluate("document.querySelector('#create-form button').click()")
    msg = page.wait_for("document.getElementById('create-msg').textContent")
    assert "3-40 characters" in msg
    assert "x" not in [c["channel"] for c in owner.client.list_channels()]

    # grant with a checkbox, check through the API, then revoke
    page.navigate(f"{hub.url}/channels/web.existing")
    box = f"document.querySelector('input[data-node=\"{member.node_id}\"][data-role=\"provide-files\"]')"
    assert page.evaluate(f"{box}.checked") is False
    page.evaluate(f"{box}.click()")
    page.wait_for("document.getElementById('grant-msg').textContent.startsWith('Granted')")
    roles = owner.client.show_channel("web.existing")["members"][0]
    assert roles["granted"] == ["provide-files"] and roles["effective"] == ["provide-files"]
    assert "provide-files" in page.evaluate(f"document.getElementById('eff-{member.node_id}').innerText")
    page.evaluate(f"document.querySelector('input[data-node=\"{member.node_id}\"][data-role=\"request-tasks\"]').click()")
    page.wait_for("document.getElementById('grant-msg').textContent === 'Granted request-tasks'")
    page.navigate(f"{hub.url}/channels/web.existing")  # the page shows the hub's state after a reload
    assert page.evaluate(f"{box}.checked") is True
    assert "granted provide-files" in page.evaluate("document.body.innerText")  # recent activity
    page.screenshot(artifacts / "hub-channel-roles.png")
    page.evaluate(f"{box}.click()")
    page.wait_for("document.getElementById('grant-msg').textContent.startsWith('Revoked')")
    assert owner.client.show_channel("web.existing")["members"][0]["granted"] == ["request-tasks"]

    # the login link works once
    page.navigate(link)
    assert "not valid" in page.evaluate("document.body.innerText")
    page.screenshot(artifacts / "hub-login-link-used.png")


def test_ui_api_needs_session_and_csrf(hub):
    r = httpx.post(f"{hub.url}/ui/api/grant", content=json.dumps({"channel": "web.existing"}), timeout=10)
    assert (r.status_code, r.json()["error"]["code"]) == (403, "not_allowed")
    owner = Actor(hub.url, "owner2")
    with httpx.Client(base_url=hub.url, timeout=10) as browser:
        r = browser.get(owner.client.login_link().removeprefix(hub.url), follow_redirects=True)
        assert r.status_code == 200 and "Your channels" in r.text
        r = browser.post("/ui/api/create-channel", content=json.dumps({"channel": "csrf.test"}))
        assert (r.status_code, r.json()["error"]["code"]) == (403, "not_allowed")  # no CSRF header
        assert "csrf.test" not in [c["channel"] for c in owner.client.list_channels()]
    page = httpx.get(f"{hub.url}/", timeout=10).text
    assert "kachery hub login" in page  # signed out: how to sign in


def _signed_in_page(chromium, actor: Actor):
    page = chromium.new_page()
    page.navigate(actor.client.login_link())
    page.wait_for("document.querySelector('h1') && document.querySelector('h1').textContent === 'Your channels'")
    return page


def _channel_row(page, name: str) -> str:
    return page.evaluate(f"[...document.querySelectorAll('tr')].find(r => r.innerText.startsWith({json.dumps(name)})).innerText")


def test_channel_page_shows_embedded_backends(hub, chromium, channel_name):
    owner = Actor(hub.url, "owner")
    owner.client.create_channel(channel_name)
    page = _signed_in_page(chromium, owner)
    assert "embedded + embedded" in _channel_row(page, channel_name)
    page.navigate(f"{hub.url}/channels/{channel_name}")
    assert page.evaluate("document.querySelector('#backend-pubsub td').innerText") == "embedded (this hub)"
    assert page.evaluate("document.querySelector('#backend-bucket td').innerText") == "embedded (this hub)"
    hint = page.evaluate("document.getElementById('backends').innerText")
    assert f"kachery channel configure {channel_name} --hub {hub.url} --pubsub" in hint and "--bucket" in hint


def test_channel_page_shows_nats_gcs_and_ably_backends_but_no_secret(hub, chromium, channel_name, artifacts):
    """The hub contacts neither NATS nor GCS nor Ably when a channel is created or configured, so no
    stand-in needs to run: the page shows the public config; the seed and keys never appear."""
    from kachery_node.transport.pubsub import nats_jwt
    from tests.standins import fake_service_account

    seed, sa = nats_jwt.new_seed("account"), fake_service_account()
    key_lines = [line for line in sa["private_key"].splitlines() if "PRIVATE KEY" not in line and len(line) > 20]
    assert len(key_lines) > 10
    owner = Actor(hub.url, "owner")
    owner.client.create_channel(
        channel_name, config={"pubsub": {"backend": "nats", "url": "nats://127.0.0.1:4222,nats://127.0.0.1:4223"},
                              "bucket": {"backend": "gcs", "bucket": "lab-bucket", "endpoint": "http://127.0.0.1:9023"}},
        secrets={"pubsub": {"account_seed": seed}, "bucket": {"service_account": sa}})

    def assert_no_secret(page, *secrets: str) -> None:
        source = page.evaluate("document.documentElement.outerHTML")
        raw = httpx.get(page.evaluate("location.href"), cookies={"kachery_session": session}, timeout=10).text
        for text in (source, raw):
            assert "kachery hub" in text
            for s in (*secrets, *key_lines):
                assert s not in text

    page = _signed_in_page(chromium, owner)
    session = page.call("Network.getCookies", {"urls": [hub.url]})["cookies"][0]["value"]
    assert "nats + gcs" in _channel_row(page, channel_name)
    assert_no_secret(page, seed)
    page.navigate(f"{hub.url}/channels/{channel_name}")
    assert page.evaluate("document.querySelector('#backend-pubsub td').innerText") == (
        "nats nats://127.0.0.1:4222 nats://127.0.0.1:4223")
    assert page.evaluate("document.querySelector('#backend-bucket td').innerText") == (
        "gcs gcs://lab-bucket · endpoint http://127.0.0.1:9023")
    assert_no_secret(page, seed, "account_seed", "service_account", "private_key")
    page.screenshot(artifacts / "hub-channel-backends.png")

    # The owner moves pub-sub to Ably; the bucket keeps its stored key.
    api_key = "kapp.k1:s3cr3t-ably-key-secret-part"
    owner.client.configure_channel(
        channel_name, {"pubsub": {"backend": "ably", "endpoint": "127.0.0.1:9024", "rest_url": "http://127.0.0.1:9025"},
                       "bucket": {"backend": "gcs", "bucket": "lab-bucket", "endpoint": "http://127.0.0.1:9023"}},
        {"pubsub": {"api_key": api_key}})
    page.navigate(f"{hub.url}/channels/{channel_name}")
    assert page.evaluate("document.querySelector('#backend-pubsub td').innerText") == (
        "ably endpoint 127.0.0.1:9024 · REST http://127.0.0.1:9025")
    assert "gcs://lab-bucket" in page.evaluate("document.querySelector('#backend-bucket td').innerText")
    assert_no_secret(page, seed, api_key, "s3cr3t", "api_key")
    page.navigate(f"{hub.url}/")
    assert "ably + gcs" in _channel_row(page, channel_name)
    assert_no_secret(page, seed, api_key, "s3cr3t")

    # And the bucket to S3-compatible storage: endpoint and region shown, the secret key not.
    s3_secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    owner.client.configure_channel(
        channel_name, {"pubsub": {"backend": "ably", "endpoint": "127.0.0.1:9024", "rest_url": "http://127.0.0.1:9025"},
                       "bucket": {"backend": "s3", "bucket": "lab-bucket", "endpoint": "http://127.0.0.1:9026"}},
        {"bucket": {"access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": s3_secret}})
    page.navigate(f"{hub.url}/channels/{channel_name}")
    assert page.evaluate("document.querySelector('#backend-bucket td').innerText") == (
        "s3 s3://lab-bucket · endpoint http://127.0.0.1:9026 · region us-east-1")
    assert_no_secret(page, seed, api_key, s3_secret, "secret_access_key")


def test_channel_page_shows_who_is_online_and_folds_repeated_activity(hub, chromium, channel_name, artifacts):
    """The page showed neither whether a node is there nor when it was last seen, and its activity
    was a flood of identical lines (a node's token requests, upload URLs)."""
    owner = Actor(hub.url, "owner")
    owner.client.create_channel(channel_name)
    members = {}
    for label in ("workstation", "laptop"):
        members[label] = a = Actor(hub.url, label)
        a.client.register_node(label)
        a.client.request_roles(channel_name, a.node_id, ["request-files"])
        owner.client.grant(channel_name, a.node_id, ["request-files"])
    for _ in range(5):  # the workstation's daemon at work: five token requests
        members["workstation"].client.pubsub_credentials(channel_name)
    shown = {m["label"]: m for m in owner.client.show_channel(channel_name)["members"]}
    assert shown["workstation"]["online"] is True and shown["workstation"]["last_seen_ms"] > 0
    assert shown["laptop"]["online"] is False and shown["laptop"]["last_seen_ms"] is None

    page = _signed_in_page(chromium, owner)
    page.navigate(f"{hub.url}/channels/{channel_name}")
    row = page.evaluate(f"document.getElementById('node-{members['workstation'].node_id}').innerText")
    assert "online" in row and "offline" not in row
    row = page.evaluate(f"document.getElementById('node-{members['laptop'].node_id}').innerText")
    assert "offline" in row and "never seen" in row
    lines = page.evaluate("[...document.querySelectorAll('tr.activity')].map(r => r.innerText)")
    tokens = [line for line in lines if "token" in line]
    assert len(tokens) == 1 and "×5" in tokens[0], lines
    page.screenshot(artifacts / "hub-channel-presence.png")


def test_channel_page_shows_its_owner_disk_nodes_and_relay(hub, chromium, channel_name, artifacts):
    """Issue 13 item 6: the owner sees the channel's disk use against its quota, nodes online and
    relay traffic; the owner of a member node sees the channel, not these figures."""
    import hashlib
    import os

    from kachery_node.protocol.bucket_layout import pathify

    owner = Actor(hub.url, "owner")
    owner.client.create_channel(channel_name, quota=4_000_000)
    member = Actor(hub.url, "member")
    member.client.register_node("member")
    member.client.request_roles(channel_name, member.node_id, ["provide-files"])
    owner.client.grant(channel_name, member.node_id, ["provide-files"])
    data = os.urandom(1_000_000)
    [url] = member.client.upload_urls(channel_name, [{"path": "sha1/" + pathify(hashlib.sha1(data).hexdigest()),
                                                      "size": len(data)}])
    httpx.put(url, content=data, timeout=30).raise_for_status()

    page = _signed_in_page(chromium, owner)
    page.navigate(f"{hub.url}/channels/{channel_name}")
    disk = page.evaluate("document.getElementById('health-disk').innerText")
    assert "1 MB of 4 MB (25 %) · 1 object(s)" in disk and "quota: channel" in disk, disk
    assert page.evaluate("document.getElementById('health-nodes').innerText").endswith("1 of 1 online")
    assert "since the hub started" in page.evaluate("document.getElementById('health-relay').innerText")
    assert f"kachery channel quota {channel_name} SIZE" in page.evaluate("document.getElementById('health').innerText")
    page.screenshot(artifacts / "hub-channel-health.png")

    other = _signed_in_page(chromium, member)
    other.navigate(f"{hub.url}/channels/{channel_name}")
    assert channel_name in other.evaluate("document.querySelector('h1').innerText")
    assert other.evaluate("document.getElementById('health')") is None

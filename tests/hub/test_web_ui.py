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

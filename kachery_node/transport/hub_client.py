"""A client of the hub's API for people (user key) and nodes (node key).

Every call builds a fresh signed request (new time and nonce,
:mod:`~kachery_node.protocol.hub_requests`), posts it, and raises
:class:`~kachery_node.errors.HubRequestError` if the hub refuses. Example::

    hub = HubClient("http://127.0.0.1:8080", user_key=load_user_key())
    hub.create_channel("lab")
    hub.grant("lab", node_id, ["request-files"])
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from ..errors import HubRequestError
from ..identity import Keypair
from ..protocol.hub_requests import make_body, sign_body
from .tls import describe_tls_failure, require_secure_url, ssl_context

TIMEOUT = httpx.Timeout(30.0, connect=10.0)
SECRETS = "signed requests (and the secrets they carry)"  # what require_secure_url protects here


def _now_ms() -> int:
    return int(time.time() * 1000)


def _check(resp: httpx.Response) -> httpx.Response:
    if resp.status_code >= 400:
        try:
            err = resp.json()["error"]
            details = err.get("details") if isinstance(err.get("details"), dict) else None
            raise HubRequestError(resp.status_code, err["code"], err["message"], details)
        except (ValueError, KeyError, TypeError):
            raise HubRequestError(resp.status_code, "http_error",
                                  f"hub answered HTTP {resp.status_code}: {resp.text[:200]}") from None
    return resp


class HubClient:
    """Signed requests to one hub. Pass ``user_key`` for a person's requests, ``node_key`` for a
    node's; registering a node needs both.

    Every request first checks that ``url`` may carry signed requests (https, or http to this
    machine: :func:`~kachery_node.transport.tls.require_secure_url`), before connecting; ``https``
    hubs are verified with :func:`~kachery_node.transport.tls.ssl_context` (system store, or the
    lab's CA from ``$KACHERY_CA_FILE``)."""

    def __init__(self, url: str, *, user_key: Keypair | None = None, node_key: Keypair | None = None,
                 http: httpx.Client | None = None) -> None:
        self.url = url.rstrip("/")
        self.user_key = user_key
        self.node_key = node_key
        self._http = http or httpx.Client(timeout=TIMEOUT, verify=ssl_context())
        self._hub_id: str | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def hub_id(self) -> str:
        if self._hub_id is None:
            self._hub_id = self.info()["hub_id"]
        return self._hub_id

    def info(self) -> dict[str, Any]:
        # Checked here too: the hub ID this answers is what the signed requests that follow sign.
        require_secure_url(self.url, SECRETS)
        try:
            return _check(self._http.get(f"{self.url}/api/hub")).json()
        except httpx.HTTPError as exc:
            raise _unreachable(self.url, exc) from exc

    def _post(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        require_secure_url(self.url, SECRETS)
        try:
            return _check(self._http.post(f"{self.url}{path}", content=body,
                                          headers={**headers, "Content-Type": "application/json"}))
        except httpx.HTTPError as exc:
            raise _unreachable(self.url, exc) from exc

    def user_request(self, type_: str, **fields: Any) -> dict[str, Any]:
        if self.user_key is None:
            raise ValueError("this request needs the user key")
        body = make_body(type_, self.hub_id, time_ms=_now_ms(), **fields)
        return self._post("/api/user", body, sign_body(self.user_key, "user", body)).json()

    def node_request_raw(self, type_: str, **fields: Any) -> httpx.Response:
        if self.node_key is None:
            raise ValueError("this request needs the node key")
        body = make_body(type_, self.hub_id, time_ms=_now_ms(), **fields)
        return self._post("/api/node", body, sign_body(self.node_key, "node", body))

    def node_request(self, type_: str, **fields: Any) -> dict[str, Any]:
        return self.node_request_raw(type_, **fields).json()

    def witness_request(self, type_: str, **fields: Any) -> dict[str, Any]:
        """A node's request to the hub's witness (``POST /api/witness``, spec/witness.md §4):
        signed like :meth:`node_request`, with a larger body limit (it carries wire lines)."""
        if self.node_key is None:
            raise ValueError("this request needs the node key")
        body = make_body(type_, self.hub_id, time_ms=_now_ms(), **fields)
        return self._post("/api/witness", body, sign_body(self.node_key, "node", body)).json()

    # ------------------------------------------------------------------ people
    def register_node(self, label: str) -> dict[str, Any]:
        """Register the node to the user, proving possession of both keys."""
        if self.user_key is None or self.node_key is None:
            raise ValueError("registering a node needs both the node key and the user key")
        body = make_body("register_node", self.hub_id, time_ms=_now_ms(), node=self.node_key.public_hex,
                         user=self.user_key.public_hex, label=label)
        headers = {**sign_body(self.node_key, "node", body), **sign_body(self.user_key, "user", body)}
        return self._post("/api/register-node", body, headers).json()

    def login_link(self) -> str:
        return self.user_request("login_link")["url"]

    def create_channel(self, channel: str, config: dict | None = None,
                       secrets: dict | None = None, quota: int | None = None) -> dict[str, Any]:
        """Create ``channel``; ``config``/``secrets`` choose its backends (hub/backends.py),
        ``quota`` its bytes on the embedded bucket (None: the hub's default)."""
        fields: dict[str, Any] = {"channel": channel}
        if quota is not None:
            fields["quota"] = quota
        if config is not None:
            fields["config"] = config
        if secrets is not None:
            fields["secrets"] = secrets
        return self.user_request("create_channel", **fields)

    def configure_channel(self, channel: str, config: dict, secrets: dict | None = None) -> dict[str, Any]:
        """Change the channel's backends (owner only); unchanged parts keep their secrets."""
        fields: dict[str, Any] = {"channel": channel, "config": config}
        if secrets is not None:
            fields["secrets"] = secrets
        return self.user_request("configure_channel", **fields)

    def list_channels(self) -> list[dict[str, Any]]:
        return self.user_request("list_channels")["channels"]

    def show_channel(self, channel: str) -> dict[str, Any]:
        return self.user_request("show_channel", channel=channel)

    def grant(self, channel: str, node: str, roles: list[str]) -> dict[str, Any]:
        return self.user_request("grant", channel=channel, node=node, roles=roles)

    def revoke(self, channel: str, node: str, roles: list[str]) -> dict[str, Any]:
        return self.user_request("revoke", channel=channel, node=node, roles=roles)

    def delete_channel(self, channel: str) -> dict[str, Any]:
        return self.user_request("delete_channel", channel=channel)

    def request_roles(self, channel: str, node: str, roles: list[str]) -> dict[str, Any]:
        return self.user_request("request_roles", channel=channel, node=node, roles=roles)

    def list_nodes(self) -> list[dict[str, Any]]:
        return self.user_request("list_nodes")["nodes"]

    def set_quota(self, channel: str, quota: int | None) -> dict[str, Any]:
        """Set the channel's embedded-bucket quota in bytes (None: the hub's default); owner only."""
        return self.user_request("set_quota", channel=channel, quota=quota)

    def hub_status(self) -> dict[str, Any]:
        """Disk use and quota, connected nodes and relay traffic of each channel you own."""
        return self.user_request("hub_status")

    # ------------------------------------------------------------------ nodes
    def pubsub_credentials(self, channel: str) -> dict[str, Any]:
        return self.node_request("pubsub_token", channel=channel)

    def upload_urls(self, channel: str, objects: list[dict[str, Any]]) -> list[str]:
        """Signed upload URLs for ``[{"path": "sha1/aa/bb/cc/<sha1>", "size": n}, ...]``."""
        return self.node_request("upload_urls", channel=channel, objects=objects)["urls"]

    def channel_info(self, channel: str) -> dict[str, Any]:
        return self.node_request("channel_info", channel=channel)

    def membership_segment(self, channel: str, start: int = 0) -> bytes:
        """The channel's signed membership messages from ``start`` (kachery_feeds wire form)."""
        return self.node_request_raw("membership", channel=channel, start=start).content

    def fetch_membership(self, channel: str, store: Any, feed_id: str) -> Any:
        """Fetch the membership feed into ``store``, verifying it against ``feed_id``; return a
        :class:`~kachery_node.protocol.membership.Membership`."""
        from ..protocol.membership import Membership, import_segment

        feed_sf = store.load_feed(feed_id).load_subfeed("membership")
        segment = self.membership_segment(channel, feed_sf.get_num_local_messages())
        sf = import_segment(store, feed_id, segment)
        return Membership.from_subfeed(sf, channel)


def _unreachable(url: str, exc: httpx.HTTPError) -> HubRequestError:
    """No answer from the hub at all (status 0): say what was tried and what to check."""
    tls = describe_tls_failure(exc, url)
    if tls is not None:
        return HubRequestError(0, "tls_failed", tls)
    why = str(exc) or type(exc).__name__
    return HubRequestError(0, "unreachable", f"cannot reach the hub at {url} ({why}): is "
                           "`kachery hub serve` running there, and is the URL right (--hub or "
                           "KACHERY_HUB_URL)?")

"""A client of the hub's API for people (user key) and nodes (node key).

Every call builds a fresh signed request (new time and nonce,
:mod:`~kachery_node.protocol.hub_requests`), posts it, and raises
:class:`~kachery_node.errors.HubRequestError` if the hub refuses. Example::

    hub = HubClient("http://127.0.0.1:8080", user_key=load_user_key())
    hub.create_channel("lab")
    hub.grant("lab", node_id, ["request-files"])
"""

from __future__ import annotations

import threading
import time
from typing import Any
from urllib.parse import urlsplit

import orjson

from ..errors import HubRequestError
from ..identity import Keypair
from ..protocol.hub_requests import make_body, sign_body
from . import http_connections
from .http_connections import TRANSPORT_ERRORS, ConnectFailed, proxy_configured
from .tls import describe_tls_failure, require_secure_url, ssl_context

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0  # between two reads of an answer, as httpx's read timeout was
SECRETS = "signed requests (and the secrets they carry)"  # what require_secure_url protects here


def _now_ms() -> int:
    return int(time.time() * 1000)


class HubAnswer:
    """The hub's answer to one request: its ``status_code`` and ``content``."""

    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code = status_code
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON; raises HubRequestError if it is not JSON (not a kachery hub)."""
        try:
            return orjson.loads(self.content)
        except orjson.JSONDecodeError:
            raise HubRequestError(self.status_code, "bad_answer",
                                  f"the hub's answer is not JSON: {self.text[:200]!r}; is the URL "
                                  "a kachery hub's?") from None


def _check(resp: HubAnswer) -> HubAnswer:
    if resp.status_code >= 400:
        try:
            err = orjson.loads(resp.content)["error"]
            details = err.get("details") if isinstance(err.get("details"), dict) else None
            raise HubRequestError(resp.status_code, err["code"], err["message"], details)
        except (ValueError, KeyError, TypeError):
            raise HubRequestError(resp.status_code, "http_error",
                                  f"hub answered HTTP {resp.status_code}: {resp.text[:200]}") from None
    return resp


class HubClient:
    """Signed requests to one hub. Pass ``user_key`` for a person's requests, ``node_key`` for a
    node's; registering a node needs both. Safe to share between threads (the daemon's do).

    Every request first checks that ``url`` may carry signed requests (https, or http to this
    machine: :func:`~kachery_node.transport.tls.require_secure_url`), before connecting; ``https``
    hubs are verified with :func:`~kachery_node.transport.tls.ssl_context` (system store, or the
    lab's CA from ``$KACHERY_CA_FILE``). Requests go on the process's keep-alive connections
    (:mod:`.http_connections`), or through httpx when the environment names a proxy."""

    def __init__(self, url: str, *, user_key: Keypair | None = None, node_key: Keypair | None = None) -> None:
        self.url = url.rstrip("/")
        self.user_key = user_key
        self.node_key = node_key
        self._hub_id: str | None = None
        self._proxied: Any = None  # an httpx.Client, made when a proxy is configured
        self._proxied_lock = threading.Lock()

    def close(self) -> None:
        """Close what this client holds of its own (the pooled connections are the process's)."""
        with self._proxied_lock:
            proxied, self._proxied = self._proxied, None
        if proxied is not None:
            proxied.close()

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _target(self) -> tuple[http_connections.Origin, str]:
        """Where requests go: the URL's origin, and its path (a hub served under a path, behind
        a reverse proxy), which each request's path follows. From ``url`` at each request: a
        caller may point the client at a hub that moved (a restart on another port)."""
        parts = urlsplit(self.url)
        https = parts.scheme == "https"
        return (https, parts.hostname or "", parts.port or (443 if https else 80)), parts.path

    @property
    def hub_id(self) -> str:
        if self._hub_id is None:
            self._hub_id = self.info()["hub_id"]
        return self._hub_id

    def info(self) -> dict[str, Any]:
        """The hub's ``/api/hub`` (its ID, which every signed request names)."""
        return self._request("GET", "/api/hub").json()

    def _post(self, path: str, body: bytes, headers: dict[str, str]) -> HubAnswer:
        return self._request("POST", path, body, {**headers, "Content-Type": "application/json"})

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> HubAnswer:
        require_secure_url(self.url, SECRETS)
        if proxy_configured():
            return _check(self._through_proxy(method, path, body, headers or {}))
        origin, prefix = self._target()
        try:
            status, content = http_connections.exchange(origin, method, prefix + path, body,
                                                        headers or {}, CONNECT_TIMEOUT, READ_TIMEOUT)
        except (ConnectFailed, *TRANSPORT_ERRORS) as exc:
            raise _unreachable(self.url, exc) from exc
        return _check(HubAnswer(status, content))

    def _through_proxy(self, method: str, path: str, body: bytes | None,
                       headers: dict[str, str]) -> HubAnswer:
        """The request through httpx, which reads the proxy settings (and NO_PROXY) from the
        environment."""
        import httpx

        with self._proxied_lock:
            if self._proxied is None:
                self._proxied = httpx.Client(timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
                                             verify=ssl_context())
            client = self._proxied
        try:
            resp = client.request(method, f"{self.url}{path}", content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise _unreachable(self.url, exc) from exc
        return HubAnswer(resp.status_code, resp.content)

    def user_request(self, type_: str, **fields: Any) -> dict[str, Any]:
        if self.user_key is None:
            raise ValueError("this request needs the user key")
        body = make_body(type_, self.hub_id, time_ms=_now_ms(), **fields)
        return self._post("/api/user", body, sign_body(self.user_key, "user", body)).json()

    def node_request_raw(self, type_: str, **fields: Any) -> HubAnswer:
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


def _unreachable(url: str, exc: BaseException) -> HubRequestError:
    """No answer from the hub at all (status 0): say what was tried and what to check."""
    tls = describe_tls_failure(exc, url)
    if tls is not None:
        return HubRequestError(0, "tls_failed", tls)
    why = str(exc) or type(exc).__name__
    return HubRequestError(0, "unreachable", f"cannot reach the hub at {url} ({why}): is "
                           "`kachery hub serve` running there, and is the URL right (--hub or "
                           "KACHERY_HUB_URL)?")

"""The hub's HTTP application: API, web UI, pub-sub relay and bucket on one port.

Why one Starlette app under Hypercorn's trio worker: one process and one port serve the JSON API,
the server-rendered UI, the relay's WebSocket and the bucket's streaming GET/PUT, all on trio
(structured concurrency, the house runtime). The relay batches outgoing events per WebSocket
frame, which keeps the per-message cost of the ASGI layers small (bench/bench_relay.py measures
it against nats-server).

API (spec/hub.md): three signed endpoints dispatch on the body's ``type``, like the original's
``/api/kacheryNode``, through the tables :data:`USER_REQUESTS` and :data:`NODE_REQUESTS`:

* ``POST /api/user``           signed by a person's user key;
* ``POST /api/node``           signed by a registered node's key;
* ``POST /api/register-node``  signed by both the node key and its owner's user key;
* ``POST /api/witness``        signed by a node: the hub as the channels' default witness
  (:data:`WITNESS_REQUESTS`, spec/witness.md §4; a larger body limit, for wire lines).

Every refusal is a :class:`~kachery_node.errors.ChannelProtocolError`: it is answered
with its status and ``{"error": {"code", "message"}}``, logged, and changes nothing (checks come
before writes; the nonce is recorded only once the request is authentic and fresh).
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute

import kachery_feeds as kf

from ..errors import (
    ChannelProtocolError,
    MalformedRequestError,
    NotAllowedError,
    TooLargeError,
    WitnessRefusedError,
)
from ..loop_stalls import install_from_environment as install_loop_stall_monitor
from ..protocol.bucket_layout import subfeed_segment_path, upload_prefix
from ..protocol.channel_names import validate_channel_name
from ..protocol.hub_requests import verify_request, verify_signature_headers
from ..protocol.pubsub_tokens import DEFAULT_TOKEN_TTL_MS
from ..protocol.roles import ROLES, capabilities, require_role, upload_role, validate_roles
from ..protocol.signed_urls import DEFAULT_URL_TTL_S, MAX_UPLOAD_BYTES, validate_object_key
from ..protocol.witness import RefusalReason, WitnessRefusal
from ..storage.witness_state import Witness
from ..transport.bucket.bucket_interface import BucketBackend
from ..transport.bucket.http_bucket import EmbeddedBucketBackend
from ..transport.pubsub.pubsub_interface import PubSubBackend
from ..transport.pubsub.relay_client import EmbeddedPubSubBackend
from . import status
from .backends import SecretStore, keep_unchanged_secrets, validate_backends
from .bucket_quota import validate_quota
from .http_limits import HttpLimits
from .object_store import FilesystemBucket
from .relay import Relay, RelayLimits
from .revocations import RevocationQueue
from .state import HubState

log = logging.getLogger("kachery.hub")
MAX_UPLOADS_PER_REQUEST = 1000
ONLINE_WINDOW_MS = 30_000  # three missed membership refreshes: the node is away


@dataclass
class HubSettings:
    """How ``kachery hub serve`` was configured."""

    token_ttl_ms: int = DEFAULT_TOKEN_TTL_MS
    upload_url_ttl_s: int = DEFAULT_URL_TTL_S
    relay: RelayLimits = field(default_factory=RelayLimits)
    http: HttpLimits = field(default_factory=HttpLimits)
    channel_quota: int | None = None  # embedded-bucket bytes of a channel whose owner set none


class Hub:
    """The running hub: its state, backends, relay and bucket."""

    def __init__(self, state: HubState, settings: HubSettings | None = None) -> None:
        self.state = state
        self.settings = settings or HubSettings()
        self.public_url = ""  # set once the server is bound
        self.relay = Relay(state.hub_id, self.settings.relay, state.tokens_revoked_before)
        self.bucket = FilesystemBucket(state.dir / "bucket", state.hub_id, self.quota_of, self.settings.http)
        self.secrets = SecretStore(state.dir)
        self._backends: dict[tuple[str, str, bytes], Any] = {}
        # Revocations for external pub-sub services, kept in hub.db; sent by the server's task.
        self.revocations = RevocationQueue(state, self._make_pubsub)
        state.on_roles_changed = self._narrow_relay
        # The hub is every channel's default witness (spec/witness.md), with the hub's key; its
        # copies of witnessed subfeeds and its cosignatures live in <hub dir>/witness/.
        self.witness = Witness(state.dir / "witness", state.key.signing_key)
        # Witness work (verifying up to 4 MiB of wire lines) runs in a worker thread, one request
        # at a time: the relay and other requests are not held up, and the witness's checks and
        # records of one subfeed never interleave.
        self.witness_lock = trio.Lock()
        install_loop_stall_monitor("hub")  # a diagnostic, only with $KACHERY_LOOP_STALLS set

    def quota_of(self, channel: str) -> int | None:
        """``channel``'s quota on the embedded bucket: its owner's, else the hub's default (None:
        no limit); UnknownChannelError when there is no such channel (nothing may be written)."""
        own = self.state.channel(channel).quota_bytes
        return own if own is not None else self.settings.channel_quota

    def close(self) -> None:
        self.bucket.close()
        self.witness.close()

    def channel_created(self, name: str) -> None:
        """A channel was created: objects or figures left under its name (by a channel deleted
        before the hub removed them) are not its own."""
        self.bucket.remove_channel(name)
        self.relay.traffic.forget(name)

    def presence(self, channel: str, node: str, now_ms: int) -> dict[str, Any]:
        """``last_seen_ms`` (its last signed request, or None) and ``online``: connected to the
        embedded relay now, or, on any backend, seen within :data:`ONLINE_WINDOW_MS` (a running
        daemon refreshes its membership every 10 s)."""
        seen = self.state.last_seen(node)
        limits = self.relay.nodes.get((channel, node))
        on_relay = limits is not None and limits.connections > 0
        return {"last_seen_ms": seen,
                "online": on_relay or (seen is not None and now_ms - seen <= ONLINE_WINDOW_MS)}

    def _narrow_relay(self, channel: str, node: str | None) -> None:
        """A node's roles changed (or, with ``node`` None, the whole channel's): the embedded
        relay narrows its live connections now; an external service is told to drop the node's
        credentials, so that it asks again and gets only what it still holds."""
        try:
            if node is None:
                self.relay.restrict(channel, None, None)
            else:
                effective = self.state.roles(channel, node)["effective"]
                self.relay.restrict(channel, node, capabilities(channel, effective))
                self.revoke_on_service(channel, [node])
        except ChannelProtocolError:  # the channel is gone: nothing is allowed any more
            self.relay.restrict(channel, node, None)

    def revoke_on_service(self, channel: str, nodes: list[str]) -> None:
        """Queue the revocation of ``nodes``' credentials on the channel's current pub-sub service
        (call before a change of service or a deletion ends the channel's record of it)."""
        spec = self.state.channel(channel).config.get("pubsub") or {"backend": "embedded"}
        secret = self.secrets.get(channel).get("pubsub") or {}
        self.revocations.put(channel, spec, secret, nodes, self.settings.token_ttl_ms)

    # Backends are looked up by the channel's config (public) and secrets (hub only); the
    # handlers never know which backend answers (see hub/backends.py for the table).
    def _cached(self, part: str, channel: str, config: dict, make: Callable[[dict, dict], Any]) -> Any:
        spec = config.get(part) or {"backend": "embedded"}
        key = (part, channel, orjson.dumps(spec, option=orjson.OPT_SORT_KEYS))
        backend = self._backends.get(key)
        if backend is None:
            backend = make(spec, self.secrets.get(channel).get(part) or {} if channel else {})
            self._backends[key] = backend
        return backend

    def _make_pubsub(self, spec: dict, secret: dict) -> PubSubBackend:
        name = spec.get("backend")
        if name == "embedded":
            relay_url = "ws" + self.public_url[len("http"):] + "/pubsub"
            return EmbeddedPubSubBackend(self.state.key, relay_url)
        if name == "nats":
            from ..transport.pubsub.nats_backend import NatsPubSubBackend, parse_servers

            return NatsPubSubBackend(parse_servers(spec["url"]), secret["account_seed"])
        if name == "ably":
            from ..transport.pubsub.ably_backend import AblyPubSubBackend

            return AblyPubSubBackend(secret["api_key"], spec.get("endpoint"), spec.get("rest_url"))
        raise MalformedRequestError(f"this hub has no pub-sub backend {name!r}")

    def pubsub_backend(self, config: dict, channel: str = "") -> PubSubBackend:
        return self._cached("pubsub", channel, config, self._make_pubsub)

    def bucket_backend(self, config: dict, channel: str = "") -> BucketBackend:
        def make(spec: dict, secret: dict) -> BucketBackend:
            name = spec.get("backend")
            if name == "embedded":
                return EmbeddedBucketBackend(self.state.key, self.public_url + "/bucket")
            if name == "gcs":
                from ..transport.bucket.gcs_backend import GcsBucketBackend

                return GcsBucketBackend(spec["bucket"], secret["service_account"], spec["endpoint"])
            if name == "s3":
                from ..transport.bucket.s3_backend import S3BucketBackend

                return S3BucketBackend(spec, secret)
            raise MalformedRequestError(f"this hub has no bucket backend {name!r}")
        return self._cached("bucket", channel, config, make)

    def channel_info(self, name: str, node_id: str | None = None) -> dict[str, Any]:
        ch = self.state.channel(name)
        bucket = self.bucket_backend(ch.config, name)
        info = {"channel": ch.name, "owner": ch.owner_id, "feed_id": ch.feed_id,
                "membership_uri": ch.membership_uri, "config": ch.config,
                "bucket_url": bucket.read_base_url(), "bucket": bucket.node_info(),
                "created_ms": ch.created_ms}
        if node_id is not None:
            info["roles"] = self.state.roles(name, node_id)
        return info


def _now_ms() -> int:
    return int(time.time() * 1000)


def _field(body: dict, name: str, typ: type | tuple = str) -> Any:
    value = body.get(name)
    if not isinstance(value, typ) or isinstance(value, bool):
        raise MalformedRequestError(f"request needs {name!r}")
    return value


def _node_field(body: dict, name: str = "node") -> str:
    node = _field(body, name).lower()
    if len(node) != 64 or node.strip("0123456789abcdef"):
        raise MalformedRequestError(f"{name!r} must be a 64-hex node ID")
    return node


# ---------------------------------------------------------------------------- user requests
def _login_link(hub: Hub, user: str, body: dict, now: int) -> dict:
    token = hub.state.create_login_token(user, now)
    return {"url": f"{hub.public_url}/login/{token}", "expires_in_s": 300}


def _create_channel(hub: Hub, user: str, body: dict, now: int) -> dict:
    name = validate_channel_name(body.get("channel"))
    config, secrets = validate_backends(body.get("config"), body.get("secrets"))
    quota = validate_quota(body.get("quota"))
    hub.state.create_channel(name, user, config, now, quota)
    hub.secrets.put(name, secrets)
    hub._backends.clear()  # a channel of this name may have existed before
    hub.channel_created(name)
    return hub.channel_info(name)


def _set_quota(hub: Hub, user: str, body: dict, now: int) -> dict:
    """The owner sets the channel's embedded-bucket quota (null: the hub's default); a lower
    quota is enforced at the next write (which evicts as much as it needs)."""
    name = validate_channel_name(body.get("channel"))
    if "quota" not in body:
        raise MalformedRequestError("request needs 'quota' (bytes, or null for the hub's default)")
    hub.state.set_quota(name, validate_quota(body["quota"]), user, now)
    return status.channel_status(hub, hub.state.channel(name), now)


def _hub_status(hub: Hub, user: str, body: dict, now: int) -> dict:
    return status.hub_status(hub, user, now)


def _configure_channel(hub: Hub, user: str, body: dict, now: int) -> dict:
    """The owner changes the channel's backends; nodes move at their next connection."""
    name = validate_channel_name(body.get("channel"))
    ch = hub.state.require_owner(name, user)
    secrets = keep_unchanged_secrets(ch.config, hub.secrets.get(name), body.get("config"),
                                     body.get("secrets"))
    config, secrets = validate_backends(body.get("config"), secrets)
    if config["pubsub"] != ch.config.get("pubsub"):
        # Nodes on the old external service lose their credentials there (queued before the
        # channel's record of that service is replaced).
        hub.revoke_on_service(name, list(hub.state.membership(name).nodes()))
    hub.secrets.put(name, secrets)
    hub._backends.clear()  # built with the old secrets
    hub.state.configure_channel(name, config, user, now)
    hub._narrow_relay(name, None)  # embedded relay connections close: nodes reconnect to the new backend
    return hub.channel_info(name)


def _list_channels(hub: Hub, user: str, body: dict, now: int) -> dict:
    mine = {n["node_id"] for n in hub.state.nodes_of_user(user)}
    out = []
    for ch in hub.state.channels():
        member_nodes = [n for n in hub.state.membership(ch.name).nodes() if n in mine]
        if ch.owner_id == user or member_nodes:
            out.append({"channel": ch.name, "owner": ch.owner_id, "is_owner": ch.owner_id == user,
                        "feed_id": ch.feed_id, "created_ms": ch.created_ms,
                        "num_nodes": len(hub.state.membership(ch.name).nodes()),
                        "my_nodes": member_nodes})
    return {"channels": out}


def _show_channel(hub: Hub, user: str, body: dict, now: int) -> dict:
    name = validate_channel_name(body.get("channel"))
    info = hub.channel_info(name)
    members = hub.state.members(name)
    if info["owner"] != user:
        mine = {n["node_id"] for n in hub.state.nodes_of_user(user)}
        members = [m for m in members if m["node"] in mine]
        if not members:
            raise NotAllowedError(f"only the owner of {name!r} and owners of its nodes may see it")
    members = [{**m, **hub.presence(name, m["node"], now)} for m in members]
    return {**info, "members": members, "activity": hub.state.activity(name, 20)}


def _grant_or_revoke(kind: str) -> Callable[[Hub, str, dict, int], dict]:
    def handler(hub: Hub, user: str, body: dict, now: int) -> dict:
        name = validate_channel_name(body.get("channel"))
        node = _node_field(body)
        roles = validate_roles(body.get("roles"))
        hub.state.change_grant(kind, name, node, roles, user, now)
        return {"channel": name, "node": node, **hub.state.roles(name, node)}
    return handler


def _delete_channel(hub: Hub, user: str, body: dict, now: int) -> dict:
    name = validate_channel_name(body.get("channel"))
    hub.state.require_owner(name, user)
    hub.revoke_on_service(name, list(hub.state.membership(name).nodes()))
    hub.state.delete_channel(name, user, now)
    hub.secrets.delete(name)
    hub._backends.clear()
    hub.bucket.remove_channel(name)
    hub.relay.traffic.forget(name)
    return {"deleted": name}


def _request_roles(hub: Hub, user: str, body: dict, now: int) -> dict:
    name = validate_channel_name(body.get("channel"))
    node = _node_field(body)
    roles = validate_roles(body.get("roles"))
    hub.state.request_roles(name, node, user, roles, now)
    return hub.channel_info(name, node)


def _list_nodes(hub: Hub, user: str, body: dict, now: int) -> dict:
    nodes = hub.state.nodes_of_user(user)
    for n in nodes:
        n["channels"] = hub.state.channels_of_node(n["node_id"])
    return {"nodes": nodes}


USER_REQUESTS: dict[str, Callable[[Hub, str, dict, int], dict]] = {
    "login_link": _login_link,
    "create_channel": _create_channel,
    "configure_channel": _configure_channel,
    "list_channels": _list_channels,
    "show_channel": _show_channel,
    "grant": _grant_or_revoke("grant"),
    "revoke": _grant_or_revoke("revoke"),
    "delete_channel": _delete_channel,
    "request_roles": _request_roles,
    "list_nodes": _list_nodes,
    "set_quota": _set_quota,
    "hub_status": _hub_status,
}


# ---------------------------------------------------------------------------- node requests
def _member_channel(hub: Hub, node: str, body: dict) -> str:
    name = validate_channel_name(body.get("channel"))
    if node not in hub.state.membership(name).nodes():
        raise NotAllowedError(f"node is not a member of {name!r} (run `kachery node join {name}`)")
    return name


def _pubsub_token(hub: Hub, node: str, body: dict, now: int) -> dict:
    name = _member_channel(hub, node, body)
    roles = hub.state.roles(name, node)["effective"]
    if not roles:
        raise NotAllowedError(f"node has no effective roles on {name!r} (granted ∩ requested is empty)")
    ch = hub.state.channel(name)
    # Issued strictly after the last revocation concerning the node, even within its millisecond:
    # the relay refuses tokens issued at or before it.
    issued = max(now, hub.state.tokens_revoked_before(name, node) + 1)
    creds = hub.pubsub_backend(ch.config, name).credentials(
        node_id=node, channel=name, capability=capabilities(name, roles), now_ms=issued,
        ttl_ms=hub.settings.token_ttl_ms)
    hub.state.log(name, "token", node, f"pub-sub token for {' '.join(roles)}", now)
    return creds


async def _upload_urls(hub: Hub, node: str, body: dict, now: int) -> dict:
    name = _member_channel(hub, node, body)
    objects = body.get("objects")
    if not isinstance(objects, list) or not 1 <= len(objects) <= MAX_UPLOADS_PER_REQUEST:
        raise MalformedRequestError(f"objects must be a list of 1-{MAX_UPLOADS_PER_REQUEST} {{path, size}}")
    effective = hub.state.roles(name, node)["effective"]
    ch = hub.state.channel(name)
    backend = hub.bucket_backend(ch.config, name)
    expires = int(now / 1000) + hub.settings.upload_url_ttl_s
    checked = []
    for obj in objects:
        if not isinstance(obj, dict):
            raise MalformedRequestError("each object must be {path, size}")
        path, size = _field(obj, "path"), _field(obj, "size", int)
        if not 0 <= size <= MAX_UPLOAD_BYTES:
            raise TooLargeError(f"size must be 0..{MAX_UPLOAD_BYTES}")
        key = validate_object_key(f"{name}/{path}")
        require_role(effective, upload_role(path), f"uploading {path!r}")
        upload_prefix(path)  # only the layout's shapes: no key may become another's directory
        checked.append((key, size))
    # Signing is CPU work (GCS: an RSA signature, ~0.25 ms a URL; a request may ask for 1000):
    # done in a worker thread, so that the relay and other requests are not held up.
    urls = await trio.to_thread.run_sync(
        lambda: [backend.signed_upload_url(k, max_size=s, expires=expires, node_id=node) for k, s in checked])
    hub.state.log(name, "upload_urls", node, f"{len(urls)} upload URL(s)", now)
    return {"urls": urls, "expires": expires}


def _channel_info(hub: Hub, node: str, body: dict, now: int) -> dict:
    return hub.channel_info(_member_channel(hub, node, body), node)


# A node request's handler answers a dict, or (when it has blocking work) an awaitable of one.
NODE_REQUESTS: dict[str, Callable[[Hub, str, dict, int], dict | Awaitable[dict]]] = {
    "pubsub_token": _pubsub_token,
    "upload_urls": _upload_urls,
    "channel_info": _channel_info,
    "membership": lambda hub, node, body, now: {},  # answered as a raw segment below
}


# ---------------------------------------------------------------------------- witness requests
MAX_WITNESS_LINES = 10_000
WITNESS_BODY_BYTES = 4096 * 1024  # as http_limits.API_BODY_LIMITS["/api/witness"]


def _witnessed_subfeed(hub: Hub, node: str, body: dict) -> tuple[str, str, str]:
    """(channel, feed ID, subfeed hash) of a witness request: the node must provide feeds on the
    channel (witnessing costs the hub work; the channel's members are who may ask)."""
    name = _member_channel(hub, node, body)
    require_role(hub.state.roles(name, node)["effective"], "provide-feeds", "asking the hub to witness")
    return (name, *_subfeed_fields(body))


def _subfeed_fields(body: dict) -> tuple[str, str]:
    feed_id, sub = _field(body, "feed_id"), _field(body, "subfeed_hash")
    hexes = "0123456789abcdef"
    if len(feed_id) != 64 or feed_id.strip(hexes) or len(sub) != 40 or sub.strip(hexes):
        raise MalformedRequestError("feed_id must be 64 and subfeed_hash 40 lowercase hex")
    return feed_id, sub


async def _cosign_checkpoint(hub: Hub, node: str, body: dict, now: int) -> dict:
    """Cosign the checkpoint ending at the last of ``lines`` (spec/witness.md §4)."""
    name, feed_id, sub = _witnessed_subfeed(hub, node, body)
    lines = body.get("lines")
    if (not isinstance(lines, list) or not 1 <= len(lines) <= MAX_WITNESS_LINES
            or not all(isinstance(x, str) for x in lines)):
        raise MalformedRequestError(f"lines must be a list of 1-{MAX_WITNESS_LINES} wire lines (strings)")
    encoded = [x.encode() for x in lines]
    segments_to = body.get("segments_to", 0)
    if not isinstance(segments_to, int) or isinstance(segments_to, bool) or not 0 <= segments_to <= 2**53:
        raise MalformedRequestError("segments_to must be a non-negative integer")
    reader = _bucket_segments(hub, name, feed_id, sub) if segments_to else None
    try:
        async with hub.witness_lock:
            done = await trio.to_thread.run_sync(functools.partial(
                hub.witness.cosign, feed_id, sub, encoded, now // 1000,
                segments=reader, segments_to=segments_to))
    except WitnessRefusal as refusal:
        if refusal.proof is not None:
            hub.state.log(name, "fork", node, f"fork of feed://{feed_id}/~{sub}: {refusal.detail}", now)
        raise WitnessRefusedError(str(refusal), {
            "reason": refusal.reason.value, "size": refusal.size,
            "proof": refusal.proof.decode() if refusal.proof is not None else None}) from None
    return {"witness": hub.witness.public_hex, "checkpoint": done.checkpoint.text().decode(),
            "cosignature": done.cosignature.line()}


def _bucket_segments(hub: Hub, channel: str, feed_id: str, subfeed_hash: str):
    """A reader of the subfeed's segments in ``channel``'s bucket when that bucket is the hub's
    own (embedded), else None: the witness then takes only the request's lines. Read in the
    witness's worker thread, one segment at a time."""
    spec = hub.state.channel(channel).config.get("bucket") or {"backend": "embedded"}
    if spec.get("backend") != "embedded":
        return None

    def read(index: int) -> bytes | None:
        try:
            return hub.bucket.files.path_of(
                subfeed_segment_path(channel, feed_id, subfeed_hash, index)).read_bytes()
        except OSError:
            return None
    return read


async def _report_fork(hub: Hub, node: str, body: dict, now: int) -> dict:
    """A member found a fork: the hub verifies the proof and then cosigns neither branch past it."""
    name = _member_channel(hub, node, body)
    proof = _field(body, "proof")
    try:
        async with hub.witness_lock:
            info = await trio.to_thread.run_sync(hub.witness.report_fork, proof.encode())
    except kf.VerificationError as exc:
        raise MalformedRequestError(f"not a valid fork proof: {exc}") from None
    hub.state.log(name, "fork", node, f"fork of feed://{info.feed_id}/~{info.subfeed_hash} "
                                      f"at message {info.position} reported", now)
    return {"feed_id": info.feed_id, "subfeed_hash": info.subfeed_hash, "position": info.position}


MAX_HISTORY = 10_000


def _witness_history(hub: Hub, node: str, body: dict, now: int) -> dict:
    """Every cosignature the hub made for a subfeed (oldest first, at most the newest
    :data:`MAX_HISTORY`): with the messages' hashes from their own copy, readers verify each
    one, and so learn by when each message existed. Any member may ask."""
    _member_channel(hub, node, body)
    feed_id, sub = _subfeed_fields(body)
    rows = hub.witness.history_rows(feed_id, sub, MAX_HISTORY)
    proofs = hub.witness.fork_proofs(feed_id, sub)
    return {"witness": hub.witness.public_hex,
            "cosignatures": [{"size": size, "cosignature": line} for size, line in rows],
            "fork_proofs": [p.decode() for p in proofs[:1]]}


WITNESS_REQUESTS: dict[str, Callable[[Hub, str, dict, int], dict | Awaitable[dict]]] = {
    "cosign_checkpoint": _cosign_checkpoint,
    "report_fork": _report_fork,
    "witness_history": _witness_history,
}


# ---------------------------------------------------------------------------- endpoints
#: Refusals that are a step of the protocol, not a fault: the witness asking for the messages it
#: lacks (spec/witness.md §4.1; every first checkpoint of a subfeed meets it) or saying a
#: checkpoint is older than one it cosigned. Logged at INFO, not WARNING.
_PROTOCOL_STEPS = frozenset({RefusalReason.MISSING.value, RefusalReason.STALE.value})


def _refused(request: Request, exc: ChannelProtocolError, who: str = "") -> JSONResponse:
    step = isinstance(exc, WitnessRefusedError) and exc.details.get("reason") in _PROTOCOL_STEPS
    log.log(logging.INFO if step else logging.WARNING, "refused %s %s (%d %s)%s: %s",
            request.method, request.url.path, exc.status, exc.code,
            f" from {who[:12]}…" if who else "", exc.message)
    return JSONResponse(exc.to_json(), status_code=exc.status)


def create_app(hub: Hub) -> Starlette:
    """The Starlette application serving everything the hub offers."""
    state = hub.state

    async def info(request: Request) -> Response:
        return JSONResponse({"hub_id": state.hub_id, "url": hub.public_url, "roles": list(ROLES),
                             "witness": hub.witness.public_hex,
                             "relay_url": "ws" + hub.public_url[len("http"):] + "/pubsub",
                             "bucket_url": hub.public_url + "/bucket"})

    async def user_api(request: Request) -> Response:
        body = await request.body()
        now = _now_ms()
        user, obj = verify_request("user", body, request.headers, hub_id=state.hub_id, now=now)
        handler = USER_REQUESTS.get(obj["type"])
        if handler is None:
            raise MalformedRequestError(f"unknown request type {obj['type']!r}; "
                                        f"known: {', '.join(USER_REQUESTS)}")
        state.use_nonce(user, obj["nonce"], now)
        state.ensure_user(user, now)
        return JSONResponse(handler(hub, user, obj, now))

    async def node_api(request: Request) -> Response:
        body = await request.body()
        now = _now_ms()
        node, obj = verify_request("node", body, request.headers, hub_id=state.hub_id, now=now)
        handler = NODE_REQUESTS.get(obj["type"])
        if handler is None:
            raise MalformedRequestError(f"unknown request type {obj['type']!r}; "
                                        f"known: {', '.join(NODE_REQUESTS)}")
        state.node_owner(node)  # registered, and its owner still exists
        state.use_nonce(node, obj["nonce"], now)
        state.note_seen(node, now)
        if obj["type"] == "membership":
            name = _member_channel(hub, node, obj)
            start = obj.get("start", 0)
            if not isinstance(start, int) or isinstance(start, bool) or start < 0:
                raise MalformedRequestError("start must be a non-negative integer")
            segment, total = state.membership_segment(name, start)
            return Response(segment, media_type="application/x-kachery-segment",
                            headers={"Kachery-Feed-Id": state.channel(name).feed_id,
                                     "Kachery-Message-Count": str(total)})
        answer = handler(hub, node, obj, now)
        return JSONResponse(await answer if inspect.isawaitable(answer) else answer)

    async def witness_api(request: Request) -> Response:
        body = await request.body()
        now = _now_ms()
        node, obj = verify_request("node", body, request.headers, hub_id=state.hub_id, now=now,
                                   max_body_bytes=WITNESS_BODY_BYTES)
        handler = WITNESS_REQUESTS.get(obj["type"])
        if handler is None:
            raise MalformedRequestError(f"unknown witness request type {obj['type']!r}; "
                                        f"known: {', '.join(WITNESS_REQUESTS)}")
        state.node_owner(node)
        state.use_nonce(node, obj["nonce"], now)
        state.note_seen(node, now)
        answer = handler(hub, node, obj, now)
        return JSONResponse(await answer if inspect.isawaitable(answer) else answer)

    async def register_node(request: Request) -> Response:
        body = await request.body()
        now = _now_ms()
        node, obj = verify_request("node", body, request.headers, hub_id=state.hub_id, now=now,
                                   expected_type="register_node")
        user = verify_signature_headers("user", body, request.headers)
        if _node_field(obj) != node or _field(obj, "user") != user:
            raise MalformedRequestError("body's node and user must be the signers")
        label = _field(obj, "label")
        if not 1 <= len(label) <= 20:
            raise MalformedRequestError("label must be 1-20 characters")
        state.use_nonce(node, obj["nonce"], now)
        created = state.register_node(node, user, label, now)
        log.info("node %s… (%s) %s to user %s…", node[:12], label,
                 "registered" if created else "re-registered", user[:12])
        return JSONResponse({"node": node, "user": user, "created": created})

    async def handle_refusal(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ChannelProtocolError)
        who = request.headers.get("kachery-node-id") or request.headers.get("kachery-user-id") or ""
        return _refused(request, exc, who)

    from .web import web_routes

    routes = [
        Route("/api/hub", info, methods=["GET"]),
        Route("/api/user", user_api, methods=["POST"]),
        Route("/api/node", node_api, methods=["POST"]),
        Route("/api/register-node", register_node, methods=["POST"]),
        Route("/api/witness", witness_api, methods=["POST"]),
        Route("/bucket/{key:path}", hub.bucket.get, methods=["GET", "HEAD"]),
        Route("/bucket/{key:path}", hub.bucket.put, methods=["PUT"]),
        Route("/bucket/{key:path}", hub.bucket.preflight, methods=["OPTIONS"]),
        Route("/bucket-list", hub.bucket.list, methods=["GET"]),
        WebSocketRoute("/pubsub", hub.relay.endpoint),
        *web_routes(hub),
    ]
    return Starlette(routes=routes, exception_handlers={ChannelProtocolError: handle_refusal})


def hub_dir_default() -> Path:
    import os

    return Path(os.environ.get("KACHERY_HUB_DIR") or Path.home() / "kachery-hub")

"""A channel's backends: checking the owner's choice, keeping its secrets, building the objects.

A channel's *config* is public: it is written into the channel's membership feed, which every
member reads, and into ``channel_info``. It names the backends and where they are:

=========================================================  =====================================
config                                                     secret (kept on the hub only)
=========================================================  =====================================
``{"pubsub": {"backend": "embedded"}}``                    –
``{"pubsub": {"backend": "nats", "url": "nats://a:4222"}}``  ``{"account_seed": "SA…"}``
``{"pubsub": {"backend": "ably", "endpoint"?, "rest_url"?}}``  ``{"api_key": "<app>.<key id>:<secret>"}``
``{"bucket": {"backend": "embedded"}}``                    –
``{"bucket": {"backend": "gcs", "bucket", "endpoint"?}}``  ``{"service_account": {...key JSON...}}``
=========================================================  =====================================

Secrets come with the owner's signed ``create_channel``/``configure_channel`` request and are
stored in ``<hub dir>/secrets/<channel>.json`` (0600); they are never in an answer, a log line or
the membership feed. The hub uses them only to mint narrow credentials (NATS user JWTs, Ably token
requests, GCS signed URLs).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import orjson

from ..channels.errors import MalformedRequestError

PUBSUB_BACKENDS = ("embedded", "nats", "ably")
BUCKET_BACKENDS = ("embedded", "gcs")
PARTS = ("pubsub", "bucket")


def _part(config: dict, part: str) -> dict:
    value = config.get(part, {"backend": "embedded"})
    if not isinstance(value, dict) or not isinstance(value.get("backend"), str):
        raise MalformedRequestError(f"config.{part} must be an object with a 'backend'")
    return value


def _secret(secrets: dict, part: str, field: str, what: str) -> Any:
    value = (secrets.get(part) or {}).get(field)
    if not value:
        raise MalformedRequestError(f"the {what} backend needs its secret {field!r} (it stays on the hub)")
    return value


def validate_backends(config: Any, secrets: Any) -> tuple[dict, dict]:
    """Check a channel's config and secrets together; return them normalized.

    Raises MalformedRequestError for an unknown backend, a missing field or secret, or a secret
    that cannot be used (a malformed seed or key), before anything is stored.
    """
    if config is None:
        config = {}
    if not isinstance(config, dict) or (secrets is not None and not isinstance(secrets, dict)):
        raise MalformedRequestError("config and secrets must be objects")
    secrets = secrets or {}
    pubsub, bucket = _part(config, "pubsub"), _part(config, "bucket")
    out_secrets: dict[str, Any] = {}
    name = pubsub["backend"]
    if name == "embedded":
        pubsub = {"backend": "embedded"}
    elif name == "nats":
        from ..pubsub.nats import parse_servers
        from ..pubsub.nats_jwt import public_key  # nkeys: the "nats" extra

        url = pubsub.get("url")
        if not isinstance(url, str):
            raise MalformedRequestError("the nats backend needs 'url' (nats://host:port[,nats://...])")
        seed = _secret(secrets, "pubsub", "account_seed", "nats")
        try:
            if not (isinstance(seed, str) and public_key(seed).startswith("A")):
                raise ValueError
        except Exception:
            raise MalformedRequestError("account_seed must be a NATS account seed (SA…)") from None
        pubsub = {"backend": "nats", "url": ",".join(parse_servers(url))}
        out_secrets["pubsub"] = {"account_seed": seed}
    elif name == "ably":
        from ..pubsub.ably import parse_api_key

        key = _secret(secrets, "pubsub", "api_key", "ably")
        parse_api_key(key)
        pubsub = {"backend": "ably", **{k: str(pubsub[k]) for k in ("endpoint", "rest_url") if pubsub.get(k)}}
        out_secrets["pubsub"] = {"api_key": key}
    else:
        raise MalformedRequestError(f"unknown pub-sub backend {name!r} (known: {', '.join(PUBSUB_BACKENDS)})")
    name = bucket["backend"]
    if name == "embedded":
        bucket = {"backend": "embedded"}
    elif name == "gcs":
        from ..bucket.gcs import DEFAULT_ENDPOINT, validate_service_account

        if not isinstance(bucket.get("bucket"), str) or not bucket["bucket"]:
            raise MalformedRequestError("the gcs backend needs 'bucket' (the bucket's name)")
        sa = validate_service_account(_secret(secrets, "bucket", "service_account", "gcs"))
        bucket = {"backend": "gcs", "bucket": bucket["bucket"],
                  "endpoint": str(bucket.get("endpoint") or DEFAULT_ENDPOINT).rstrip("/")}
        out_secrets["bucket"] = {"service_account": sa}
    else:
        raise MalformedRequestError(f"unknown bucket backend {name!r} (known: {', '.join(BUCKET_BACKENDS)})")
    return {"pubsub": pubsub, "bucket": bucket}, out_secrets


def keep_unchanged_secrets(old_config: dict, old_secrets: dict, new_config: Any, new_secrets: Any) -> dict:
    """For a config change: a part whose backend and place did not change keeps its stored secret
    unless a new one is given (so an owner can move the bucket without re-sending the NATS seed)."""
    merged = dict(new_secrets or {})
    if isinstance(new_config, dict):
        for part in PARTS:
            if part not in merged and part in old_secrets and new_config.get(part) == old_config.get(part):
                merged[part] = old_secrets[part]
    return merged


class SecretStore:
    """Channel secrets in ``<hub dir>/secrets/<channel>.json``, readable by the hub's user only."""

    def __init__(self, hub_dir: Path) -> None:
        self.dir = Path(hub_dir) / "secrets"

    def _path(self, channel: str) -> Path:
        return self.dir / f"{channel}.json"

    def get(self, channel: str) -> dict[str, Any]:
        try:
            return orjson.loads(self._path(channel).read_bytes())
        except FileNotFoundError:
            return {}

    def put(self, channel: str, secrets: dict[str, Any]) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self._path(channel).with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(secrets))
        os.replace(tmp, self._path(channel))

    def delete(self, channel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(channel).unlink()

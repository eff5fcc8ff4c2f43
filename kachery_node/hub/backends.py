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
``{"bucket": {"backend": "s3", "bucket", "endpoint"?, "region"?}}``  ``{"access_key_id", "secret_acc…"}``
=========================================================  =====================================

Secrets come with the owner's signed ``create_channel``/``configure_channel`` request and are
stored in ``<hub dir>/secrets/<channel>.json`` (0600); they are never in an answer, a log line or
the membership feed. The hub uses them only to mint narrow credentials (NATS user JWTs, Ably token
requests, GCS and S3 signed URLs).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import orjson

from ..errors import MalformedRequestError

PUBSUB_BACKENDS = ("embedded", "nats", "ably")
BUCKET_BACKENDS = ("embedded", "gcs", "s3")
PARTS = ("pubsub", "bucket")
_SECRET_SHAPES = {"pubsub": '{"account_seed": "SA…"} (nats) or {"api_key": "<app>.<key id>:<secret>"} (ably)',
                  "bucket": '{"service_account": {…key JSON…}} (gcs) or '
                            '{"access_key_id": "…", "secret_access_key": "…"} (s3)'}


def _part(config: dict, part: str) -> dict:
    value = config.get(part, {"backend": "embedded"})
    if not isinstance(value, dict) or not isinstance(value.get("backend"), str):
        raise MalformedRequestError(f"config.{part} must be an object with a 'backend'")
    return value


def _optional_str(spec: dict, field: str, where: str) -> str | None:
    value = spec.get(field)
    if value is not None and not isinstance(value, str):
        raise MalformedRequestError(f"{where}.{field} must be a string")
    return value or None


def validate_secrets_shape(secrets: Any) -> dict[str, dict[str, Any]]:
    """``secrets`` as sent by the owner: absent, or an object whose members are among
    ``pubsub``/``bucket`` and are objects themselves; else MalformedRequestError saying which."""
    if secrets is None:
        return {}
    if not isinstance(secrets, dict):
        raise MalformedRequestError('secrets must be an object like {"pubsub": {...}, "bucket": {...}}')
    for part, value in secrets.items():
        if part not in PARTS:
            raise MalformedRequestError(f"secrets.{part}: unknown part (secrets has {' and '.join(PARTS)})")
        if not isinstance(value, dict):
            raise MalformedRequestError(f"secrets.{part} must be an object: {_SECRET_SHAPES[part]}")
    return secrets


def _secret(secrets: dict, part: str, field: str, what: str) -> Any:
    value = secrets.get(part, {}).get(field)
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
    if not isinstance(config, dict):
        raise MalformedRequestError('config must be an object like {"pubsub": {...}, "bucket": {...}}')
    secrets = validate_secrets_shape(secrets)
    pubsub, bucket = _part(config, "pubsub"), _part(config, "bucket")
    out_secrets: dict[str, Any] = {}
    name = pubsub["backend"]
    if name == "embedded":
        pubsub = {"backend": "embedded"}
    elif name == "nats":
        from ..transport.pubsub.nats_backend import parse_servers
        from ..transport.pubsub.nats_jwt import public_key  # nkeys: the "nats" extra

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
        from ..transport.pubsub.ably_backend import parse_api_key

        key = _secret(secrets, "pubsub", "api_key", "ably")
        parse_api_key(key)
        urls = {k: _optional_str(pubsub, k, "config.pubsub") for k in ("endpoint", "rest_url")}
        pubsub = {"backend": "ably", **{k: v for k, v in urls.items() if v}}
        out_secrets["pubsub"] = {"api_key": key}
    else:
        raise MalformedRequestError(f"unknown pub-sub backend {name!r} (known: {', '.join(PUBSUB_BACKENDS)})")
    name = bucket["backend"]
    if name == "embedded":
        bucket = {"backend": "embedded"}
    elif name == "gcs":
        from ..transport.bucket.gcs_backend import (
            DEFAULT_ENDPOINT,
            GcsBucketBackend,
            validate_service_account,
        )

        if not isinstance(bucket.get("bucket"), str) or not bucket["bucket"]:
            raise MalformedRequestError("the gcs backend needs 'bucket' (the bucket's name)")
        endpoint = (_optional_str(bucket, "endpoint", "config.bucket") or DEFAULT_ENDPOINT).rstrip("/")
        sa = validate_service_account(_secret(secrets, "bucket", "service_account", "gcs"))
        try:  # what the hub will do with it: load the key and sign (locally)
            GcsBucketBackend(bucket["bucket"], sa, endpoint).signed_upload_url(
                "check/sha1", max_size=0, expires=int(time.time()) + 60, node_id="")
        except Exception as exc:
            raise MalformedRequestError(f"the service account's private_key cannot sign URLs: "
                                        f"{type(exc).__name__}") from None
        bucket = {"backend": "gcs", "bucket": bucket["bucket"], "endpoint": endpoint}
        out_secrets["bucket"] = {"service_account": sa}
    elif name == "s3":
        from ..transport.bucket.s3_backend import validate_s3

        bucket, out_secrets["bucket"] = validate_s3(bucket, secrets.get("bucket", {}))
    else:
        raise MalformedRequestError(f"unknown bucket backend {name!r} (known: {', '.join(BUCKET_BACKENDS)})")
    return {"pubsub": pubsub, "bucket": bucket}, out_secrets


def keep_unchanged_secrets(old_config: dict, old_secrets: dict, new_config: Any, new_secrets: Any) -> dict:
    """For a config change: a part whose backend and place did not change keeps its stored secret
    unless a new one is given (so an owner can move the bucket without re-sending the NATS seed).
    MalformedRequestError if ``new_secrets`` is not of the shape :func:`validate_secrets_shape` wants."""
    merged = dict(validate_secrets_shape(new_secrets))
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

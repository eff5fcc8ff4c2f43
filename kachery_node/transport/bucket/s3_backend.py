"""The S3-compatible backend (AWS S3, MinIO, Ceph RGW, Wasabi, …): SigV4 presigned upload URLs
on the hub, public reads on nodes.

Theory of operation (the GCS backend's, with S3's names).

* Layout. Object ``<channel>/<path>`` of the channel's bucket, exactly as in the embedded bucket,
  addressed path-style: ``<endpoint>/<bucket>/<key>`` (every S3-compatible server understands
  it; virtual-host style needs DNS per bucket).
* Hub side (:class:`S3BucketBackend`). The channel owner hands the hub an access key (ID and
  secret) allowed to ``s3:PutObject`` in the bucket; it stays in the hub's secrets and is only
  used to presign URLs locally (:mod:`.s3_signing`; no network call). A URL is bound to one
  method (PUT), one object, one size (``content-length`` is a signed header, so the server
  refuses any other length) and an expiry (``X-Amz-Expires``).
* Node side (:class:`S3Bucket`). The bucket is publicly readable (a bucket policy allowing
  ``s3:GetObject``, and ``s3:ListBucket`` for listings, to everyone): ``GET`` with ``Range`` and
  ``HEAD`` at ``<endpoint>/<bucket>/<key>``, listing with ``ListObjectsV2``; the node needs no
  credential and no hub round trip to read. Why public reads and not presigned GETs: every read
  would otherwise need a hub request first (a file's chunks, every feed head poll), URLs would
  expire under long downloads, and nothing is gained: a channel's bucket holds content the node
  verifies anyway (file hashes, feed signatures), the same trust model as GCS and the embedded
  bucket. A deployment that must hide objects keeps the embedded bucket.
* Errors. S3 answers a refusal with ``<Error><Code>…</Code><Message>…</Message></Error>``; the
  node raises HubRequestError with that code (``SignatureDoesNotMatch`` for a wrong secret or a
  PUT of another size, ``InvalidAccessKeyId`` for an unknown key, ``AccessDenied`` with "Request
  has expired" for an expired URL), see :mod:`.xml_errors`.

Key file (``kachery channel create --s3-key-file FILE``): two lines, the access key ID then the
secret access key, as S3 services show them when a key is made; blank lines and surrounding
spaces are ignored.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ...errors import MalformedRequestError
from ...protocol.signed_urls import validate_object_key
from .bucket_interface import BucketBackend
from .http_bucket import HttpBucket
from .http_transfer import raise_for_status
from .s3_signing import MAX_EXPIRES_S, presign_url

DEFAULT_REGION = "us-east-1"  # MinIO's and Ceph's default; R2 takes "auto"


def default_endpoint(region: str) -> str:
    """AWS's regional endpoint (other services: give ``--s3-endpoint``)."""
    return f"https://s3.{region}.amazonaws.com"


def parse_s3_url(url: str) -> str:
    """``s3://<bucket>`` -> the bucket name (3-63 characters, no ``/``)."""
    if url.startswith("s3://"):
        name = url[len("s3://"):].strip("/")
        if 3 <= len(name) <= 63 and "/" not in name:
            return name
    raise MalformedRequestError(f"an S3 bucket is s3://<bucket name> (3-63 characters), not {url!r}")


def parse_key_file(path: Path) -> dict[str, str]:
    """The secret part of a key file: ``{"access_key_id", "secret_access_key"}``."""
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(lines) != 2 or any(" " in line for line in lines):
        raise MalformedRequestError(f"{path}: an S3 key file has two lines, the access key ID and then "
                                    f"the secret access key ({len(lines)} non-empty lines found)")
    return {"access_key_id": lines[0], "secret_access_key": lines[1]}


def s3_config(url: str, key_file: Path | None, endpoint: str | None, region: str | None
              ) -> tuple[dict[str, Any], dict[str, str]]:
    """(config, secret) of the bucket part for ``kachery channel create --bucket s3://…``."""
    if key_file is None:
        raise MalformedRequestError("--bucket s3://... needs --s3-key-file FILE (access key ID and secret, "
                                    "two lines)")
    config = {"backend": "s3", "bucket": parse_s3_url(url), **({"endpoint": endpoint} if endpoint else {}),
              **({"region": region} if region else {})}
    return config, parse_key_file(key_file)


def _check_endpoint(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/") or parts.query:
        raise MalformedRequestError(f"config.bucket.endpoint must be http(s)://host[:port], not {endpoint!r}")
    return endpoint.rstrip("/")


def validate_s3(spec: dict[str, Any], secret: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check an ``s3`` bucket config and its secret (by presigning a URL with it, locally);
    return both normalized. MalformedRequestError says what is wrong."""
    bucket = spec.get("bucket")
    if not isinstance(bucket, str):
        raise MalformedRequestError("the s3 backend needs 'bucket' (the bucket's name)")
    parse_s3_url(f"s3://{bucket}")
    region = spec.get("region") or DEFAULT_REGION
    if not isinstance(region, str) or not region.replace("-", "").isalnum():
        raise MalformedRequestError(f"config.bucket.region must be a region name like us-east-1, "
                                    f"not {region!r}")
    endpoint = spec.get("endpoint") or default_endpoint(region)
    if not isinstance(endpoint, str):
        raise MalformedRequestError("config.bucket.endpoint must be a string")
    endpoint = _check_endpoint(endpoint)
    key_id, key_secret = secret.get("access_key_id"), secret.get("secret_access_key")
    if not (isinstance(key_id, str) and key_id and isinstance(key_secret, str) and key_secret):
        raise MalformedRequestError("the s3 backend needs its secret {'access_key_id', 'secret_access_key'} "
                                    "(it stays on the hub)")
    config = {"backend": "s3", "bucket": bucket, "endpoint": endpoint, "region": region}
    secret = {"access_key_id": key_id, "secret_access_key": key_secret}
    S3BucketBackend(config, secret).signed_upload_url("check/x", max_size=0, expires=int(time.time()) + 60,
                                                      node_id="")
    return config, secret


class S3BucketBackend(BucketBackend):
    """Presigns SigV4 upload URLs with the channel's access key, which never leaves the hub."""

    name = "s3"

    def __init__(self, config: dict[str, Any], secret: dict[str, Any]) -> None:
        self.bucket = config["bucket"]
        self.region = config.get("region") or DEFAULT_REGION
        self.endpoint = (config.get("endpoint") or default_endpoint(self.region)).rstrip("/")
        self._key_id = secret["access_key_id"]
        self._secret = secret["secret_access_key"]

    def read_base_url(self) -> str:
        return f"{self.endpoint}/{self.bucket}"

    def signed_upload_url(self, key: str, *, max_size: int, expires: int, node_id: str,
                          now: float | None = None) -> str:
        now = time.time() if now is None else now
        expires_s = min(max(1, int(expires - now)), MAX_EXPIRES_S)
        return presign_url(f"{self.read_base_url()}/{validate_object_key(key)}", method="PUT",
                           access_key_id=self._key_id, secret=self._secret, region=self.region,
                           expires_s=expires_s, headers={"content-length": str(max_size)}, now=now)


_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class S3Bucket(HttpBucket):
    """Reads a public S3 bucket over HTTP: GET (with ranges) and HEAD from :class:`HttpBucket`,
    listing with ListObjectsV2; writes are PUTs to the hub's presigned URLs."""

    async def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        params = {"list-type": "2", "prefix": prefix}
        while True:
            resp = await self._request("GET", self.base_url, "list", params=params)
            raise_for_status(resp, "list")
            root = ET.fromstring(resp.content)
            ns = _S3_NS if root.tag.startswith(_S3_NS) else ""
            keys += [el.text or "" for el in root.iter(f"{ns}Key")]
            token = root.findtext(f"{ns}NextContinuationToken")
            if root.findtext(f"{ns}IsTruncated") != "true" or not token:
                return keys
            params["continuation-token"] = token

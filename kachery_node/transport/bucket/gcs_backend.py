"""The Google Cloud Storage backend: V4 signed upload URLs on the hub, public reads on nodes.

Theory of operation.

* Layout. Object ``<channel>/<path>`` of the channel's bucket, exactly as in the embedded bucket.
* Hub side (:class:`GcsBucketBackend`). The channel owner hands the hub a service-account key
  (JSON) allowed to write the bucket; it stays in the hub's secrets and is only used to sign V4
  URLs locally (google-cloud-storage; no network call). A URL is bound to one object name
  (path), one size (``Content-Length`` is a signed header, so GCS refuses any other length), the
  content type and an expiry (``X-Goog-Expires``).
* Node side (:class:`GcsBucket`). The bucket is publicly readable: ``GET <endpoint>/<bucket>/<key>``
  with ``Range`` (XML API), object metadata and listing through the JSON API
  (``<endpoint>/storage/v1/b/<bucket>/o``); the node needs no Google library and no credential to
  read. Downloads and uploads (plain PUTs to the signed URL) are the embedded bucket's
  (:mod:`.http_transfer`: straight off the socket when it can, httpx otherwise).
* Verification. GCS does not know that ``sha1/<h>`` must hash to ``h``, and a stand-in may check
  nothing at all (gcp-storage-emulator ignores signatures); the node verifies every download
  (file hashes, feed signatures) before storing it, which is what makes a public bucket safe.

``endpoint`` is ``https://storage.googleapis.com`` for the real service; tests point it at
gcp-storage-emulator.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import quote

import httpx

from ...errors import MalformedRequestError
from ...protocol.signed_urls import validate_object_key
from .bucket_interface import BucketBackend, ObjectInfo
from .http_bucket import HttpBucket
from .http_transfer import raise_for_status

DEFAULT_ENDPOINT = "https://storage.googleapis.com"
_SERVICE_ACCOUNT_FIELDS = ("type", "private_key", "client_email")


def parse_gcs_url(url: str) -> str:
    """``gcs://<bucket>`` (or ``gs://``) -> the bucket name."""
    for scheme in ("gcs://", "gs://"):
        if url.startswith(scheme):
            name = url[len(scheme):].strip("/")
            if name and "/" not in name:
                return name
    raise MalformedRequestError(f"a GCS bucket is gcs://<bucket name>, not {url!r}")


def validate_service_account(info: Any) -> dict[str, Any]:
    """Check that ``info`` looks like a service-account key (the JSON Google hands out)."""
    if not isinstance(info, dict) or info.get("type") != "service_account" or not all(
            isinstance(info.get(f), str) for f in _SERVICE_ACCOUNT_FIELDS):
        raise MalformedRequestError("the GCS credential must be a service-account key (JSON with "
                                    "type=service_account, private_key, client_email)")
    return info


class GcsBucketBackend(BucketBackend):
    """Signs V4 upload URLs with the channel's service-account key, which never leaves the hub."""

    name = "gcs"

    def __init__(self, bucket: str, service_account: dict[str, Any],
                 endpoint: str = DEFAULT_ENDPOINT) -> None:
        from google.oauth2 import service_account as sa  # google-cloud-storage: the "gcs" extra

        self.bucket = bucket
        self.endpoint = endpoint.rstrip("/")
        from google.cloud import storage

        info = validate_service_account(service_account)
        self._credentials = sa.Credentials.from_service_account_info(info)
        # The client is only used to sign (locally); it never sends a request.
        self._bucket = storage.Client(project=info.get("project_id") or "kachery",
                                      credentials=self._credentials).bucket(bucket)

    def read_base_url(self) -> str:
        return f"{self.endpoint}/{self.bucket}"

    def node_info(self) -> dict[str, Any]:
        """What a node needs to read the bucket (no secret)."""
        return {"backend": self.name, "read_url": self.read_base_url(),
                "api_url": f"{self.endpoint}/storage/v1/b/{self.bucket}"}

    def signed_upload_url(self, key: str, *, max_size: int, expires: int, node_id: str) -> str:
        blob = self._bucket.blob(validate_object_key(key))
        return blob.generate_signed_url(
            version="v4", method="PUT", credentials=self._credentials,
            expiration=dt.datetime.fromtimestamp(expires, dt.UTC), api_access_endpoint=self.endpoint,
            content_type="application/octet-stream", headers={"Content-Length": str(max_size)})


class GcsBucket(HttpBucket):
    """Reads a public GCS bucket over HTTP (ranges via the XML API, HEAD and listing via JSON)."""

    def __init__(self, read_url: str, api_url: str, client: httpx.AsyncClient | None = None) -> None:
        super().__init__(read_url, client)
        self.api_url = api_url.rstrip("/")

    async def head(self, key: str) -> ObjectInfo | None:
        resp = await self._request("GET", f"{self.api_url}/o/{quote(validate_object_key(key), safe='')}",
                                   f"metadata of {key}")
        if resp.status_code == 404:
            return None
        raise_for_status(resp, f"metadata of {key}")
        meta = resp.json()
        return ObjectInfo(key, int(meta["size"]), meta.get("etag", ""))

    async def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        params = {"prefix": prefix, "fields": "items(name),nextPageToken"}
        while True:
            resp = await self._request("GET", f"{self.api_url}/o", "list", params=params)
            raise_for_status(resp, "list")
            page = resp.json()
            keys += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken")
            if not token:
                return keys
            params["pageToken"] = token

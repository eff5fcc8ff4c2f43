"""The embedded bucket's hub-side backend and the HTTP client nodes use to read and write it."""

from __future__ import annotations

import httpx

from ...errors import NotFoundError
from ...identity import Keypair
from ...protocol.channel_errors import HubRequestError
from ...protocol.signed_urls import sign_upload_url, validate_object_key
from ..tls import require_secure_url, ssl_context
from .bucket_interface import Bucket, BucketBackend, ObjectInfo
from .xml_errors import xml_error

HTTP_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


class EmbeddedBucketBackend(BucketBackend):
    """Objects served by the hub itself at ``<hub>/bucket/<key>``; URLs signed with the hub key."""

    name = "embedded"

    def __init__(self, hub_key: Keypair, base_url: str) -> None:
        self.hub_key = hub_key
        self.base_url = base_url.rstrip("/")

    def read_base_url(self) -> str:
        return self.base_url

    def signed_upload_url(self, key: str, *, max_size: int, expires: int, node_id: str) -> str:
        return sign_upload_url(self.hub_key, self.base_url, key, max_size=max_size, expires=expires,
                               node_id=node_id)


def _raise_for(resp: httpx.Response, what: str) -> None:
    if resp.status_code < 400:
        return
    try:
        err = resp.json()["error"]
        raise HubRequestError(resp.status_code, err["code"], err["message"])
    except (ValueError, KeyError, TypeError):
        pass
    s3 = xml_error(resp.content)
    if s3 is not None:  # an object store's own refusal: keep its code (SignatureDoesNotMatch, …)
        raise HubRequestError(resp.status_code, s3[0], f"{what}: {s3[1]}") from None
    raise HubRequestError(resp.status_code, "http_error", f"{what}: HTTP {resp.status_code}") from None


class HttpBucket(Bucket):
    """Reads and writes a bucket over HTTP(S) (the embedded bucket; public GCS reads too).

    Reads are public (everything read is verified by hash or signature), so any URL is fine for
    them; a signed upload goes only where :func:`~kachery_node.transport.tls.require_secure_url`
    allows."""

    def __init__(self, base_url: str, client: httpx.AsyncClient | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = client or httpx.AsyncClient(timeout=HTTP_TIMEOUT, verify=ssl_context())

    async def aclose(self) -> None:
        await self._client.aclose()

    def url(self, key: str) -> str:
        return f"{self.base_url}/{validate_object_key(key)}"

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        headers = {}
        if start is not None or end is not None:
            headers["Range"] = f"bytes={start or 0}-{'' if end is None else end - 1}"
        resp = await self._client.get(self.url(key), headers=headers)
        if resp.status_code == 404:
            raise NotFoundError(f"{key} is not in the bucket")
        _raise_for(resp, f"GET {key}")
        return resp.content

    async def head(self, key: str) -> ObjectInfo | None:
        resp = await self._client.head(self.url(key))
        if resp.status_code == 404:
            return None
        _raise_for(resp, f"HEAD {key}")
        return ObjectInfo(key, int(resp.headers["content-length"]), resp.headers.get("etag", ""))

    async def put(self, signed_url: str, data: bytes) -> None:
        require_secure_url(signed_url, "a signed upload")
        resp = await self._client.put(signed_url, content=data,
                                      headers={"Content-Type": "application/octet-stream"})
        _raise_for(resp, "PUT")

    async def list(self, prefix: str) -> list[str]:
        base = self.base_url[: -len("/bucket")] if self.base_url.endswith("/bucket") else self.base_url
        resp = await self._client.get(f"{base}/bucket-list", params={"prefix": prefix})
        _raise_for(resp, "list")
        return resp.json()["keys"]

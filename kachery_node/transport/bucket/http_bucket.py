"""The embedded bucket's hub-side backend and the HTTP client nodes use to read and write it."""

from __future__ import annotations

import httpx

from ...errors import NotFoundError
from ...identity import Keypair
from ...protocol.signed_urls import sign_upload_url, validate_object_key
from ..tls import ssl_context
from . import http_transfer
from .bucket_interface import Bucket, BucketBackend, Destination, ObjectInfo, ProgressCallback, UploadData
from .http_transfer import HTTP_TIMEOUT, raise_for_status, unreachable


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


class HttpBucket(Bucket):
    """Reads and writes a bucket over HTTP(S) (the embedded bucket; public GCS reads too).

    Reads are public (everything read is verified by hash or signature), so any URL is fine for
    them; a signed upload goes only where :func:`~kachery_node.transport.tls.require_secure_url`
    allows (:func:`.http_transfer.put`). It owns its connection pool unless given ``client``;
    :meth:`aclose` closes what it owns."""

    def __init__(self, base_url: str, client: httpx.AsyncClient | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(timeout=HTTP_TIMEOUT, verify=ssl_context())

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    def url(self, key: str) -> str:
        return f"{self.base_url}/{validate_object_key(key)}"

    async def _request(self, method: str, url: str, what: str, **kw) -> httpx.Response:
        try:
            return await self._client.request(method, url, **kw)
        except httpx.HTTPError as exc:
            raise unreachable(what, exc) from exc

    async def get(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        headers = {}
        if start is not None or end is not None:
            headers["Range"] = f"bytes={start or 0}-{'' if end is None else end - 1}"
        resp = await self._request("GET", self.url(key), f"GET {key}", headers=headers)
        if resp.status_code == 404:
            raise NotFoundError(f"{key} is not in the bucket")
        raise_for_status(resp, f"GET {key}")
        return resp.content

    async def download(self, key: str, dest: Destination, *, start: int | None = None,
                       end: int | None = None, progress: ProgressCallback | None = None) -> int:
        try:
            return await http_transfer.download(self._client, self.url(key), dest, start=start,
                                                end=end, progress=progress)
        except NotFoundError:
            raise NotFoundError(f"{key} is not in the bucket") from None

    async def head(self, key: str) -> ObjectInfo | None:
        resp = await self._request("HEAD", self.url(key), f"HEAD {key}")
        if resp.status_code == 404:
            return None
        raise_for_status(resp, f"HEAD {key}")
        return ObjectInfo(key, int(resp.headers["content-length"]), resp.headers.get("etag", ""))

    async def put(self, signed_url: str, data: UploadData, *,
                  progress: ProgressCallback | None = None) -> None:
        await http_transfer.put(self._client, signed_url, data, progress=progress)

    async def list(self, prefix: str) -> list[str]:
        base = self.base_url[: -len("/bucket")] if self.base_url.endswith("/bucket") else self.base_url
        resp = await self._request("GET", f"{base}/bucket-list", "list", params={"prefix": prefix})
        raise_for_status(resp, "list")
        return resp.json()["keys"]

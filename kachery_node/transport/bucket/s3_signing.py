"""AWS Signature Version 4 for S3 as the hub needs it: a presigned URL (query-string auth) for
one PUT.

Why our own ~80 lines instead of botocore: the hub signs locally and never talks to S3 for an
upload, and botocore (about 14 MB with its service models, plus jmespath and s3transfer) would
be loaded for one HMAC chain. The algorithm is fixed and public (AWS's "Signature Version 4
signing process"); tests/cloud/test_s3.py checks this module against botocore's own signer,
byte for byte, and an S3 server that verifies signatures (s3rver) refuses what S3 would refuse.

Canonical request (what is signed)::

    METHOD \\n /bucket/key (each segment URI-encoded, "/" kept) \\n sorted query \\n
    lower-case "name:value\\n" of each signed header \\n signed header names joined by ";" \\n
    payload hash ("UNSIGNED-PAYLOAD" for a presigned URL)

String to sign: ``AWS4-HMAC-SHA256 \\n <yyyymmddThhmmssZ> \\n <date>/<region>/s3/aws4_request \\n
sha256(canonical request)``; the key is ``HMAC(HMAC(HMAC(HMAC("AWS4"+secret, date), region),
"s3"), "aws4_request")``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
MAX_EXPIRES_S = 7 * 24 * 3600  # S3 refuses a presigned URL valid longer than a week


def _uri_encode(value: str, safe: str = "") -> str:
    # RFC 3986 unreserved characters stay; everything else is %XX (upper case), as S3 wants.
    return quote(value, safe="-_.~" + safe)


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str = "s3") -> bytes:
    """The day's derived key (``date`` is ``yyyymmdd``)."""
    return _hmac(_hmac(_hmac(_hmac(("AWS4" + secret).encode(), date), region), service), "aws4_request")


def _timestamp(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


def _signature(secret: str, region: str, stamp: str, canonical: str) -> str:
    scope = f"{stamp[:8]}/{region}/s3/aws4_request"
    to_sign = "\n".join([ALGORITHM, stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    return hmac.new(signing_key(secret, stamp[:8], region), to_sign.encode(), hashlib.sha256).hexdigest()


def _canonical(method: str, path: str, query: dict[str, str], headers: dict[str, str],
               payload_hash: str) -> tuple[str, str]:
    canonical_query = "&".join(f"{_uri_encode(k)}={_uri_encode(v)}" for k, v in sorted(query.items()))
    names = sorted(h.lower() for h in headers)
    values = {k.lower(): " ".join(str(v).split()) for k, v in headers.items()}
    canonical_headers = "".join(f"{n}:{values[n]}\n" for n in names)
    signed = ";".join(names)
    return "\n".join([method, path, canonical_query, canonical_headers, signed, payload_hash]), signed


def presign_url(url: str, *, method: str, access_key_id: str, secret: str, region: str, expires_s: int,
                headers: dict[str, str] | None = None, now: float | None = None) -> str:
    """``url`` (``<endpoint>/<bucket>/<key>``, path not yet encoded) with SigV4 query auth: valid
    for ``expires_s`` seconds from ``now`` for ``method`` with exactly these ``headers`` (plus
    ``host``, always signed). A header in ``headers`` must be sent with the same value, so
    ``{"content-length": "123"}`` binds the upload to 123 bytes."""
    if not 1 <= expires_s <= MAX_EXPIRES_S:
        raise ValueError(f"expires_s must be 1..{MAX_EXPIRES_S}, not {expires_s}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
        raise ValueError(f"not a plain http(s) object URL: {url!r}")
    path = _uri_encode(parts.path or "/", safe="/")
    stamp = _timestamp(time.time() if now is None else now)
    signed_headers = {"host": parts.netloc, **{k.lower(): v for k, v in (headers or {}).items()}}
    query = {"X-Amz-Algorithm": ALGORITHM,
             "X-Amz-Credential": f"{access_key_id}/{stamp[:8]}/{region}/s3/aws4_request",
             "X-Amz-Date": stamp, "X-Amz-Expires": str(expires_s),
             "X-Amz-SignedHeaders": ";".join(sorted(signed_headers))}
    canonical, _ = _canonical(method, path, query, signed_headers, UNSIGNED_PAYLOAD)
    query["X-Amz-Signature"] = _signature(secret, region, stamp, canonical)
    encoded = "&".join(f"{_uri_encode(k)}={_uri_encode(v)}" for k, v in query.items())
    return f"{parts.scheme}://{parts.netloc}{path}?{encoded}"


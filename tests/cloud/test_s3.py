# ruff: noqa: E501
"""The S3-compatible backend: kachery's SigV4 presigner on the hub, moto's server mode as the bucket.

moto checks no signature, expiry or size on a presigned PUT (like gcp-storage-emulator). So the
tests check the hub's URLs the way S3 does with botocore's own signer (:func:`s3_v4_refusal`:
recompute the signature from the request actually sent, then the expiry), show that the node
turns an S3 refusal into a typed error carrying S3's code, and that bad data the stand-in lets in
is still caught by the node's own verification.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
import urllib.parse
from functools import partial
from unittest import mock

import httpx
import pytest
import trio

from kachery_node.errors import HubRequestError, NotFoundError
from kachery_node.transport.bucket.direct_get import DirectGet
from kachery_node.transport.bucket.open_bucket import open_bucket
from kachery_node.transport.bucket.s3_backend import S3Bucket
from kachery_node.transport.bucket.s3_signing import presign_url
from kachery_node.transport.bucket.xml_errors import xml_error
from tests.cloud.test_gcs import _script
from tests.hub.conftest import Actor, HubProcess
from tests.network.conftest import ALL_ROLES, Lab
from tests.standins import MotoS3

KEY_ID, SECRET = "AKIAKACHERYTEST00001", "kachery/test+secret"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = MotoS3(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3_hub(tmp_path_factory):
    h = HubProcess(tmp_path_factory.mktemp("s3hub"))
    yield h
    h.stop()


_n = iter(range(1000))


def s3_channel(hub, s3: MotoS3, roles: list[str], region: str = "eu-west-3") -> tuple[str, Actor, str]:
    owner, node = Actor(hub.url, "owner"), Actor(hub.url, "node")
    name = f"s3.t{next(_n)}"
    bucket = s3.new_bucket(f"s3-test-{next(_n)}")
    owner.client.create_channel(name, config={"bucket": {"backend": "s3", "bucket": bucket, "endpoint": s3.endpoint,
                                                         "region": region}},
                                secrets={"bucket": {"access_key_id": KEY_ID, "secret_access_key": SECRET}})
    node.client.register_node("node")
    node.client.request_roles(name, node.node_id, roles)
    owner.client.grant(name, node.node_id, roles)
    return name, node, bucket


def s3_v4_refusal(method: str, url: str, headers: dict[str, str], key_id: str, secret: str,
                  now: float | None = None) -> str | None:
    """Why S3 would refuse this request made with a presigned URL (None: it would accept it),
    computed with botocore's signer: S3 rebuilds the canonical request from the request it gets
    (method, path, the query without the signature, the signed headers' actual values), signs it
    with the secret of the access key named in X-Amz-Credential, compares; then the expiry."""
    from botocore.auth import S3SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    signature = query.pop("X-Amz-Signature")
    cred_id, _date, region, service, _ = query["X-Amz-Credential"].split("/")
    if cred_id != key_id:
        return "InvalidAccessKeyId"
    actual = {k.lower(): str(v) for k, v in headers.items()}
    signed = query["X-Amz-SignedHeaders"].split(";")
    if any(h not in actual and h != "host" for h in signed):
        return "SignatureDoesNotMatch"  # a signed header that was not sent
    request = AWSRequest(method=method, url=urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, quote_via=urllib.parse.quote))),
                         headers={h: actual[h] for h in signed if h != "host"})
    request.context["timestamp"] = query["X-Amz-Date"]
    auth = S3SigV4QueryAuth(Credentials(key_id, secret), service, region, expires=int(query["X-Amz-Expires"]))
    expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
    if expected != signature:
        return "SignatureDoesNotMatch"
    start = dt.datetime.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC).timestamp()
    if (time.time() if now is None else now) > start + int(query["X-Amz-Expires"]):
        return "AccessDenied: Request has expired"
    return None


@pytest.mark.parametrize("key", ["lab/sha1/aa/bb/cc/aabbcc", "lab/feeds/ab/x y+z~!'()*/seg 0", "lab/ü/ä"])
def test_the_presigner_makes_botocores_url_byte_for_byte(key):
    from botocore.auth import S3SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    now = 1796560000.0
    ours = presign_url(f"http://127.0.0.1:9000/bkt/{key}", method="PUT", access_key_id=KEY_ID, secret=SECRET,
                       region="eu-west-3", expires_s=900, headers={"Content-Length": "123"}, now=now)
    request = AWSRequest(method="PUT", url=f"http://127.0.0.1:9000/bkt/{urllib.parse.quote(key, safe='/~')}",
                         headers={"Content-Length": "123"})
    auth = S3SigV4QueryAuth(Credentials(KEY_ID, SECRET), "s3", "eu-west-3", expires=900)
    with mock.patch("botocore.auth.get_current_datetime",
                    return_value=dt.datetime.fromtimestamp(now, dt.UTC).replace(tzinfo=None)):
        auth.add_auth(request)
    assert ours == request.url


def test_upload_urls_are_bound_to_object_size_and_expiry(s3_hub, s3):
    ch, node, bucket = s3_channel(s3_hub, s3, ["provide-files"])
    data = b"content-addressed bytes\n"
    sha1 = hashlib.sha1(data).hexdigest()
    path = f"sha1/{sha1[:2]}/{sha1[2:4]}/{sha1[4:6]}/{sha1}"
    (url,) = node.client.upload_urls(ch, [{"path": path, "size": len(data)}])
    info = node.client.channel_info(ch)
    assert info["bucket"] == {"backend": "s3", "read_url": f"{s3.endpoint}/{bucket}"}
    assert info["config"]["bucket"] == {"backend": "s3", "bucket": bucket, "endpoint": s3.endpoint, "region": "eu-west-3"}
    assert url.startswith(f"{s3.endpoint}/{bucket}/{ch}/{path}?X-Amz-Algorithm=AWS4-HMAC-SHA256")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert query["X-Amz-SignedHeaders"] == "content-length;host"
    assert query["X-Amz-Credential"].startswith(f"{KEY_ID}/") and "/eu-west-3/s3/" in query["X-Amz-Credential"]
    assert 0 < int(query["X-Amz-Expires"]) <= 15 * 60
    headers = {"Content-Length": str(len(data)), "Content-Type": "application/octet-stream"}
    # What S3 would accept, and what it would refuse:
    assert s3_v4_refusal("PUT", url, headers, KEY_ID, SECRET) is None
    assert s3_v4_refusal("PUT", url.replace(f"/{ch}/sha1/", f"/{ch}/feeds/"), headers, KEY_ID, SECRET) == "SignatureDoesNotMatch"
    assert s3_v4_refusal("PUT", url, {**headers, "Content-Length": str(len(data) + 1)}, KEY_ID, SECRET) == "SignatureDoesNotMatch"
    longer = url.replace(f"X-Amz-Expires={query['X-Amz-Expires']}", "X-Amz-Expires=604800")
    assert s3_v4_refusal("PUT", longer, headers, KEY_ID, SECRET) == "SignatureDoesNotMatch"
    assert s3_v4_refusal("PUT", url, headers, KEY_ID, SECRET, now=time.time() + 16 * 60) == "AccessDenied: Request has expired"
    assert s3_v4_refusal("GET", url, headers, KEY_ID, SECRET) == "SignatureDoesNotMatch"
    assert s3_v4_refusal("PUT", url, headers, KEY_ID, "another secret") == "SignatureDoesNotMatch"
    assert s3_v4_refusal("PUT", url, headers, "AKIAANOTHERKEY000000", SECRET) == "InvalidAccessKeyId"
    # The URL works against the stand-in, and the object is then readable by anyone (public-read policy).
    assert httpx.put(url, content=data, headers=headers, timeout=10).status_code == 200
    assert httpx.get(f"{s3.endpoint}/{bucket}/{ch}/{path}", timeout=10).content == data
    with pytest.raises(HubRequestError) as e:
        node.client.upload_urls(ch, [{"path": "feeds/aa/x", "size": 3}])
    assert e.value.code == "not_allowed"


def test_the_secret_never_leaves_the_hub(s3_hub, s3):
    ch, node, _ = s3_channel(s3_hub, s3, ["provide-files", "request-files"])
    owner_list = Actor(s3_hub.url, "viewer").client.list_channels()
    seen = [json.dumps(node.client.channel_info(ch)), node.client.membership_segment(ch).decode(),
            json.dumps(node.client.pubsub_credentials(ch)),
            " ".join(node.client.upload_urls(ch, [{"path": "sha1/aa/aa/aa/" + "a" * 40, "size": 1}])),
            (s3_hub.dir / "hub.log").read_text(), json.dumps(owner_list)]
    assert not any(SECRET in text or urllib.parse.quote(SECRET, safe="") in text for text in seen)
    stored = s3_hub.dir / "secrets" / f"{ch}.json"
    assert SECRET in stored.read_text() and stored.stat().st_mode & 0o077 == 0


def test_reads_ranges_metadata_listing_and_typed_refusals(s3):
    bucket = s3.new_bucket(f"s3-read-{next(_n)}")
    private = s3.new_bucket(f"s3-private-{next(_n)}", public_read=False)
    for name, body in [("lab/a/1", b"0123456789"), ("lab/a/2", b"x"), ("other/a/3", b"y")]:
        httpx.put(f"{s3.endpoint}/{bucket}/{name}", content=body, timeout=10).raise_for_status()
    httpx.put(f"{s3.endpoint}/{private}/lab/a/1", content=b"secret", timeout=10).raise_for_status()

    async def main():
        b = open_bucket({"bucket": {"backend": "s3", "read_url": f"{s3.endpoint}/{bucket}"}})
        assert isinstance(b, S3Bucket)
        try:
            assert await b.get("lab/a/1") == b"0123456789"
            assert await b.get("lab/a/1", 2, 5) == b"234"
            assert await b.get("lab/a/1", 7) == b"789"
            assert (await b.head("lab/a/1")).size == 10
            assert await b.head("lab/a/none") is None
            assert sorted(await b.list("lab/")) == ["lab/a/1", "lab/a/2"]
            with pytest.raises(NotFoundError):
                await b.get("lab/a/none")
        finally:
            await b.aclose()
        # A bucket without the public-read policy: S3's own refusal, typed, with its code.
        p = open_bucket({"bucket": {"backend": "s3", "read_url": f"{s3.endpoint}/{private}"}})
        try:
            with pytest.raises(HubRequestError) as e:
                await p.get("lab/a/1")
            assert e.value.status == 403
            missing = open_bucket({"bucket": {"backend": "s3", "read_url": f"{s3.endpoint}/no-such-bucket"}})
            with pytest.raises(HubRequestError) as e:
                await missing.list("lab/")
            assert (e.value.status, e.value.code) == (404, "NoSuchBucket")
            await missing.aclose()
        finally:
            await p.aclose()

    trio.run(main)


# S3's documented error bodies for the three refusals of a presigned PUT (AWS S3 API reference,
# "Error responses"; the Message texts are S3's).
S3_REFUSALS = {
    "wrong key": (403, b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match the signature you provided. Check your key and signing method.</Message><AWSAccessKeyId>AKIA</AWSAccessKeyId></Error>', "SignatureDoesNotMatch"),
    "unknown key": (403, b'<Error><Code>InvalidAccessKeyId</Code><Message>The AWS Access Key Id you provided does not exist in our records.</Message></Error>', "InvalidAccessKeyId"),
    "expired URL": (403, b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Request has expired</Message><X-Amz-Expires>900</X-Amz-Expires></Error>', "AccessDenied"),
}


@pytest.mark.parametrize("case", list(S3_REFUSALS))
def test_a_refused_put_is_a_typed_error_with_s3s_code(case):
    """The node's PUT turns S3's XML refusal into HubRequestError(status, S3's code, S3's message).
    (An oversized PUT is a SignatureDoesNotMatch: Content-Length is signed.) The refusal comes
    from a real HTTP server answering S3's documented body."""
    status, body, code = S3_REFUSALS[case]

    async def main():
        async def serve(stream):
            await stream.receive_some(65536)
            await stream.send_all(b"HTTP/1.1 %d Forbidden\r\nContent-Type: application/xml\r\nContent-Length: %d\r\n"
                                  b"Connection: close\r\n\r\n%s" % (status, len(body), body))
            await stream.aclose()

        async with trio.open_nursery() as nursery:
            (listener,) = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
            port = listener.socket.getsockname()[1]
            b = S3Bucket(f"http://127.0.0.1:{port}/bkt")
            try:
                with pytest.raises(HubRequestError) as e:
                    await b.put(f"http://127.0.0.1:{port}/bkt/lab/x?X-Amz-Signature=00", b"abc")
                # The daemon's direct-socket download reads the same refusal the same way.
                get = DirectGet(f"http://127.0.0.1:{port}/bkt/lab/x", connect_timeout=5, read_timeout=5)
                with pytest.raises(HubRequestError) as e_get:
                    await trio.to_thread.run_sync(get.run, lambda piece: None)
            finally:
                await b.aclose()
            nursery.cancel_scope.cancel()
        assert (e.value.status, e.value.code) == (status, code)
        assert xml_error(body)[1] in e.value.message and "PUT" in e.value.message
        assert (e_get.value.status, e_get.value.code) == (status, code)

    trio.run(main)


def test_hub_refuses_bad_s3_configs_and_keys(s3_hub):
    owner = Actor(s3_hub.url, "owner")
    good_secret = {"bucket": {"access_key_id": KEY_ID, "secret_access_key": SECRET}}
    for config, secrets, says in [
        ({"backend": "s3"}, good_secret, "needs 'bucket'"),
        ({"backend": "s3", "bucket": "a/b"}, good_secret, "s3://<bucket name>"),
        ({"backend": "s3", "bucket": "bkt", "endpoint": "ftp://x"}, good_secret, "endpoint must be http(s)"),
        ({"backend": "s3", "bucket": "bkt", "region": "eu west"}, good_secret, "region"),
        ({"backend": "s3", "bucket": "bkt"}, {"bucket": {"access_key_id": KEY_ID}}, "secret_access_key"),
        ({"backend": "s3", "bucket": "bkt"}, None, "access_key_id"),
    ]:
        with pytest.raises(HubRequestError) as e:
            owner.client.create_channel(f"bad.s3{next(_n)}", config={"bucket": config}, secrets=secrets)
        assert e.value.code == "malformed_request" and says in e.value.message, (config, e.value)
    assert not list((s3_hub.dir / "secrets").glob("bad.s3*"))


def test_cli_creates_shows_and_checks_the_key_file(tmp_path, s3):
    from tests.nodes import TestNode

    hub = HubProcess(tmp_path / "hub")
    try:
        owner = TestNode(tmp_path, "owner")
        owner.env["KACHERY_HUB_URL"] = hub.url
        bucket = s3.new_bucket(f"s3-cli-{next(_n)}")
        bad = owner.run("channel", "create", "lab", "--bucket", f"s3://{bucket}", check=False)
        assert bad.returncode != 0 and "--s3-key-file" in bad.stderr
        one_line = tmp_path / "one.key"
        one_line.write_text(f"{KEY_ID}:{SECRET}\n")
        bad = owner.run("channel", "create", "lab", "--bucket", f"s3://{bucket}", "--s3-key-file", str(one_line), check=False)
        assert bad.returncode != 0 and "two lines" in bad.stderr
        key_file = s3.key_file(tmp_path / "s3.key", KEY_ID, SECRET)
        info = owner.json("channel", "create", "lab", "--bucket", f"s3://{bucket}", "--s3-endpoint", s3.endpoint,
                          "--s3-key-file", str(key_file))
        assert info["config"]["bucket"] == {"backend": "s3", "bucket": bucket, "endpoint": s3.endpoint,
                                            "region": "us-east-1"}
        assert SECRET not in json.dumps(info)
        shown = owner.run("channel", "show", "lab").stdout
        assert f"bucket s3://{bucket}" in shown
        stored = json.loads((hub.dir / "secrets" / "lab.json").read_text())
        assert stored["bucket"] == {"access_key_id": KEY_ID, "secret_access_key": SECRET}
    finally:
        hub.stop()


def test_bad_data_the_stand_in_lets_in_is_caught_by_the_node(tmp_path, s3):
    """moto takes a PUT with a forged signature (real S3 answers 403 SignatureDoesNotMatch) and
    content that does not match its sha1/ name (nothing but the node refuses that). The reader
    rejects the object, stores nothing, and says why."""
    hub = HubProcess(tmp_path / "hub")
    bucket = s3.new_bucket(f"s3-bad-{next(_n)}")
    lab = Lab(tmp_path, hub, create_args=("--bucket", f"s3://{bucket}", "--s3-endpoint", s3.endpoint,
                                          "--s3-key-file", str(s3.key_file(tmp_path / "s3.key")),
                                          "--s3-region", "eu-west-3"))
    try:
        alice = lab.add_node("alice", ALL_ROLES)
        bob = lab.add_node("bob", ["request-files"])
        data = tmp_path / "result.txt"
        data.write_text("the true result\n")
        uri = _script(alice, f"import kachery_node as kn; print(kn.upload_file({str(data)!r}, channel='lab'))").strip()
        alice.stop()  # only the bucket has it now
        sha1 = uri.split("/")[2]
        key = f"lab/sha1/{sha1[:2]}/{sha1[2:4]}/{sha1[4:6]}/{sha1}"
        assert httpx.get(f"{s3.endpoint}/{bucket}/{key}", timeout=10).content == b"the true result\n"
        forged = f"{s3.endpoint}/{bucket}/{key}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature={'00' * 32}"
        assert httpx.put(forged, content=b"a forged result!\n", timeout=10).status_code == 200  # the stand-in's gap
        out = _script(bob, f"""
import kachery_node as kn
try:
    print(kn.load_text({uri!r}))
except kn.NotFoundError as e:
    print("refused:", e)
""")
        assert out.startswith("refused:") and "corrupted" in out, out
        assert "forged" not in out
        stored = list((bob.storage_dir / "sha1").rglob("*")) if (bob.storage_dir / "sha1").exists() else []
        assert not [p for p in stored if p.is_file()]
    finally:
        lab.stop()
        hub.stop()

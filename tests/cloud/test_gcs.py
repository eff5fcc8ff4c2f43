# ruff: noqa: E501
"""The GCS backend with the real google-cloud-storage library (signing on the hub) and
gcp-storage-emulator as the bucket.

The emulator checks no signature, expiry or precondition. So the tests do two things: they check
the hub's V4 signed URLs the way GCS does (:func:`gcs_v4_refusal`, GCS's documented canonical
request, RSA-SHA256 with the service account's public key), and they show that bad data the
emulator lets in is still caught by the node's own verification.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
import sys
import time
import urllib.parse

import httpx
import pytest
import trio
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from kachery_node.transport.bucket.gcs_backend import GcsBucket
from kachery_node.transport.bucket.open_bucket import open_bucket
from tests.hub.conftest import Actor, HubProcess
from tests.network.conftest import ALL_ROLES, Lab
from tests.standins import GcsEmulator, fake_service_account


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    emulator = GcsEmulator(tmp_path_factory.mktemp("gcs"))
    yield emulator
    emulator.stop()


@pytest.fixture(scope="module")
def gcs_hub(tmp_path_factory):
    h = HubProcess(tmp_path_factory.mktemp("gcshub"))
    yield h
    h.stop()


_n = iter(range(1000))


def new_bucket(gcs: GcsEmulator) -> str:
    name = f"gcs-test-{next(_n)}"
    resp = httpx.post(f"{gcs.endpoint}/storage/v1/b", params={"project": "t"}, json={"name": name}, timeout=10)
    assert resp.status_code == 200, resp.text
    return name


def gcs_channel(hub, gcs, roles: list[str]) -> tuple[str, Actor, Actor, dict]:
    owner, node = Actor(hub.url, "owner"), Actor(hub.url, "node")
    sa = fake_service_account()
    name = f"gcs.t{next(_n)}"
    bucket = new_bucket(gcs)
    owner.client.create_channel(name, config={"bucket": {"backend": "gcs", "bucket": bucket, "endpoint": gcs.endpoint}},
                                secrets={"bucket": {"service_account": sa}})
    node.client.register_node("node")
    node.client.request_roles(name, node.node_id, roles)
    owner.client.grant(name, node.node_id, roles)
    return name, owner, node, sa


def gcs_v4_refusal(method: str, url: str, headers: dict[str, str], service_account: dict,
                   now: dt.datetime | None = None) -> str | None:
    """Why GCS would refuse this request made with a V4 signed URL (None: it would accept it).

    GCS recomputes the canonical request from the request it receives (method, path, query
    without the signature, the signed headers' actual values), hashes it into the string to sign,
    and checks the RSA-SHA256 signature with the service account's public key; then the expiry.
    """
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    signature = query.pop("X-Goog-Signature")[0]
    q = lambda s: urllib.parse.quote(str(s), safe="~")  # noqa: E731
    canonical_query = "&".join(sorted(f"{q(k)}={q(v[0])}" for k, v in query.items()))
    actual = {k.lower(): str(v).strip() for k, v in headers.items()}
    actual["host"] = parts.netloc
    signed = query["X-Goog-SignedHeaders"][0].split(";")
    if any(h not in actual for h in signed):
        return "a signed header is missing"
    canonical_headers = "".join(f"{h}:{actual[h]}\n" for h in signed)
    canonical = "\n".join([method, parts.path, canonical_query, canonical_headers, ";".join(signed), "UNSIGNED-PAYLOAD"])
    date = query["X-Goog-Date"][0]
    scope = query["X-Goog-Credential"][0].split("/", 1)[1]
    to_sign = "\n".join(["GOOG4-RSA-SHA256", date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = serialization.load_pem_private_key(service_account["private_key"].encode(), None).public_key()
    try:
        key.verify(bytes.fromhex(signature), to_sign.encode(), padding.PKCS1v15(), hashes.SHA256())
    except Exception:
        return "SignatureDoesNotMatch"
    start = dt.datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    if (now or dt.datetime.now(dt.UTC)) > start + dt.timedelta(seconds=int(query["X-Goog-Expires"][0])):
        return "ExpiredToken"
    return None


def test_upload_urls_are_v4_signed_and_bound_to_path_size_and_expiry(gcs_hub, gcs):
    ch, _owner, node, sa = gcs_channel(gcs_hub, gcs, ["provide-files"])
    data = b"content-addressed bytes\n"
    sha1 = hashlib.sha1(data).hexdigest()
    path = f"sha1/{sha1[:2]}/{sha1[2:4]}/{sha1[4:6]}/{sha1}"
    (url,) = node.client.upload_urls(ch, [{"path": path, "size": len(data)}])
    info = node.client.channel_info(ch)
    bucket = info["config"]["bucket"]["bucket"]
    assert info["bucket"] == {"backend": "gcs", "read_url": f"{gcs.endpoint}/{bucket}",
                              "api_url": f"{gcs.endpoint}/storage/v1/b/{bucket}"}
    assert url.startswith(f"{gcs.endpoint}/{bucket}/{ch}/{path}?X-Goog-Algorithm=GOOG4-RSA-SHA256")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query["X-Goog-SignedHeaders"] == ["content-length;content-type;host"]
    assert 0 < int(query["X-Goog-Expires"][0]) <= 15 * 60
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))}
    # What GCS would accept, and what it would refuse:
    assert gcs_v4_refusal("PUT", url, headers, sa) is None
    other_path = url.replace(f"/{ch}/sha1/", f"/{ch}/feeds/")
    assert gcs_v4_refusal("PUT", other_path, headers, sa) == "SignatureDoesNotMatch"
    assert gcs_v4_refusal("PUT", url, {**headers, "Content-Length": str(len(data) + 1)}, sa) == "SignatureDoesNotMatch"
    longer = url.replace(f"X-Goog-Expires={query['X-Goog-Expires'][0]}", "X-Goog-Expires=604800")
    assert gcs_v4_refusal("PUT", longer, headers, sa) == "SignatureDoesNotMatch"
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=16)
    assert gcs_v4_refusal("PUT", url, headers, sa, now=later) == "ExpiredToken"
    assert gcs_v4_refusal("GET", url, headers, sa) == "SignatureDoesNotMatch"
    other_key = fake_service_account()
    assert gcs_v4_refusal("PUT", url, headers, other_key) == "SignatureDoesNotMatch"
    # The URL works against the stand-in, and the object is then readable by anyone.
    assert httpx.put(url, content=data, headers=headers, timeout=10).status_code == 200
    assert httpx.get(f"{gcs.endpoint}/{bucket}/{ch}/{path}", timeout=10).content == data
    # The hub still refuses upload URLs outside the node's roles.
    from kachery_node.errors import HubRequestError

    with pytest.raises(HubRequestError) as e:
        node.client.upload_urls(ch, [{"path": "feeds/aa/x", "size": 3}])
    assert e.value.code == "not_allowed"


def test_the_service_account_key_never_leaves_the_hub(gcs_hub, gcs):
    ch, owner, node, sa = gcs_channel(gcs_hub, gcs, ["provide-files", "request-files"])
    key_part = sa["private_key"].splitlines()[5]
    seen = [json.dumps(node.client.channel_info(ch)), json.dumps(owner.client.show_channel(ch)),
            node.client.membership_segment(ch).decode(), json.dumps(node.client.pubsub_credentials(ch)),
            " ".join(node.client.upload_urls(ch, [{"path": "sha1/aa/aa/aa/" + "a" * 40, "size": 1}])),
            (gcs_hub.dir / "hub.log").read_text(), json.dumps(owner.client.list_channels())]
    assert not any(key_part in text or "private_key" in text for text in seen)
    stored = gcs_hub.dir / "secrets" / f"{ch}.json"
    assert key_part in stored.read_text() and stored.stat().st_mode & 0o077 == 0


def test_reads_ranges_metadata_and_listing(gcs):
    bucket = new_bucket(gcs)
    for name, body in [("lab/a/1", b"0123456789"), ("lab/a/2", b"x"), ("other/a/3", b"y")]:
        httpx.put(f"{gcs.endpoint}/{bucket}/{name}", content=body, timeout=10).raise_for_status()

    async def main():
        b = open_bucket({"bucket": {"backend": "gcs", "read_url": f"{gcs.endpoint}/{bucket}",
                                    "api_url": f"{gcs.endpoint}/storage/v1/b/{bucket}"}})
        assert isinstance(b, GcsBucket)
        try:
            assert await b.get("lab/a/1") == b"0123456789"
            assert await b.get("lab/a/1", 2, 5) == b"234"
            assert (await b.head("lab/a/1")).size == 10
            assert await b.head("lab/a/none") is None
            assert sorted(await b.list("lab/")) == ["lab/a/1", "lab/a/2"]
            from kachery_node.errors import NotFoundError

            with pytest.raises(NotFoundError):
                await b.get("lab/a/none")
        finally:
            await b.aclose()

    trio.run(main)


def test_bad_data_the_emulator_lets_in_is_caught_by_the_node(tmp_path, gcs):
    """gcp-storage-emulator takes a PUT with a forged signature and content that does not match
    its sha1/ name (real GCS would refuse the first; nothing but the node refuses the second).
    The reader rejects the object, stores nothing, and says why."""
    hub = HubProcess(tmp_path / "hub")
    sa_file = tmp_path / "sa.json"
    fake_service_account(sa_file)
    bucket = new_bucket(gcs)
    lab = Lab(tmp_path, hub, create_args=("--bucket", f"gcs://{bucket}", "--gcs-endpoint", gcs.endpoint,
                                          "--gcs-key-file", str(sa_file)))
    try:
        alice = lab.add_node("alice", ALL_ROLES)
        bob = lab.add_node("bob", ["request-files"])
        data = tmp_path / "result.txt"
        data.write_text("the true result\n")
        uri = _script(alice, f"import kachery_node as kn; print(kn.upload_file({str(data)!r}, channel='lab'))").strip()
        alice.stop()  # only the bucket has it now
        sha1 = uri.split("/")[2]
        key = f"lab/sha1/{sha1[:2]}/{sha1[2:4]}/{sha1[4:6]}/{sha1}"
        original = httpx.get(f"{gcs.endpoint}/{bucket}/{key}", timeout=10)
        assert original.content == b"the true result\n"
        forged = f"{gcs.endpoint}/{bucket}/{key}?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Signature={'00' * 256}"
        resp = httpx.put(forged, content=b"a forged result!\n", headers={"Content-Type": "application/octet-stream"},
                         timeout=10)
        assert resp.status_code == 200  # the stand-in's gap: real GCS answers 403 SignatureDoesNotMatch
        out = _script(bob, f"""
import kachery_node as kn
try:
    print(kn.load_text({uri!r}))
except kn.NotFoundError as e:
    print("refused:", e)
""")
        assert out.startswith("refused:") and "corrupted" in out, out
        assert "forged" not in out
        storage_files = list((bob.storage_dir / "sha1").rglob("*")) if (bob.storage_dir / "sha1").exists() else []
        assert not [p for p in storage_files if p.is_file()]  # nothing stored
    finally:
        lab.stop()
        hub.stop()


def _script(node, code: str, timeout: float = 90) -> str:
    result = subprocess.run([sys.executable, "-c", code], env=node.env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr + node.log()[-2000:]
    return result.stdout


def test_cli_creates_and_reconfigures_backends(tmp_path, gcs):
    from tests.nodes import TestNode

    hub = HubProcess(tmp_path / "hub")
    try:
        owner = TestNode(tmp_path, "owner")
        owner.env["KACHERY_HUB_URL"] = hub.url
        sa_file = tmp_path / "sa.json"
        fake_service_account(sa_file)
        bad = owner.run("channel", "create", "lab", "--bucket", "gcs://b1", check=False)
        assert bad.returncode != 0 and "--gcs-key-file" in bad.stderr
        info = owner.json("channel", "create", "lab", "--bucket", "gcs://b1", "--gcs-endpoint", gcs.endpoint,
                          "--gcs-key-file", str(sa_file))
        assert info["config"] == {"pubsub": {"backend": "embedded"},
                                  "bucket": {"backend": "gcs", "bucket": "b1", "endpoint": gcs.endpoint}}
        assert "private_key" not in json.dumps(info)
        shown = owner.run("channel", "show", "lab").stdout
        assert "bucket gcs://b1" in shown and "pub-sub embedded" in shown
        # Back to the embedded bucket; the owner's change is a signed `config` membership message.
        info = owner.json("channel", "configure", "lab")
        assert info["config"]["bucket"] == {"backend": "embedded"} and info["bucket"]["backend"] == "embedded"
        assert not (hub.dir / "secrets" / "lab.json").read_text().count("private_key")
        started = time.monotonic()
        other = TestNode(tmp_path, "other")
        other.env["KACHERY_HUB_URL"] = hub.url
        refused = other.run("channel", "configure", "lab", check=False)
        assert refused.returncode != 0 and "owner" in refused.stderr
        assert time.monotonic() - started < 30
    finally:
        hub.stop()

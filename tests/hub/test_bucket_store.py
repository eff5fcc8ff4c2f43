# ruff: noqa: E501
"""The embedded bucket's store: no key can block another (issue 11, defect 1), old buckets migrate.

Directly on :class:`ObjectFiles`, then through a real hub with URLs signed by its own key (the
hub itself would refuse to sign such keys; the store must hold them anyway).
"""

from __future__ import annotations

import os
import threading
import time

import httpx
import pytest

from kachery_node.errors import InvalidPathError
from kachery_node.hub.object_files import ObjectFiles
from kachery_node.identity import Keypair
from kachery_node.protocol.signed_urls import sign_upload_url
from kachery_node.transport.hub_client import HubClient

from .conftest import HubProcess


def _write(files: ObjectFiles, key: str, data: bytes) -> None:
    tmp = files.new_tmp()
    tmp.write_bytes(data)
    files.commit(tmp, key)


def test_a_key_and_its_extension_coexist_in_either_order(tmp_path):
    files = ObjectFiles(tmp_path / "bucket")
    order = ["ch/a/b", "ch/a/b/c", "ch/a/b/c/d", "ch/x/y/z", "ch/x/y", "ch/x"]
    for key in order:
        _write(files, key, key.encode())
    for key in order:
        assert files.path_of(key).read_bytes() == key.encode()
    assert files.keys("ch/", 100) == (sorted(order, key=lambda k: (k.rsplit("/", 1)[0], k)), False)
    assert files.keys("ch/a/b", 100) == (["ch/a/b", "ch/a/b/c", "ch/a/b/c/d"], False)
    assert files.keys("ch/a/b/", 100) == (["ch/a/b/c", "ch/a/b/c/d"], False)
    assert files.keys("ch/a/b/c/", 100) == (["ch/a/b/c/d"], False)
    assert files.keys("ch/", 2) == (["ch/x", "ch/a/b"], True)  # a directory's objects before its subdirectories'
    assert files.keys("ch/../", 10) == ([], False) and files.keys("zz/", 10) == ([], False)
    _write(files, "ch/a/b", b"new")  # overwriting a key that is also a directory
    assert files.path_of("ch/a/b").read_bytes() == b"new" and files.path_of("ch/a/b/c").read_bytes() == b"ch/a/b/c"
    for bad in ("ch/../x", "ch/.tmp/x", "ch", "ch//x", "ch/a#"):
        with pytest.raises(InvalidPathError):
            files.path_of(bad)


def test_a_bucket_of_the_old_layout_is_migrated_once(tmp_path):
    root = tmp_path / "bucket"
    old = {"ch/sha1/aa/bb/cc/aabbcc11": b"file", "ch/feeds/ab": b"squatted", "other/task_results/x": b"t"}
    for key, data in old.items():
        path = root.joinpath(*key.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / ".tmp").mkdir()
    (root / ".tmp" / "partial").write_bytes(b"half an upload")
    files = ObjectFiles(root)
    for key, data in old.items():
        assert files.path_of(key).read_bytes() == data
    assert files.keys("ch/", 10) == (["ch/feeds/ab", "ch/sha1/aa/bb/cc/aabbcc11"], False)
    assert not list((root / ".tmp").iterdir())
    _write(files, "ch/feeds/ab/cd/head", b"head")  # the squatted key no longer blocks
    assert ObjectFiles(root).path_of("ch/feeds/ab/cd/head").read_bytes() == b"head"  # reopening changes nothing
    assert sorted(p.name for p in (root / "ch" / "feeds").iterdir()) == ["ab", "ab#"]


@pytest.fixture(scope="module")
def own_hub(tmp_path_factory):
    h = HubProcess(tmp_path_factory.mktemp("hub"))
    yield h
    h.stop()


def test_hub_bucket_holds_a_key_below_another(own_hub):
    """Before the fix, the second PUT got 500: ``feeds/ab`` was a file where a directory had to go."""
    hub_key = Keypair.from_seed_hex((own_hub.dir / "hub.key").read_text().strip())
    with HubClient(own_hub.url, user_key=Keypair.generate()) as owner:
        owner.create_channel("lab")  # the bucket writes only into existing channels
    node = Keypair.generate().public_hex
    base = f"{own_hub.url}/bucket"
    keys = ["lab/feeds/ab", "lab/feeds/ab/cd/head", "lab/task_results/00/11", "lab/task_results/00"]
    for key in keys:
        url = sign_upload_url(hub_key, base, key, max_size=100, expires=int(time.time()) + 600, node_id=node)
        r = httpx.put(url, content=key.encode(), timeout=30)
        assert r.status_code == 200, (key, r.text)
    for key in keys:
        r = httpx.get(f"{base}/{key}", headers={"Range": "bytes=4-"}, timeout=30)
        assert (r.status_code, r.content) == (206, key.encode()[4:])
        assert httpx.head(f"{base}/{key}", timeout=30).headers["content-length"] == str(len(key))
    assert httpx.get(f"{base}/lab/feeds/ab/cd", timeout=30).status_code == 404  # a directory is no object
    r = httpx.get(f"{own_hub.url}/bucket-list", params={"prefix": "lab/"}, timeout=30)
    assert sorted(r.json()["keys"]) == sorted(keys) and r.json()["truncated"] is False


def test_hub_serves_objects_stored_before_the_suffix(tmp_path):
    hub_dir = tmp_path / "hub"
    old = hub_dir / "bucket" / "lab" / "sha1" / "aa" / "bb" / "cc" / "aabbcc"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"stored by an older hub")
    h = HubProcess(hub_dir)
    try:
        r = httpx.get(f"{h.url}/bucket/lab/sha1/aa/bb/cc/aabbcc", timeout=30)
        assert (r.status_code, r.content) == (200, b"stored by an older hub")
        assert httpx.get(f"{h.url}/bucket-list", params={"prefix": "lab/sha1/"}, timeout=30).json()["keys"] == [
            "lab/sha1/aa/bb/cc/aabbcc"]
        assert "moved to the '#'-suffixed layout" in h.log()
    finally:
        h.stop()
    assert os.path.exists(hub_dir / "bucket" / ".layout")


def test_a_reader_gets_one_whole_version_of_an_object_rewritten_meanwhile(own_hub):
    """A subfeed's ``head`` is rewritten in place (temp file + rename) while readers poll it.
    Before the fix the hub took the size from one version (stat) and the bytes from another
    (open): bodies shorter or longer than their Content-Length ("peer closed connection without
    sending complete message body") or one version's bytes under the other's length."""
    hub_key = Keypair.from_seed_hex((own_hub.dir / "hub.key").read_text().strip())
    with HubClient(own_hub.url, user_key=Keypair.generate()) as owner:
        owner.create_channel("race")
    key = "race/feeds/ab/cd/head"
    versions = {b"A": b"A" * 300_000, b"B": b"B" * 100_000}  # two sizes: a mix shows in the length
    url = sign_upload_url(hub_key, f"{own_hub.url}/bucket", key, max_size=300_000,
                          expires=int(time.time()) + 600, node_id=Keypair.generate().public_hex)
    assert httpx.put(url, content=versions[b"A"], timeout=30).status_code == 200
    target = own_hub.dir / "bucket" / "race" / "feeds" / "ab" / "cd" / "head#"  # spec/hub.md §7
    assert target.read_bytes() == versions[b"A"]
    stop = threading.Event()
    rewrites = 0

    def rewriter() -> None:  # what the hub's own commit does: a complete temp file, renamed over
        nonlocal rewrites
        tmp = target.with_name("head.racer")
        while not stop.is_set():
            tmp.write_bytes(versions[b"AB"[rewrites % 2:][:1]])
            os.replace(tmp, target)
            rewrites += 1

    t = threading.Thread(target=rewriter, name="head-rewriter")
    t.start()
    bad: list[str] = []
    reads = 0
    try:
        deadline = time.monotonic() + 5
        with httpx.Client(timeout=30) as c:
            while reads < 300 and time.monotonic() < deadline and len(bad) < 5:
                reads += 1
                ranged = reads % 3 == 0
                try:
                    r = c.get(f"{own_hub.url}/bucket/{key}", headers={"Range": "bytes=0-"} if ranged else {})
                except httpx.HTTPError as e:  # the body ended before its Content-Length
                    bad.append(f"read {reads}: {type(e).__name__}: {e}")
                    continue
                body = r.content
                whole = versions.get(body[:1])
                if r.status_code != (206 if ranged else 200) or body != whole:
                    bad.append(f"read {reads}: status {r.status_code}, {len(body)} bytes "
                               f"({body[:1]!r}…{body[-1:]!r}), content-length {r.headers.get('content-length')}")
                elif ranged and r.headers["content-range"] != f"bytes 0-{len(body) - 1}/{len(body)}":
                    bad.append(f"read {reads}: content-range {r.headers['content-range']} for {len(body)} bytes")
    finally:
        stop.set()
        t.join(timeout=30)
    assert rewrites > 10, rewrites  # the object really changed under the readers
    assert not bad, f"{len(bad)} bad of {reads} reads, {rewrites} rewrites: {bad}"


def test_a_live_subfeeds_objects_do_not_fill_the_hubs_log(own_hub):
    """A provider rewrites a live subfeed's head every half second: logged at INFO, each wrote a
    line (~40 MB a day for one subfeed on a hub that runs for months). Files are logged once
    each, as before; hub.log is rotated besides (serve.LOG_MAX_BYTES)."""
    import hashlib

    hub_key = Keypair.from_seed_hex((own_hub.dir / "hub.key").read_text().strip())
    with HubClient(own_hub.url, user_key=Keypair.generate()) as owner:
        owner.create_channel("quiet")
    node = Keypair.generate().public_hex
    data = os.urandom(1000)
    sha1 = hashlib.sha1(data).hexdigest()
    feed_key = "quiet/feeds/ab/cd/ef/" + "ab" * 32 + "/subfeeds/cd/ef/01/" + "cd" * 20 + "/head"
    file_key = f"quiet/sha1/{sha1[:2]}/{sha1[2:4]}/{sha1[4:6]}/{sha1}"
    for key, body in [(feed_key, b"a head"), (feed_key, b"the next head"), (file_key, data)]:
        url = sign_upload_url(hub_key, f"{own_hub.url}/bucket", key, max_size=len(body),
                              expires=int(time.time()) + 600, node_id=node)
        assert httpx.put(url, content=body, timeout=30).status_code == 200, key
    log = own_hub.log()  # written before each answer: the file's line is there now
    assert f"bucket stored {file_key} (1000 bytes)" in log
    assert "/subfeeds/" not in log


def test_the_hubs_log_is_rotated(tmp_path):
    import logging

    from kachery_node.hub import serve

    root = logging.getLogger("kachery")
    before = list(root.handlers)
    try:
        serve._setup_logging(tmp_path)
        [rotating] = [h for h in root.handlers if h not in before and hasattr(h, "maxBytes")]
        assert 0 < rotating.maxBytes <= 64 << 20 and rotating.backupCount >= 1
        assert rotating.baseFilename == str(tmp_path / "hub.log")
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
            handler.close()

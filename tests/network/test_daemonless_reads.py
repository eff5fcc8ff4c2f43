"""Daemon-less reads (issue 14): a script on a node with NO daemon loads files another node
uploaded, straight from the channel's bucket, verified, and stores them. The uploading node is a
real daemon process; the reading node joined the channel with the real CLI but never started
one; the reader is this test process (a user's script)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import kachery_node as kn
from kachery_node.protocol.bucket_layout import file_path
from kachery_node.storage.file_uris import parse_uri
from kachery_node.storage.manifest import parse_manifest
from tests.network.conftest import ALL_ROLES
from tests.nodes import KACHERY


def _script(node, code: str, timeout: float = 120) -> str:
    proc = subprocess.run([sys.executable, "-c", code], env=node.env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _upload(node, code: str) -> list[str]:
    """URIs printed by ``code`` run on ``node`` (which has a daemon) after ``import kachery_node as kn``."""
    return _script(node, "import kachery_node as kn\n" + code).split()


@pytest.fixture
def reader(lab, monkeypatch):
    """A node joined to the lab channel with request-files and no daemon, as this process's default
    storage."""
    node = lab.add_node("reader", ["request-files"], start=False)
    monkeypatch.setenv("KACHERY_STORAGE_DIR", str(node.storage_dir))
    assert node.client.is_running() is False
    return node


def _leftovers(node) -> list[str]:
    tmp = node.storage_dir / "tmp"
    return sorted(p.name for p in tmp.glob("fetch.*")) if tmp.exists() else []


def test_a_script_with_no_daemon_loads_what_another_node_uploaded(lab, reader, tmp_path):
    alice = lab.add_node("alice", ALL_ROLES)
    data = tmp_path / "raw.bin"
    data.write_bytes(os.urandom(300_000))
    uris = _upload(alice, f"""
import numpy as np
print(kn.upload_text('hello from alice', channel='lab'))
print(kn.upload_json({{'gain': 0.5, 'n': [1, 2]}}, channel='lab'))
print(kn.upload_npy(np.arange(12).reshape(3, 4), channel='lab'))
print(kn.upload_pkl({{'a': np.ones(3)}}, channel='lab'))
print(kn.upload_file({str(data)!r}, channel='lab'))
""")
    text_uri, json_uri, npy_uri, pkl_uri, raw_uri = uris
    alice.stop()  # only the bucket has them now

    assert kn.load_text(text_uri) == "hello from alice"
    assert kn.load_json(json_uri, channel="lab") == {"gain": 0.5, "n": [1, 2]}
    assert (kn.load_npy(npy_uri) == np.arange(12).reshape(3, 4)).all()
    assert (kn.load_pkl(pkl_uri)["a"] == np.ones(3)).all()
    assert kn.load_bytes(raw_uri, 1000, 1100, channel="lab") == data.read_bytes()[1000:1100]
    copy = tmp_path / "copy.bin"
    assert kn.load_file(raw_uri, copy) == str(copy) and copy.read_bytes() == data.read_bytes()
    storage = kn.open_storage(reader.storage_dir)
    for uri in uris:  # verified and stored: later loads are local
        assert storage.has_file(uri), uri
    assert _leftovers(reader) == []



def test_kachery_cat_and_load_read_the_bucket_without_a_daemon(lab, reader, tmp_path):
    alice = lab.add_node("alice", ALL_ROLES)
    data = tmp_path / "raw.bin"
    data.write_bytes(os.urandom(100_000))
    text, raw = _upload(alice, f"""
print(kn.upload_text('second file', channel='lab'))
print(kn.upload_file({str(data)!r}, channel='lab'))
""")
    alice.stop()
    assert reader.run("cat", text, "--channel", "lab").stdout == "second file"
    out = subprocess.run([KACHERY, "cat", raw, "--start", "5", "--end", "9"], env=reader.env,
                         capture_output=True, timeout=60)
    assert out.returncode == 0 and out.stdout == data.read_bytes()[5:9], out.stderr
    path = reader.run("load", raw, "--no-progress").stdout.strip()
    assert Path(path).read_bytes() == data.read_bytes()


def test_a_missing_file_says_what_was_tried(lab, reader):
    lab.add_node("alice", ALL_ROLES, start=False)
    missing = "sha1://" + "ab" * 20 + "/nothing.txt"
    with pytest.raises(kn.NotFoundError) as err:
        kn.load_file(missing)
    message = str(err.value)
    assert "is not in the local storage" in message
    assert f"no daemon is running for {reader.storage_dir}" in message
    assert f"lab: lab/sha1/ab/ab/ab/{'ab' * 20} is not in the bucket of channel lab" in message
    with pytest.raises(kn.ChannelNotJoinedError):
        kn.load_file(missing, channel="elsewhere")
    out = reader.run("load", missing, check=False)
    assert out.returncode == 1, out.stderr
    assert "no daemon is running" in out.stderr and "bucket of channel lab" in out.stderr


def test_a_tampered_bucket_object_is_refused_and_nothing_is_stored(lab, reader, tmp_path):
    alice = lab.add_node("alice", ALL_ROLES)
    (uri,) = _upload(alice, "print(kn.upload_text('the real content', channel='lab'))")
    alice.stop()
    sha1 = parse_uri(uri).sha1
    lab.bucket_object(file_path("lab", sha1)).write_bytes(b"the evil content")

    with pytest.raises(kn.TamperedDataError) as err:
        kn.load_text(uri)
    assert sha1 in str(err.value) and "nothing was stored" in str(err.value)
    assert isinstance(err.value, kn.RemoteProtocolError)
    assert not kn.open_storage(reader.storage_dir).has_file(uri)
    assert _leftovers(reader) == []
    out = reader.run("cat", uri, check=False)
    assert out.returncode == 1 and "hashes to" in out.stderr, out.stderr


def test_a_large_file_comes_by_chunks_resumes_and_refuses_a_tampered_chunk(lab, reader, tmp_path):
    alice = lab.add_node("alice", ALL_ROLES)
    data = tmp_path / "big.dat"
    content = os.urandom(45_000_123)  # three chunks: 20 MB, 20 MB, 5 MB
    data.write_bytes(content)
    (uri,) = _upload(alice, f"print(kn.upload_file({str(data)!r}, channel='lab'))")
    alice.stop()
    key = parse_uri(uri)
    manifest = parse_manifest(lab.bucket_object(file_path("lab", key.manifest_sha1)).read_bytes())
    assert len(manifest.chunks) == 3

    # The middle chunk's object is tampered with: that chunk is refused, the others stay verified.
    middle = lab.bucket_object(file_path("lab", manifest.chunks[1].sha1))
    good = middle.read_bytes()
    middle.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(kn.TamperedDataError, match=manifest.chunks[1].sha1):
        kn.load_file(uri)
    storage = kn.open_storage(reader.storage_dir)
    assert not storage.has_file(uri)
    partial = reader.storage_dir / "tmp" / "partial" / key.sha1
    marked = sorted(p.name.split(".")[0] for p in partial.glob("*.ok"))
    assert marked == ["0-20000000", "40000000-45000123"]

    # Restored, the fetch resumes: only the missing chunk moves.
    middle.write_bytes(good)
    seen: list[tuple[int, int]] = []
    path = kn.load_file(uri, channel="lab", progress=lambda done, total: seen.append((done, total)))
    assert seen and {total for _, total in seen} == {20_000_000}
    with open(path, "rb") as f:
        assert hashlib.sha1(f.read()).hexdigest() == key.sha1
    assert not partial.exists()


def _markers(node, sha1: str) -> list[str]:
    partial = node.storage_dir / "tmp" / "partial" / sha1
    return sorted((p.name.split(".")[0] for p in partial.glob("*.ok")), key=lambda r: int(r.split("-")[0]))


def test_a_byte_range_of_a_large_remote_file_moves_only_its_chunks(lab, reader, tmp_path):
    alice = lab.add_node("alice", ALL_ROLES)
    content = os.urandom(45_000_123)
    (tmp_path / "big.dat").write_bytes(content)
    (uri,) = _upload(alice, f"print(kn.upload_file({str(tmp_path / 'big.dat')!r}, channel='lab'))")
    alice.stop()
    key = parse_uri(uri)
    storage = kn.open_storage(reader.storage_dir)

    assert kn.load_bytes(uri, 25_000_000, 25_000_100) == content[25_000_000:25_000_100]
    assert _markers(reader, key.sha1) == ["20000000-40000000"]  # one chunk moved, verified
    assert not storage.has_file(uri)
    # Read again: from the partial copy (the bucket's copy, spoiled now, is not read).
    manifest = parse_manifest(lab.bucket_object(file_path("lab", key.manifest_sha1)).read_bytes())
    middle = lab.bucket_object(file_path("lab", manifest.chunks[1].sha1))
    good = middle.read_bytes()
    middle.write_bytes(b"spoiled")
    assert kn.load_bytes(uri, 30_000_000, 30_000_010, channel="lab") == content[30_000_000:30_000_010]
    middle.write_bytes(good)
    with pytest.raises(kn.InvalidDataError, match="outside"):
        kn.load_bytes(uri, 45_000_000, 45_000_200)
    # A range across a chunk boundary takes both chunks; a later load_file only the last one.
    assert kn.load_bytes(uri, 19_999_990, 20_000_010) == content[19_999_990:20_000_010]
    assert _markers(reader, key.sha1) == ["0-20000000", "20000000-40000000"]
    seen: list[tuple[int, int]] = []
    path = kn.load_file(uri, progress=lambda done, total: seen.append((done, total)))
    assert {total for _, total in seen} == {5_000_123}
    assert Path(path).read_bytes() == content


def test_chunk_uris_are_served_without_a_daemon(lab, reader, tmp_path):
    alice = lab.add_node("alice", ALL_ROLES)
    content = os.urandom(25_000_000)
    (tmp_path / "big.dat").write_bytes(content)
    (uri,) = _upload(alice, f"print(kn.upload_file({str(tmp_path / 'big.dat')!r}, channel='lab'))")
    alice.stop()
    key = parse_uri(uri)
    chunk = parse_manifest(lab.bucket_object(file_path("lab", key.manifest_sha1)).read_bytes()).chunks[1]
    chunk_uri = f"sha1://{chunk.sha1}?chunkOf={key.sha1}~{chunk.start}~{chunk.end}"
    assert kn.load_bytes(chunk_uri, 0, 100) == content[chunk.start:chunk.start + 100]
    assert Path(kn.load_file(chunk_uri)).read_bytes() == content[chunk.start:chunk.end]
    # With the file here, any range of it is served under its own hash, cut from the file.
    kn.load_file(uri)
    piece = content[123:4567]
    piece_uri = f"sha1://{hashlib.sha1(piece).hexdigest()}?chunkOf={key.sha1}~123~4567"
    assert kn.load_bytes(piece_uri) == piece
    wrong = f"sha1://{'ab' * 20}?chunkOf={key.sha1}~123~4567"
    with pytest.raises(kn.InvalidUriError, match="are not that chunk"):
        kn.load_bytes(wrong)


def test_through_a_daemon_a_range_comes_from_a_provider_one_chunk_only(lab, reader, tmp_path):
    alice = lab.add_node("alice", ALL_ROLES)
    reader.start()
    lab.wait_connected(reader)
    content = os.urandom(45_000_123)
    (tmp_path / "big.dat").write_bytes(content)
    uri = kn.open_storage(alice.storage_dir).store_file(tmp_path / "big.dat")  # not uploaded
    key = parse_uri(uri)
    manifest = parse_manifest(Path(kn.open_storage(alice.storage_dir).load_file(
        f"sha1://{key.manifest_sha1}")).read_bytes())

    assert kn.load_bytes(uri, 41_000_000, 41_000_100) == content[41_000_000:41_000_100]
    assert _markers(reader, key.sha1) == ["40000000-45000123"]
    in_bucket = [c for c in manifest.chunks if lab.bucket_object(file_path("lab", c.sha1)).exists()]
    assert in_bucket == [manifest.chunks[2]]  # the provider uploaded that chunk only
    chunk = manifest.chunks[0]
    chunk_uri = f"sha1://{chunk.sha1}?chunkOf={key.sha1}~{chunk.start}~{chunk.end}"
    assert kn.load_bytes(chunk_uri, 10, 20) == content[10:20]
    with pytest.raises(kn.NotFoundError) as err:  # what was tried, through the daemon
        kn.load_file("sha1://" + "ab" * 20, channel="lab")
    assert "is not in the local storage" in str(err.value)
    assert f"the daemon running for {reader.storage_dir} asked its channels" in str(err.value)


@pytest.mark.backends
@pytest.mark.parametrize("lab_backends", ["embedded+gcs", "embedded+s3"], indirect=True)
def test_cloud_buckets_are_read_without_a_daemon(lab, reader, tmp_path):
    """The read URL of a GCS or S3 channel comes from the hub's channel info (saved at join); a
    large file by chunks, a range, and a tampered object refused, as with the embedded bucket."""
    assert json.loads((reader.storage_dir / "channels.json").read_text())["channels"]["lab"]["bucket"][
        "backend"] == lab.backends.split("+")[1]
    alice = lab.add_node("alice", ALL_ROLES)
    content = os.urandom(25_000_000)
    (tmp_path / "big.dat").write_bytes(content)
    big, small = _upload(alice, f"""
print(kn.upload_file({str(tmp_path / 'big.dat')!r}, channel='lab'))
print(kn.upload_text('in the cloud', channel='lab'))
""")
    alice.stop()
    assert kn.load_bytes(big, 21_000_000, 21_000_100) == content[21_000_000:21_000_100]
    assert Path(kn.load_file(big)).read_bytes() == content
    lab.bucket_object(file_path("lab", parse_uri(small).sha1)).write_bytes(b"not in the cloud")
    with pytest.raises(kn.TamperedDataError):
        kn.load_text(small)

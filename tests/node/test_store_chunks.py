"""Storage.store_chunks, store_assembled and adopt_verified: how a downloaded file gets into the
storage."""

from __future__ import annotations

import hashlib
import os

import pytest

import kachery_node as kn
from kachery_node.storage import node_storage
from kachery_node.storage.manifest import CHUNK_SIZE


def _split(path, tmp_path):
    data = path.read_bytes()
    parts = []
    for i, start in enumerate(range(0, len(data), CHUNK_SIZE)):
        p = tmp_path / f"chunk{i}"
        p.write_bytes(data[start : start + CHUNK_SIZE])
        parts.append(p)
    return data, parts


def test_assembles_chunks_into_the_same_uri(tmp_path, storage):
    src = tmp_path / "big.dat"
    src.write_bytes(os.urandom(CHUNK_SIZE * 2 + 12345))
    uri = storage.store_file(src)
    key = kn.parse_uri(uri)
    data, parts = _split(src, tmp_path)
    other = kn.open_storage(tmp_path / "other")
    other.store_bytes(storage.load_bytes(f"sha1://{key.manifest_sha1}"))  # the manifest comes first
    got = other.store_chunks(parts, expected_sha1=key.sha1, manifest_sha1=key.manifest_sha1)
    assert kn.parse_uri(got).sha1 == key.sha1 and kn.parse_uri(got).manifest_sha1 == key.manifest_sha1
    assert hashlib.sha1(open(other.load_file(got), "rb").read()).hexdigest() == key.sha1  # noqa: SIM115
    assert other.load_bytes(got, CHUNK_SIZE - 5, CHUNK_SIZE + 5) == data[CHUNK_SIZE - 5 : CHUNK_SIZE + 5]


def test_wrong_chunks_store_nothing(tmp_path, storage):
    src = tmp_path / "big.dat"
    src.write_bytes(os.urandom(CHUNK_SIZE + 100))
    key = kn.parse_uri(storage.store_file(src))
    _data, parts = _split(src, tmp_path)
    parts[1].write_bytes(b"x" * 100)  # a chunk that does not belong
    other = kn.open_storage(tmp_path / "other")
    with pytest.raises(kn.CorruptedFileError):
        other.store_chunks(parts, expected_sha1=key.sha1, manifest_sha1=key.manifest_sha1)
    assert not other.has_file(f"sha1://{key.sha1}")


def test_store_assembled_moves_a_verified_file_into_place(tmp_path, storage):
    src = tmp_path / "big.dat"
    src.write_bytes(os.urandom(CHUNK_SIZE + 100))
    key = kn.parse_uri(storage.store_file(src))
    other = kn.open_storage(tmp_path / "other")
    other.store_bytes(storage.load_bytes(f"sha1://{key.manifest_sha1}"))
    assembled = other.directory / "tmp" / "partial" / key.sha1 / "content"
    assembled.parent.mkdir(parents=True)
    assembled.write_bytes(src.read_bytes())
    got = other.store_assembled(assembled, expected_sha1=key.sha1, manifest_sha1=key.manifest_sha1)
    assert kn.parse_uri(got).manifest_sha1 == key.manifest_sha1
    assert not assembled.exists()  # renamed, not copied
    rec = other.index.get_file(key.sha1)
    assert rec.fetchable and rec.manifest_sha1 == key.manifest_sha1 and rec.size == CHUNK_SIZE + 100
    assert other.load_bytes(got, CHUNK_SIZE - 5, CHUNK_SIZE + 5) == \
        src.read_bytes()[CHUNK_SIZE - 5 : CHUNK_SIZE + 5]


def test_store_assembled_refuses_wrong_content_and_files_outside_tmp(tmp_path, storage):
    src = tmp_path / "big.dat"
    src.write_bytes(os.urandom(CHUNK_SIZE + 100))
    key = kn.parse_uri(storage.store_file(src))
    other = kn.open_storage(tmp_path / "other")
    assembled = other.directory / "tmp" / "content"
    assembled.parent.mkdir(parents=True)
    assembled.write_bytes(b"x" * (CHUNK_SIZE + 100))
    with pytest.raises(kn.CorruptedFileError):
        other.store_assembled(assembled, expected_sha1=key.sha1, manifest_sha1=key.manifest_sha1)
    assert assembled.exists() and not other.has_file(f"sha1://{key.sha1}")
    # A hash the caller read from the file is checked the same way.
    with pytest.raises(kn.CorruptedFileError):
        other.store_assembled(assembled, expected_sha1=key.sha1, manifest_sha1=key.manifest_sha1,
                              read_sha1=hashlib.sha1(assembled.read_bytes()).hexdigest())
    assert assembled.exists() and not other.has_file(f"sha1://{key.sha1}")
    with pytest.raises(ValueError):
        other.store_assembled(src, expected_sha1=key.sha1, manifest_sha1=key.manifest_sha1)
    assert not other.has_file(f"sha1://{key.sha1}")


def test_adopt_verified_renames_a_download_into_place_without_reading_it(tmp_path, monkeypatch):
    data = os.urandom(5000)
    sha1 = hashlib.sha1(data).hexdigest()
    storage = kn.open_storage(tmp_path / "s")
    download = storage.directory / "tmp" / "fetch.part"
    download.parent.mkdir(parents=True)
    download.write_bytes(data)
    inode = download.stat().st_ino

    def no_hashing(*args, **kwargs):
        raise AssertionError("adopt_verified read the file again")

    monkeypatch.setattr(node_storage, "hash_file", no_hashing)
    assert storage.adopt_verified(download, sha1=sha1) == f"sha1://{sha1}"
    stored = storage.path_for(sha1)
    assert stored.stat().st_ino == inode and not download.exists()
    assert stored.stat().st_mode & 0o777 == 0o400
    rec = storage.index.get_file(sha1)
    assert rec.fetchable and rec.size == 5000 and rec.manifest_sha1 is None
    monkeypatch.undo()
    assert storage.load_bytes(f"sha1://{sha1}") == data  # verified: no rehash, same bytes


def test_adopt_verified_makes_the_manifest_of_a_large_file_fetched_without_one(tmp_path, storage):
    src = tmp_path / "big.dat"
    src.write_bytes(os.urandom(CHUNK_SIZE + 100))
    key = kn.parse_uri(storage.store_file(src))
    other = kn.open_storage(tmp_path / "other")
    download = other.directory / "tmp" / "fetch.part"
    download.parent.mkdir(parents=True)
    download.write_bytes(src.read_bytes())
    assert other.adopt_verified(download, sha1=key.sha1) == f"sha1://{key.sha1}?manifest={key.manifest_sha1}"
    assert other.has_file(f"sha1://{key.manifest_sha1}")
    with pytest.raises(ValueError):
        other.adopt_verified(src, sha1=key.sha1)  # not in the storage's tmp/

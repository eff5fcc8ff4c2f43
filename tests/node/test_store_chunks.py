"""Storage.store_chunks: how a downloaded large file is assembled from its verified chunks."""

from __future__ import annotations

import hashlib
import os

import pytest

import kachery_node as kn
from kachery_node.manifest import CHUNK_SIZE


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

"""Content-addressed files: store, load, ranges, manifests, links, corruption, missing content."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

import kachery_node as kn
from kachery_node.storage import file_index as files_module

from .conftest import BIG_SIZE

CHUNK = 20_000_000


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def count_hashing(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count full passes over file content (store or link)."""
    calls: list[int] = []
    original = files_module.ContentHasher.pump

    def pump(self, src, **kw):
        calls.append(1)
        return original(self, src, **kw)

    monkeypatch.setattr(files_module.ContentHasher, "pump", pump)
    return calls


def test_store_and_load_small_file(storage_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "hello.txt"
    src.write_bytes(b"Hello, world!")
    uri = kn.store_file(src)
    # The original's hash and layout, so existing sha1:// URIs keep their meaning.
    assert uri == "sha1://943a702d06f34599aee1f8da8ef9f7296031d699/hello.txt"
    path = Path(kn.load_file(uri))
    assert path == storage_dir / "sha1/94/3a/70/943a702d06f34599aee1f8da8ef9f7296031d699"
    assert path.read_bytes() == b"Hello, world!"
    assert not os.access(path, os.W_OK) or os.geteuid() == 0
    assert path.stat().st_mode & 0o777 == 0o400  # read-only, and private (spec/storage.md §1)
    # The basename is cosmetic: any name, or none, loads the same content.
    assert kn.load_bytes("sha1://943a702d06f34599aee1f8da8ef9f7296031d699", 7, 12) == b"world"
    assert kn.store_file(src, basename="x.txt").endswith("/x.txt")
    dest = tmp_path / "copy.txt"
    assert kn.load_file(uri, dest=dest) == str(dest)
    assert dest.read_bytes() == b"Hello, world!"
    assert not list((storage_dir / "tmp").iterdir())  # no temporary files left behind


def test_empty_file(tmp_path: Path, storage_dir: Path) -> None:
    src = tmp_path / "empty"
    src.write_bytes(b"")
    uri = kn.store_file(src)
    assert uri == f"sha1://{sha1(b'')}/empty"
    assert kn.load_bytes(uri, 0, 0) == b""
    assert Path(kn.load_file(uri)).read_bytes() == b""


def test_storing_again_is_cheap(storage_dir: Path, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_hashing(monkeypatch)
    src = tmp_path / "a.bin"
    src.write_bytes(os.urandom(100_000))
    uri = kn.store_file(src)
    stored = Path(kn.load_file(uri))
    inode = stored.stat().st_ino
    assert len(calls) == 1
    assert kn.store_file(src) == uri  # unchanged path: no second hash, no second copy
    assert len(calls) == 1
    assert stored.stat().st_ino == inode
    # Same content from another path is hashed once more but stored once.
    other = tmp_path / "b.bin"
    other.write_bytes(src.read_bytes())
    assert kn.store_file(other).split("/")[2] == uri.split("/")[2]
    assert len(list((storage_dir / "sha1").rglob("*"))) == 4  # 3 dirs + 1 file
    # A changed file is hashed again and gets a new URI.
    src.write_bytes(b"different")
    assert kn.store_file(src) == f"sha1://{sha1(b'different')}/a.bin"


def test_big_file_manifest_and_ranges(storage_dir: Path, big_file: Path) -> None:
    data = big_file.read_bytes()
    uri = kn.store_file(big_file)
    key = kn.parse_uri(uri)
    assert key.sha1 == sha1(data)
    assert key.manifest_sha1 is not None
    # The manifest is an ordinary stored file in exactly the original's format.
    manifest_bytes = Path(kn.load_file(f"sha1://{key.manifest_sha1}")).read_bytes()
    assert sha1(manifest_bytes) == key.manifest_sha1
    expected = {"size": BIG_SIZE, "sha1": sha1(data), "chunks": [
        {"start": s, "end": min(s + CHUNK, BIG_SIZE), "sha1": sha1(data[s : s + CHUNK])}
        for s in range(0, BIG_SIZE, CHUNK)]}
    assert manifest_bytes == json.dumps(expected, separators=(",", ":")).encode()
    assert list(json.loads(manifest_bytes)) == ["size", "sha1", "chunks"]
    # Chunks are not stored as copies: the file and its manifest only.
    stored = [p for p in (storage_dir / "sha1").rglob("*") if p.is_file()]
    assert len(stored) == 2
    # Ranges inside chunks, across each boundary, spanning all chunks, and at the end.
    for start, end in [(0, 10), (CHUNK - 5, CHUNK + 5), (2 * CHUNK - 1, 2 * CHUNK + 1),
                       (CHUNK - 1, 2 * CHUNK + 7), (1, BIG_SIZE - 1), (BIG_SIZE - 3, BIG_SIZE),
                       (BIG_SIZE, BIG_SIZE)]:
        assert kn.load_bytes(uri, start, end) == data[start:end], (start, end)
    assert kn.load_bytes(uri, BIG_SIZE - 4) == data[-4:]
    with pytest.raises(kn.InvalidDataError, match="outside"):
        kn.load_bytes(uri, 0, BIG_SIZE + 1)
    with pytest.raises(kn.InvalidDataError):
        kn.load_bytes(uri, 10, 5)


def test_file_at_chunk_size_has_no_manifest(storage: kn.Storage) -> None:
    # The original makes a manifest only when there is more than one chunk.
    assert "?manifest=" not in storage.store_bytes(b"\0" * CHUNK)
    assert "?manifest=" in storage.store_bytes(b"\0" * (CHUNK + 1))


def test_missing_content_raises_not_found(storage_dir: Path) -> None:
    uri = "sha1://" + "ab" * 20 + "/x.json"
    for load in (kn.load_file, kn.load_json, kn.load_text, kn.load_npy, kn.load_pkl):
        with pytest.raises(kn.NotFoundError, match="not in the local storage") as info:
            load(uri)
        assert info.value.uri == uri
    with pytest.raises(kn.NotFoundError):
        kn.load_bytes(uri, 0, 1)
    assert isinstance(info.value, kn.KacheryError)


@pytest.mark.parametrize("uri", [
    "sha1://abc",
    "sha1://" + "g" * 40,
    "sha1://" + "AB" * 20,
    "sha1://" + "a" * 41,
    "sha1://" + "a" * 40 + "?manifest=123",
    "sha1://" + "a" * 40 + "/x?manifest=" + "z" * 40,
    "sha1://" + "a" * 40 + "?chunkOf=abc~1~2",
    # str.isdigit() accepts these; int() then fails (²) or reads another script's digits (٣)
    "sha1://" + "a" * 40 + "?chunkOf=" + "b" * 40 + "~\u00b2~3",
    "sha1://" + "a" * 40 + "?chunkOf=" + "b" * 40 + "~\u0663~4",
    "sha1://" + "a" * 40 + "?chunkOf=" + "b" * 40 + "~0~" + "9" * 20,  # beyond 64 bits
    "sha1://" + "a" * 40 + "?chunkOf=" + "b" * 40 + "~0~9223372036854775808",
    "md5://" + "a" * 32,
    "/local/path",
])
def test_malformed_uris(storage_dir: Path, uri: str) -> None:
    with pytest.raises(kn.InvalidUriError):
        kn.parse_uri(uri)
    with pytest.raises(kn.InvalidUriError):
        kn.load_file(uri)


def test_uri_parsing() -> None:
    key = kn.parse_uri("sha1://" + "a" * 40 + "/dir/f.txt?manifest=" + "b" * 40 + "&label=x")
    assert (key.sha1, key.basename, key.manifest_sha1) == ("a" * 40, "dir/f.txt", "b" * 40)
    chunk = kn.parse_uri("sha1://" + "c" * 40 + "?chunkOf=" + "a" * 40 + "~0~20000000")
    assert (chunk.chunk_of.file_sha1, chunk.chunk_of.start, chunk.chunk_of.end) == (
        "a" * 40, 0, 20_000_000)
    assert kn.build_uri("a" * 40, "my file.txt") == "sha1://" + "a" * 40 + "/my%20file.txt"


def corrupt(path: Path, offset: int) -> None:
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def test_corrupted_stored_file_is_detected_and_removed(storage_dir: Path, tmp_path: Path) -> None:
    uri = kn.store_text("precious data")
    path = Path(kn.load_file(uri))
    corrupt(path, 3)
    with pytest.raises(kn.CorruptedFileError, match="has been deleted") as info:
        kn.load_text(uri)
    assert "precious" not in str(info.value)
    assert not path.exists()
    with pytest.raises(kn.NotFoundError):
        kn.load_text(uri)
    # Storing it again heals the storage.
    assert kn.store_text("precious data") == uri
    assert kn.load_text(uri) == "precious data"


def test_truncated_stored_file_is_detected(storage_dir: Path) -> None:
    uri = kn.store_text("x" * 1000)
    path = Path(kn.load_file(uri))
    path.chmod(0o644)
    os.truncate(path, 10)
    with pytest.raises(kn.CorruptedFileError):
        kn.load_bytes(uri, 0, 5)
    assert not path.exists()


def test_corruption_in_big_file_detected_by_range_reads(storage_dir: Path, big_file: Path) -> None:
    uri = kn.store_file(big_file)
    path = Path(kn.load_file(uri))
    corrupt(path, CHUNK + 123)  # inside the second chunk
    with pytest.raises(kn.CorruptedFileError):
        kn.load_bytes(uri, CHUNK + 100, CHUNK + 200)
    assert not path.exists()


def test_range_read_verifies_only_covering_chunks(storage_dir: Path, big_file: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    uri = kn.store_file(big_file)
    path = Path(kn.load_file(uri))
    os.utime(path)  # changed stat: the next read rehashes, but only the chunk it touches
    hashed: list[tuple[int, int]] = []
    original = files_module.sha1_of_range

    def spy(p, start, end):
        hashed.append((start, end))
        return original(p, start, end)

    monkeypatch.setattr("kachery_node.storage.node_storage.sha1_of_range", spy)
    assert kn.load_bytes(uri, 2 * CHUNK + 1, 2 * CHUNK + 10) == big_file.read_bytes()[
        2 * CHUNK + 1 : 2 * CHUNK + 10]
    assert hashed == [(2 * CHUNK, BIG_SIZE)]


def test_foreign_file_in_sha1_dir_is_verified_then_served(storage_dir: Path) -> None:
    # A file copied from an original kachery storage (no index row) is verified on first load.
    data = b"from the original kachery"
    h = sha1(data)
    p = storage_dir / "sha1" / h[:2] / h[2:4] / h[4:6] / h
    p.parent.mkdir(parents=True)
    p.write_bytes(data)
    assert kn.load_bytes(f"sha1://{h}", 0, 4) == b"from"
    bad = b"tampered"
    p2 = storage_dir / "sha1" / "ab" / "ab" / "ab" / ("ab" * 20)
    p2.parent.mkdir(parents=True)
    p2.write_bytes(bad)
    with pytest.raises(kn.CorruptedFileError):
        kn.load_file("sha1://" + "ab" * 20)


def test_link_file(storage_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_hashing(monkeypatch)
    src = tmp_path / "data.bin"
    src.write_bytes(b"linked content " * 1000)
    uri = kn.link_file(src)
    assert uri == f"sha1://{sha1(src.read_bytes())}/data.bin"
    assert kn.load_file(uri) == str(src)  # served in place, not copied
    assert not (storage_dir / "sha1").exists() or not any(
        p.is_file() for p in (storage_dir / "sha1").rglob("*"))
    assert kn.load_bytes(uri, 0, 6) == b"linked"
    assert kn.link_file(src) == uri
    assert len(calls) == 1  # linking an unchanged file again does not rehash
    # Touching it (same bytes) is fine: it is rehashed once and served.
    os.utime(src, ns=(1, 1))
    assert kn.load_bytes(uri, 7, 14) == b"content"
    # Changing it (same size) is not: the link refuses to serve different bytes.
    src.write_bytes(b"LINKED" + src.read_bytes()[6:])
    with pytest.raises(kn.LinkedFileChangedError, match="changed after it was linked"):
        kn.load_file(uri)
    with pytest.raises(kn.LinkedFileChangedError):
        kn.load_bytes(uri, 0, 5)
    # Changing its size, or deleting it, too.
    src.write_bytes(b"short")
    with pytest.raises(kn.LinkedFileChangedError):
        kn.load_text(uri)
    src.unlink()
    with pytest.raises(kn.LinkedFileChangedError, match="deleted"):
        kn.load_file(uri)


def test_link_big_file_gets_manifest(storage_dir: Path, big_file: Path) -> None:
    uri = kn.link_file(big_file)
    key = kn.parse_uri(uri)
    assert key.manifest_sha1 is not None
    assert kn.load_json(f"sha1://{key.manifest_sha1}")["size"] == BIG_SIZE
    data = big_file.read_bytes()
    assert kn.load_bytes(uri, CHUNK - 2, CHUNK + 2) == data[CHUNK - 2 : CHUNK + 2]
    # Storing the linked file afterwards makes a real copy; both resolve to the same content.
    assert kn.store_file(big_file) == uri
    assert kn.load_file(uri) != str(big_file)


def test_stream_with_expected_hash(storage: kn.Storage, tmp_path: Path) -> None:
    import io

    good = b"downloaded bytes"
    uri = storage.store_stream(io.BytesIO(good), "d.bin", fetchable=True, expected_sha1=sha1(good))
    assert storage.load_bytes(uri) == good
    with pytest.raises(kn.CorruptedFileError, match="not the expected"):
        storage.store_stream(io.BytesIO(b"evil"), expected_sha1=sha1(b"other"))
    assert not storage.has_file(f"sha1://{sha1(b'evil')}")
    assert not list((storage.directory / "tmp").iterdir())


def test_several_storages_in_one_process(tmp_path: Path) -> None:
    a, b = kn.open_storage(tmp_path / "a"), kn.open_storage(tmp_path / "b")
    uri = a.store_text("only in a")
    assert a.load_text(uri) == "only in a"
    with pytest.raises(kn.NotFoundError):
        b.load_text(uri)
    assert kn.open_storage(tmp_path / "a") is a


def test_store_without_copy_file_range(storage_dir: Path, big_file: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # Old kernels and some filesystems refuse copy_file_range: storing falls back to
    # read + write and gives the same URI and manifest.
    import errno

    def refuse(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    expected = kn.open_storage(storage_dir.parent / "other").store_file(big_file)
    monkeypatch.setattr(os, "copy_file_range", refuse)
    assert kn.store_file(big_file) == expected
    assert kn.load_bytes(expected, CHUNK - 1, CHUNK + 1) == big_file.read_bytes()[CHUNK - 1 : CHUNK + 1]

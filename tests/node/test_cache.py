"""The cache cap evicts least recently used fetchable files, for real, and never the user's own."""

from __future__ import annotations

import os
from pathlib import Path

import kachery_node as kn


def disk_bytes(storage_dir: Path) -> int:
    return sum(p.stat().st_size for p in (storage_dir / "sha1").rglob("*") if p.is_file())


def test_cache_cap_evicts_lru_fetchable_only(storage_dir: Path, cli) -> None:
    cli.run("init", "--max-cache-size-gib", "0.00001")  # 10,000 bytes
    storage = kn.open_storage(storage_dir)
    assert storage.usage().max_cache_bytes == 10_000
    # The user's own file, bigger than anything else: never evicted.
    mine = kn.store_text("m" * 3000)
    # Downloaded copies (what the daemon will store, marked fetchable).
    a = storage.store_bytes(os.urandom(2000), "a", fetchable=True)
    b = storage.store_bytes(os.urandom(2000), "b", fetchable=True)
    c = storage.store_bytes(os.urandom(2000), "c", fetchable=True)
    assert storage.usage().stored_bytes == 9000
    assert kn.load_bytes(a, 0, 1)  # a is now more recently used than b and c
    before = disk_bytes(storage_dir)
    # 11,000 > 10,000: evict the least recently used fetchable files (b, then c) until at most
    # 70 % of the cap (7,000 bytes) remain.
    d = storage.store_bytes(os.urandom(2000), "d", fetchable=True)
    assert not storage.has_file(b) and not storage.has_file(c)
    assert storage.has_file(a) and storage.has_file(d) and storage.has_file(mine)
    assert disk_bytes(storage_dir) == before + 2000 - 4000  # really deleted, not moved
    assert storage.usage().stored_bytes == disk_bytes(storage_dir) == 7000
    assert not (storage_dir / "sha1-trash").exists()


def test_user_files_are_never_evicted_even_over_cap(storage_dir: Path, cli) -> None:
    cli.run("init", "--max-cache-size-gib", "0.000001")  # 1,000 bytes
    uris = [kn.store_text(f"{i}" * 600) for i in range(5)]
    assert all(kn.load_text(u) for u in uris)
    assert kn.open_storage(storage_dir).usage().stored_bytes == 3000


def test_storing_a_fetchable_file_yourself_pins_it(storage_dir: Path, cli, tmp_path: Path) -> None:
    cli.run("init", "--max-cache-size-gib", "0.000003")  # 3,000 bytes
    storage = kn.open_storage(storage_dir)
    data = os.urandom(2000)
    uri = storage.store_bytes(data, fetchable=True)
    p = tmp_path / "same.bin"
    p.write_bytes(data)
    kn.store_file(p)  # the user now owns a copy: it must not be evicted
    storage.store_bytes(os.urandom(2000), fetchable=True)
    assert storage.has_file(uri)
    # mark_fetchable is how the daemon flags downloads; it can also unpin.
    assert storage.mark_fetchable(uri) is True
    storage.store_bytes(os.urandom(500), fetchable=True)
    assert not storage.has_file(uri)


def test_big_file_and_manifest_evicted_together(storage_dir: Path, cli, big_file: Path) -> None:
    cli.run("init", "--max-cache-size-gib", "0.05")  # 50 MB
    storage = kn.open_storage(storage_dir)
    with open(big_file, "rb") as f:
        uri = storage.store_stream(f, "big.dat", fetchable=True)
    assert storage.has_file(uri)  # the file just stored is kept even though it is most of the cap
    storage.store_bytes(os.urandom(10_000_000), fetchable=True)  # 55 MB > 50 MB
    assert not storage.has_file(uri)
    assert not storage.has_file(f"sha1://{kn.parse_uri(uri).manifest_sha1}")


def test_manifest_is_kept_while_its_file_is_here(storage_dir: Path, cli, big_file: Path) -> None:
    cli.run("init", "--max-cache-size-gib", "0.06")  # 60 MB
    storage = kn.open_storage(storage_dir)
    with open(big_file, "rb") as f:
        uri = storage.store_stream(f, "big.dat", fetchable=True)
    manifest_uri = f"sha1://{kn.parse_uri(uri).manifest_sha1}"
    # Reading the file touches it, not its manifest; the manifest must still not go first.
    small = [storage.store_bytes(os.urandom(1000), fetchable=True) for _ in range(3)]
    storage.load_bytes(uri, 0, 10)
    candidates = [sha1 for sha1, _, _ in storage.index.eviction_candidates()]
    assert manifest_uri[7:] not in candidates and kn.parse_uri(uri).sha1 in candidates
    storage.store_bytes(os.urandom(14_000_000), fetchable=True)  # 59+ MB: under the cap
    storage.store_bytes(os.urandom(2_000_000), fetchable=True)   # over: evict LRU to 42 MB
    assert not any(storage.has_file(u) for u in small)
    assert not storage.has_file(uri) and not storage.has_file(manifest_uri)

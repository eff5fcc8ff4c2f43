"""A storage is private to its owner (issue 11, "modes"): directories 0700, databases and their
-wal/-shm 0600, stored content 0400, whatever the umask; files registered with link_file keep
their own mode. Checked after storing files, mutables and feeds, and after a fetch."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import kachery_node as kn
from kachery_node.storage.manifest import CHUNK_SIZE


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


STORAGE_LAYER = ("sha1", "tmp", "files.db", "mutables.db", "feeds.db")


def _modes(storage_dir: Path, kinds=STORAGE_LAYER) -> dict[str, int]:
    """Mode of the storage directory and of everything the storage layer made in it."""
    out = {".": _mode(storage_dir)}
    for path in storage_dir.rglob("*"):
        rel = str(path.relative_to(storage_dir))
        if any(k in rel for k in kinds):
            out[rel] = _mode(path)
    return out


def _expected(rel: str, mode: int, path: Path) -> bool:
    if path.is_dir():
        return mode == 0o700
    if rel.startswith("sha1/"):
        return mode == 0o400
    return mode == 0o600


@pytest.fixture
def loose_umask():
    """The usual 022 umask, which made files.db and stored content world-readable."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_everything_stored_is_private(cli, storage_dir: Path, tmp_path: Path, loose_umask) -> None:
    cli.run("init")
    small = tmp_path / "small.txt"
    small.write_text("a person's data")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(CHUNK_SIZE + 10))  # with a manifest
    cli.run("store", str(small), str(big))
    storage = kn.open_storage(storage_dir)
    storage.store_json({"a": 1})
    storage.store_npy(__import__("numpy").arange(5))
    storage.store_pkl({"b": 2})
    storage.set("key", "value")
    storage.create_feed().load_subfeed("log").append_message({"x": 1})
    modes = _modes(storage_dir)
    for name in ("files.db", "files.db-wal", "files.db-shm", "mutables.db", "mutables.db-wal",
                 "mutables.db-shm", "feeds.db", "feeds.db-wal", "feeds.db-shm"):
        assert modes.get(name) == 0o600, (name, modes)
    assert modes["."] == 0o700 and _mode(storage_dir / "config.toml") == 0o600
    assert _mode(storage_dir / "node.key") == 0o600
    stored = [rel for rel in modes if rel.startswith("sha1/") and (storage_dir / rel).is_file()]
    assert len(stored) == 6  # small, big, big's manifest, json, npy, pkl
    bad = {rel: oct(m) for rel, m in modes.items() if not _expected(rel, m, storage_dir / rel)}
    assert bad == {}, bad


def test_a_storage_made_without_init_is_private(storage_dir: Path, loose_umask) -> None:
    kn.store_text("hello")
    assert _mode(storage_dir) == 0o700
    assert _mode(storage_dir / "files.db") == 0o600


def test_link_file_leaves_the_users_file_alone(storage: kn.Storage, tmp_path: Path,
                                               loose_umask) -> None:
    shared = tmp_path / "shared.txt"
    shared.write_text("for everyone")
    shared.chmod(0o644)
    uri = storage.link_file(shared)
    assert _mode(shared) == 0o644  # the user's choice, not kachery's
    assert storage.load_file(uri) == str(shared)


@pytest.mark.slow
def test_fetched_files_are_private(tmp_path: Path, loose_umask) -> None:
    from tests.hub.conftest import HubProcess
    from tests.network.conftest import ALL_ROLES, Lab

    lab = Lab(tmp_path, HubProcess(tmp_path / "hub"))
    try:
        alice = lab.add_node("alice", ALL_ROLES)
        bob = lab.add_node("bob", ["request-files"])
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(CHUNK_SIZE + 10))  # fetched in chunks, through tmp/
        uri = kn.open_storage(alice.storage_dir).store_file(big)
        small = kn.open_storage(alice.storage_dir).store_text("small")
        bob.run("load", uri)
        bob.run("load", small)
        assert kn.open_storage(bob.storage_dir).load_bytes(uri, 0, 10) == big.read_bytes()[:10]
        # (tmp/ holds the daemon's own partial-fetch bookkeeping; the storage directory's
        # 0700 shuts it, and the daemon's other files, from other users)
        modes = _modes(bob.storage_dir, kinds=("sha1", "files.db", "mutables.db", "feeds.db"))
        bad = {rel: oct(m) for rel, m in modes.items()
               if not _expected(rel, m, bob.storage_dir / rel)}
        assert bad == {}, bad
        assert modes["."] == 0o700
        assert len([r for r in modes if r.startswith("sha1/") and r.count("/") == 4]) == 3
    finally:
        lab.stop()
        lab.hub.stop()

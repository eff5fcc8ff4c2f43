"""Storages and hubs refuse a network file system (issue 13 item 6): the `kachery` command with
a mount table (``KACHERY_MOUNTINFO``) that puts the directory on NFS, as a cluster's shared home."""

from __future__ import annotations

import os
import subprocess

import pytest

import kachery_node as kn

from .conftest import KACHERY


@pytest.fixture
def nfs(tmp_path):
    """``(env, mount point)``: a mount table in which ``<tmp>/home`` is NFS and the rest local."""
    home = tmp_path / "home"
    home.mkdir()
    table = tmp_path / "mountinfo"
    table.write_text("27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
                     f"40 27 0:45 / {home} rw,relatime shared:20 - nfs4 fs01.lab.example:/export/home rw\n")
    env = {**os.environ, "KACHERY_MOUNTINFO": str(table), "KACHERY_USER_DIR": str(tmp_path / "user")}
    env.pop("KACHERY_ALLOW_NETWORK_FS", None)
    return env, home


def _kachery(env, *args, timeout=60):
    return subprocess.run([KACHERY, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_a_storage_on_nfs_is_refused_with_what_to_do(nfs, tmp_path, monkeypatch):
    env, home = nfs
    env = {**env, "KACHERY_STORAGE_DIR": str(home / "alice" / "kachery-storage")}
    for command in (("init",), ("store", str(tmp_path / "mountinfo"))):
        r = _kachery(env, *command)
        assert r.returncode == 1, r
        assert "Error: the storage's databases" in r.stderr
        assert "nfs4 fs01.lab.example:/export/home" in r.stderr
        assert "KACHERY_STORAGE_DIR" in r.stderr and "KACHERY_ALLOW_NETWORK_FS=1" in r.stderr
        assert "Traceback" not in r.stderr
    assert list(home.iterdir()) == []  # nothing was created there
    monkeypatch.setenv("KACHERY_MOUNTINFO", env["KACHERY_MOUNTINFO"])  # the Python API, here
    monkeypatch.delenv("KACHERY_ALLOW_NETWORK_FS", raising=False)
    with pytest.raises(kn.NetworkFileSystemError):
        kn.open_storage(home / "s").store_text("x")
    assert list(home.iterdir()) == []

    local = {**env, "KACHERY_STORAGE_DIR": str(tmp_path / "local-storage")}  # what the message says
    assert _kachery(local, "init").returncode == 0
    assert _kachery(local, "store", str(tmp_path / "mountinfo")).returncode == 0

    forced = {**env, "KACHERY_ALLOW_NETWORK_FS": "1"}  # for those whose NFS locking works
    assert _kachery(forced, "init").returncode == 0
    assert (home / "alice" / "kachery-storage" / "config.toml").exists()


def test_a_hub_on_nfs_is_refused(nfs):
    env, home = nfs
    r = _kachery(env, "hub", "serve", "--dir", str(home / "hub"), "--port", "0")
    assert r.returncode == 1, r
    assert "Error: the hub's databases" in r.stderr and "kachery hub serve --dir" in r.stderr
    assert not (home / "hub").exists()

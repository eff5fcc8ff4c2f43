"""Fixtures for the storage tests: a private storage and user dir per test, and the real
``kachery`` command run as a subprocess against them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import kachery_node as kn

KACHERY = str(Path(sys.executable).parent / "kachery")


class KacheryCli:
    """Runs ``kachery ...`` with KACHERY_STORAGE_DIR / KACHERY_USER_DIR set to the test's dirs."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def run(self, *args: str, input: str | bytes | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess:
        text = not isinstance(input, bytes)
        proc = subprocess.run([KACHERY, *args], env=self.env, input=input, capture_output=True,
                              text=text, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kachery {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def json(self, *args: str, **kw) -> dict:
        return json.loads(self.run(*args, "--json", **kw).stdout)

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([KACHERY, *args], env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)


@pytest.fixture
def storage_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh $KACHERY_STORAGE_DIR (and $KACHERY_USER_DIR) for this test."""
    d = tmp_path / "kachery-storage"
    monkeypatch.setenv("KACHERY_STORAGE_DIR", str(d))
    monkeypatch.setenv("KACHERY_USER_DIR", str(tmp_path / "kachery-user"))
    return d


@pytest.fixture
def storage(storage_dir: Path) -> kn.Storage:
    s = kn.open_storage(storage_dir)
    yield s
    s.close()


@pytest.fixture
def cli(storage_dir: Path) -> KacheryCli:
    env = dict(os.environ)
    return KacheryCli(env)


BIG_SIZE = 45_000_123  # three chunks: 20 MB, 20 MB, 5.000123 MB


@pytest.fixture(scope="session")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 45 MB file of pseudo-random bytes (crosses two chunk boundaries), made once."""
    import numpy as np

    path = tmp_path_factory.mktemp("big") / "big.dat"
    rng = np.random.default_rng(3)
    path.write_bytes(rng.integers(0, 256, BIG_SIZE, dtype=np.uint8).tobytes())
    return path

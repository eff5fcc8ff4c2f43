"""Several processes using one storage at once (a script storing while another loads)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import kachery_node as kn


def test_processes_store_the_same_big_file_at_once(storage_dir: Path, big_file: Path) -> None:
    code = ("import sys, kachery_node as kn; s = kn.open_storage(); "
            "print(s.store_bytes(open(sys.argv[1], 'rb').read(), 'big.dat'))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(big_file)], stdout=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(outs)) == 1 and "?manifest=" in outs[0]
    data = big_file.read_bytes()
    assert kn.load_bytes(outs[0], 19_999_999, 20_000_001) == data[19_999_999:20_000_001]
    assert Path(kn.load_file(outs[0])).stat().st_size == len(data)
    assert not list((storage_dir / "tmp").iterdir())


def test_load_in_one_process_what_another_stored(storage_dir: Path) -> None:
    code = ("import numpy as np, kachery_node as kn; "
            "print(kn.store_npy(np.arange(6).reshape(2, 3)))")
    uri = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    assert kn.load_npy(uri).tolist() == [[0, 1, 2], [3, 4, 5]]


def test_stale_temporary_files_are_removed(tmp_path: Path) -> None:
    d = tmp_path / "s"
    (d / "tmp").mkdir(parents=True)
    stale, fresh = d / "tmp" / "store.old.tmp", d / "tmp" / "store.new.tmp"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"in progress")
    old = time.time() - 2 * 24 * 3600
    os.utime(stale, (old, old))
    kn.Storage(d).store_text("x")
    assert not stale.exists() and fresh.exists()

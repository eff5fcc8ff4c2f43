"""Install the pinned hypercore (npm, into bench/.cache) and run bench.mjs; used by
bench/feeds/run.py and bench/network/run.py so that both measure the same hypercore."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

HYPERCORE_SRC = Path(__file__).resolve().parent
CACHE = HYPERCORE_SRC.parent / ".cache"


def run_hypercore_bench(tmp: Path, args: list[str], log: Callable[[str], None]) -> dict[str, Any] | None:
    """Run ``bench.mjs --dir TMP ARGS`` and return its JSON, or None (logged) if it cannot run."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        log("node/npm not found: skipping hypercore")
        return None
    inst = CACHE / "hypercore"
    pinned = json.loads((HYPERCORE_SRC / "package.json").read_text())["dependencies"]["hypercore"]
    installed = inst / "node_modules" / "hypercore" / "package.json"
    if not (installed.exists() and json.loads(installed.read_text())["version"] == pinned):
        log(f"installing hypercore {pinned} into {inst} (npm install)")
        inst.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            if (HYPERCORE_SRC / name).exists():
                shutil.copy(HYPERCORE_SRC / name, inst / name)
        r = subprocess.run([npm, "install", "--prefix", str(inst), "--no-audit", "--no-fund"],
                           capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            log(f"npm install failed:\n{r.stderr[-2000:]}")
            return None
    # bench.mjs runs from the install folder so that it finds its node_modules.
    shutil.copy(HYPERCORE_SRC / "bench.mjs", inst / "bench.mjs")
    cmd = [node, str(inst / "bench.mjs"), "--dir", str(tmp), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=inst)
    if r.returncode != 0:
        log(f"hypercore bench failed:\n{r.stderr[-2000:]}")
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])

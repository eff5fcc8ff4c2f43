"""The original kachery's own Python client, kachery-client 1.2.0 from PyPI, in a virtual
environment of its own (it must not see this project's packages, nor they its), built once and
kept in pytest's cache (``.pytest_cache/d/kachery-client-1.2.0``). Tests that need it are
skipped, saying why, only when the package registry cannot be reached."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# numpy < 2: the client predates numpy 2 (its safe unpickler allows numpy.core, not numpy._core)
# and does not declare numpy although it imports it.
REQUIREMENTS = ["kachery-client==1.2.0", "numpy<2"]
HERE = Path(__file__).parent
_UNREACHABLE = ("Could not find a version", "No matching distribution", "NewConnectionError",
                "Temporary failure in name resolution", "Network is unreachable",
                "Connection refused", "Max retries exceeded", "ConnectTimeout")


def _cache_dir(config: pytest.Config, tmp_path_factory) -> Path:
    cache = getattr(config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("kachery-client-1.2.0"))
    return tmp_path_factory.getbasetemp().parent / "kachery-client-1.2.0"


@pytest.fixture(scope="session")
def original_python(pytestconfig, tmp_path_factory) -> Path:
    """The interpreter of a venv with kachery-client 1.2.0 installed."""
    root = _cache_dir(pytestconfig, tmp_path_factory)
    root.mkdir(parents=True, exist_ok=True)
    venv = root / "venv"
    ready = venv / "ready.json"
    python = venv / "bin" / "python"
    with open(root / "build.lock", "w") as lock:  # pytest-xdist workers build it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready.exists() and python.exists():
            return python
        shutil.rmtree(venv, ignore_errors=True)
        # About 20 s with a reachable registry. pip's own --timeout/--retries end a stalled
        # connection; the overall timeouts end anything else, and a half-built venv is removed
        # (ready.json is written last, so the next run starts over).
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
            r = subprocess.run([str(python), "-m", "pip", "install", "-q", "--timeout", "30",
                                "--retries", "2", *REQUIREMENTS],
                               capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired as exc:
            shutil.rmtree(venv, ignore_errors=True)
            pytest.fail(f"building the kachery-client 1.2.0 venv took over {exc.timeout:.0f} s "
                        f"({' '.join(map(str, exc.cmd))})", pytrace=False)
        if r.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            if any(marker in r.stderr for marker in _UNREACHABLE):
                pytest.skip("kachery-client 1.2.0 could not be installed: the package registry "
                            f"is unreachable ({r.stderr.strip().splitlines()[-1][:200]})")
            pytest.fail(f"pip install {' '.join(REQUIREMENTS)} failed:\n{r.stderr[-2000:]}")
        check = subprocess.run([str(python), "-c", "import kachery_client as kc; print(kc.__version__)"],
                               capture_output=True, text=True, timeout=120)
        assert check.stdout.strip() == "1.2.0", check.stderr
        ready.write_text(json.dumps({"requirements": REQUIREMENTS}))
    return python


def run_original(python: Path, script: Path | str, *args: str, env: dict | None = None,
                 timeout: float = 120) -> dict:
    """Run ``script`` under the original client's interpreter; return the JSON it prints last."""
    # Only what the script needs from this environment: not this project's PYTHONPATH.
    base = {k: v for k, v in (env or os.environ).items() if not k.startswith("PYTHON")}
    r = subprocess.run([str(python), str(script), *args], env=base, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, f"{script} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])

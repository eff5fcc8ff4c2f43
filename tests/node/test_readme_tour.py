"""The storage tour for README.md runs as written.

The section is cut out of README.md by its heading.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
SOURCE = ROOT / "README.md"


def _section() -> str:
    text = SOURCE.read_text()
    if SOURCE.name == "README.md":  # only the storage section
        start = text.index("## Files, arrays and settings on your node")
        end = text.find("\n## ", start + 1)
        text = text[start : end if end != -1 else None]
    return text


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", _section(), flags=re.S)


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "KACHERY_STORAGE_DIR": str(tmp_path / "storage"),
            "KACHERY_USER_DIR": str(tmp_path / "user"),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def test_python_tour_runs(tmp_path: Path) -> None:
    (block,) = _blocks("python")
    res = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=_env(tmp_path),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "{'gain': 0.5, 'trace': [0, 1, 2]}" in out
    assert "sha1://943a702d06f34599aee1f8da8ef9f7296031d699/file.txt" in out
    assert "not in the local storage" in out
    assert "[{'event': 'started'}]" in out


def test_shell_tour_runs(tmp_path: Path) -> None:
    (block,) = _blocks("bash")
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path,
                         env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "Hello, world!" in out
    assert "node ID:" in out
    assert re.search(r"^\s*20$", out, flags=re.M)
    assert '{"text": "first"}\n"second"\n' in out
    assert '"num_messages": 2' in out
    assert '{"score": 0.9}' in out

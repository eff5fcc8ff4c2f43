"""README.md is part of the product: its commands are CI's, and its examples run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_test_command_is_what_ci_runs():
    commands = [b.strip() for b in _blocks("bash")]
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in (ROOT / ".ci/run").read_text()
    assert any("examples/primes.py" in c or "kachery demo" in c for c in commands)


def test_readme_python_examples_run(tmp_path):
    env = {**os.environ, "KACHERY_STORAGE_DIR": str(tmp_path / "storage"),
           "KACHERY_USER_DIR": str(tmp_path / "user")}
    for i, block in enumerate(_blocks("python")):
        result = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"README python block {i} failed:\n{block}\n{result.stderr}"


def test_main_job_example_runs():
    result = subprocess.run([sys.executable, str(ROOT / "examples/primes.py"), "--count", "10",
                             "--interval", "0.01"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("[follower] #") == 10
    assert "done: 10 signed messages" in result.stdout


def test_readme_uses_only_channels_it_created_before():
    """README's task snippets used channels=["lab"] after README had created lab.demo, so a
    newcomer following it in order got "not joined" errors."""
    created: set[str] = set()
    pattern = re.compile(r'kachery channel create ([\w.-]+)|kachery (?:node (?:join|leave)|channel '
                         r'(?:grant|show|revoke|delete|configure)) ([\w.-]+)|channels?=\[?"([^"]+)"')
    for match in pattern.finditer(README):
        made, used_cli, used_py = match.groups()
        if made:
            created.add(made)
            continue
        used = used_cli or used_py
        if used != "NAME":  # the backends section's placeholder
            line = README[: match.start()].count("\n") + 1
            assert used in created, f"README line {line} uses channel {used!r} before creating it"


def test_readme_unit_suite_command_runs_in_seconds():
    """README's unit-suite command works as written and selects the pure tests only."""
    block = next(b for b in _blocks("bash") if "-m e2e" in b)
    unit_command = block.splitlines()[0].split("#")[0].split()
    assert unit_command[:2] == ["pytest", "-q"], unit_command
    result = subprocess.run([sys.executable, "-m", *unit_command, "-p", "no:cacheprovider"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    seconds = float(re.search(r"passed in ([\d.]+)s", result.stdout).group(1))
    assert seconds < 60, result.stdout[-500:]  # README says seconds; 60 leaves room for a loaded CI machine


def test_readme_installs_our_distribution_not_the_successor():
    """`kachery` on PyPI is the successor line (2.0.x), another program: README's install
    commands name our distribution, kachery-node, and both command names are installed."""
    installs = re.findall(r"pip install([^\n`&;|#]*)", README)  # the arguments only
    assert installs
    for command in installs:
        assert not re.search(r"""(?<![\w.-])['"]?kachery(?![\w-])""", command), command
    assert any("kachery-node[" in c for c in installs)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'name = "kachery-node"' in pyproject
    for script in ("kachery", "kachery-node"):
        result = subprocess.run([str(Path(sys.executable).parent / script), "--version"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and result.stdout.startswith("kachery-node, version"), result

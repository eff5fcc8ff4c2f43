"""The layering, checked on the source (the AST of every file, imports inside functions too):

* ``kachery_node/protocol/`` is pure logic: it imports no event loop, clock, socket, HTTP or
  SQLite module, and nothing of the layers that do I/O (transport, daemon, hub);
* ``kachery_feeds`` (the core) imports nothing from ``kachery_node``;
* no two modules share a file name, so that a name in a traceback or a search names one file.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL = ROOT / "kachery_node" / "protocol"

#: What a protocol core must not import (a module or any of its submodules).
FORBIDDEN_IN_PROTOCOL = (
    "anyio", "trio", "httpx", "sqlite3", "sqlite_utils", "time", "socket", "asyncio",
    "kachery_node.transport", "kachery_node.daemon", "kachery_node.hub",
)
#: File names that several modules may share.
SHARED_NAMES = {"__init__.py", "__main__.py"}
#: kachery_feeds and kachery_node each have their own errors.py (the core's and the node's).
SHARED_ACROSS_PACKAGES = {"errors.py"}


def module_name(path: Path) -> str:
    """``kachery_node/protocol/roles.py`` -> ``kachery_node.protocol.roles``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Every module that ``source`` (the text of ``module``) imports, anywhere in the file, with
    relative imports resolved; ``from a import b`` counts as ``a`` and ``a.b`` (b may be a
    submodule)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def violations(imports: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(name for name in imports
                  if any(name == bad or name.startswith(bad + ".") for bad in forbidden))


def python_files(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def test_the_checker_sees_every_kind_of_import():
    source = """
import os, time
from .. import daemon
from ..transport.bucket import open_bucket
from .signing import sign

def later():
    import trio.lowlevel
    from kachery_node.hub import app
"""
    found = imported_modules(source, "kachery_node.protocol.example")
    assert violations(found, FORBIDDEN_IN_PROTOCOL) == [
        "kachery_node.daemon", "kachery_node.hub", "kachery_node.hub.app",
        "kachery_node.transport.bucket", "kachery_node.transport.bucket.open_bucket",
        "time", "trio.lowlevel"]
    assert "kachery_node.protocol.signing.sign" in found
    assert violations({"timeit", "kachery_node.transports"}, FORBIDDEN_IN_PROTOCOL) == []


@pytest.mark.parametrize("path", python_files("kachery_node/protocol"), ids=lambda p: p.name)
def test_protocol_modules_do_no_io(path):
    found = imported_modules(path.read_text(), module_name(path), is_package=path.name == "__init__.py")
    assert violations(found, FORBIDDEN_IN_PROTOCOL) == [], (
        f"{path.relative_to(ROOT)} is a protocol core: it takes events and the time as arguments "
        "and returns actions; the daemon's drivers do the I/O")


def test_kachery_feeds_imports_nothing_from_kachery_node():
    bad = {}
    for path in python_files("kachery_feeds"):
        found = imported_modules(path.read_text(), module_name(path), is_package=path.name == "__init__.py")
        if hits := violations(found, ("kachery_node",)):
            bad[str(path.relative_to(ROOT))] = hits
    assert bad == {}


def test_no_two_modules_share_a_file_name():
    by_name: dict[str, list[str]] = defaultdict(list)
    for package in ("kachery_node", "kachery_feeds"):
        for path in python_files(package):
            if path.name not in SHARED_NAMES:
                by_name[path.name].append(str(path.relative_to(ROOT)))
    shared = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    for name in SHARED_ACROSS_PACKAGES:
        paths = shared.get(name, [])
        if sorted(p.split("/")[0] for p in paths) == ["kachery_feeds", "kachery_node"]:
            del shared[name]  # one in each package: allowed
    assert shared == {}


#: Where kachery_node may use an HTTP client: the daemon's one client, and the transports to hubs,
#: buckets and pub-sub services (the hub serves HTTP, and its tests use clients of their own).
HTTP_CLIENT_HOMES = ("kachery_node.daemon_client", "kachery_node.transport", "kachery_node.hub")


def test_one_daemon_client():
    """The daemon's local API is reached through kachery_node.daemon_client.DaemonClient only:
    no other module (API, remote reads, task apps, CLI) builds its own HTTP client."""
    bad = []
    for path in python_files("kachery_node"):
        name = module_name(path)
        if any(name == home or name.startswith(home + ".") for home in HTTP_CLIENT_HOMES):
            continue
        found = imported_modules(path.read_text(), name, is_package=path.name == "__init__.py")
        if violations(found, ("httpx", "requests", "urllib.request", "http.client")):
            bad.append(name)
    assert bad == []

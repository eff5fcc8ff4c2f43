"""Start-up stays cheap (issue 15 item 6): ``kachery --help`` and ``import kachery_feeds`` load
no server, event loop or heavy library. Each check runs in a fresh interpreter and reads its
``sys.modules``; the time itself is measured by ``bench/bench_startup.py`` (not a test: timing
on a shared machine is noise)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

import kachery_feeds as kf
from kachery_feeds import schema
from tests import processes

#: Modules (or packages) that only the daemon, the hub or a network command needs.
SERVER_MODULES = (
    "trio", "hypercorn", "httpx", "h11", "h2", "starlette", "sqlite_utils", "numpy",
    "kachery_node.daemon.process", "kachery_node.daemon.node_runtime", "kachery_node.daemon.local_api",
    "kachery_node.daemon.feeds_exchange", "kachery_node.hub", "kachery_node.transport.pubsub",
    "kachery_node.transport.bucket",
)


def _modules_after(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json\n"
                          "print(json.dumps(sorted(sys.modules)), file=sys.stderr)"],
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stderr.strip().splitlines()[-1])


def _loaded(modules: list[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes))


def test_kachery_help_imports_no_server_module():
    modules = _modules_after(
        "import sys\nsys.argv = ['kachery', '--help']\nfrom kachery_node.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n")
    assert _loaded(modules, SERVER_MODULES) == []
    # nor what only a TLS connection, a node's config or a hashing pool needs (~10 ms), nor the
    # API and the feeds core (~60 ms: kachery_node's names load on first use), nor the commands
    # registered lazily (the list shows their first sentence, kept equal by the test below)
    assert _loaded(modules, ("ssl", "tomllib", "concurrent.futures")) == []
    assert _loaded(modules, ("kachery_feeds", "kachery_node.api", "kachery_node.errors", "nacl",
                             "kachery_node.cli.daemon_commands", "kachery_node.cli.hub_commands")) == []


def test_kachery_help_lists_each_lazy_command_with_its_own_first_sentence():
    import importlib

    from click.testing import CliRunner

    from kachery_node.cli import main

    listed = CliRunner().invoke(main, ["--help"], terminal_width=10_000).output
    for name, path in main._lazy.items():
        module, _, attr = path.partition(":")
        command = getattr(importlib.import_module(module), attr)
        short = command.get_short_help_str(limit=10_000)
        assert main._lazy_help[name] == short, name
        assert f"  {name} " in listed and " ".join(short.split()) in " ".join(listed.split())


def test_import_kachery_node_loads_its_names_on_first_use():
    modules = _modules_after("import kachery_node as kn")
    assert _loaded(modules, ("kachery_feeds", "kachery_node.api", "nacl", "httpx")) == []
    modules = _modules_after("import kachery_node as kn\nassert kn.NotFoundError.__module__ == "
                             "'kachery_node.errors'\nfrom kachery_node import parse_uri, load_file")
    assert "kachery_node.api" in modules and "kachery_node.storage.file_uris" in modules


def test_talking_to_the_daemon_loads_no_server_module(tmp_path):
    """A script's or a command's request to the daemon (`kachery node status`, kn.load_file of a
    file fetched by the daemon) pays for no HTTP library of the network side: httpx's import
    loads trio and anyio too (~0.1 s)."""
    modules = _modules_after(
        "import kachery_node as kn\nfrom kachery_node.daemon_client import DaemonClient\n"
        f"try:\n    DaemonClient({str(tmp_path)!r}, port=1).status()\n"
        "except kn.DaemonNotRunningError:\n    pass\nelse:\n    raise SystemExit('a daemon on port 1?')\n")
    assert _loaded(modules, SERVER_MODULES + ("anyio",)) == []
    assert "http.client" in modules  # it did try to connect


def test_a_hub_command_loads_no_server_module(monkeypatch):
    """`kachery channel ...`, `node join` and the like ask the hub one or two things: they pay
    for no HTTP library of the network side either (~0.2 s of httpx, trio and anyio before).
    With a proxy in the environment, httpx (which reads it) comes back: see test_tls.py."""
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    modules = _modules_after(
        "import kachery_node as kn\nfrom kachery_node.cli.hub_commands import user_client\n"
        "from kachery_node.transport.hub_client import HubClient\n"
        "try:\n    HubClient('http://127.0.0.1:1').info()\n"
        "except kn.HubRequestError as exc:\n    assert 'cannot reach the hub' in str(exc), exc\n"
        "else:\n    raise SystemExit('a hub on port 1?')\n")
    assert _loaded(modules, SERVER_MODULES + ("anyio",)) == []
    assert "http.client" in modules  # it did try to connect


def test_import_kachery_feeds_loads_its_names_on_first_use():
    modules = _modules_after("import kachery_feeds")
    assert _loaded(modules, ("sqlite_utils", "numpy", "kachery_node", "httpx", "trio")) == []
    # nor its own modules, SQLite or libsodium (~35 ms): each public name loads on first use
    assert _loaded(modules, ("kachery_feeds",)) == ["kachery_feeds"]
    assert _loaded(modules, ("sqlite3", "nacl", "orjson")) == []
    modules = _modules_after("import kachery_feeds as kf\nassert kf.ForkError.__module__ == "
                             "'kachery_feeds.errors'\nfrom kachery_feeds import parse_feed_uri")
    assert "kachery_feeds.errors" in modules and "kachery_feeds.store" not in modules
    # the store does not load the import helper's client (subprocess and all: ~4 ms) either,
    # until its first large import
    modules = _modules_after("import kachery_feeds as kf\nkf.Store")
    assert _loaded(modules, ("kachery_feeds.range_verifier", "subprocess")) == []


def test_every_public_name_and_module_of_kachery_feeds_is_reachable_from_the_package():
    import importlib
    import pkgutil

    assert sorted(kf.__all__) == sorted(kf._LAZY) and set(dir(kf)) >= set(kf.__all__)
    for name in kf.__all__:
        module = importlib.import_module(kf._LAZY[name])
        assert getattr(kf, name) is getattr(module, name), name
    assert {m.name for m in pkgutil.iter_modules(kf.__path__)} == kf._SUBMODULES
    modules = _modules_after("import kachery_feeds as kf\nassert kf.messages.message_hash(b'') == "
                             "__import__('hashlib').sha256(b'').digest()")
    assert "kachery_feeds.messages" in modules
    with pytest.raises(AttributeError, match="no_such_name"):
        kf.no_such_name  # noqa: B018


def test_creating_and_using_a_store_does_not_import_sqlite_utils(tmp_path):
    modules = _modules_after(
        "import kachery_feeds as kf\n"
        f"s = kf.open_store({str(tmp_path / 'feeds.db')!r})\n"
        "f = s.create_feed(); sf = f.load_subfeed('x'); sf.append_message({'a': 1})\n"
        "assert s.list_feeds() and f.list_subfeeds() and f.get_subfeed_hashes()\n"
        "assert s.get_fork_proofs() == [] and sf.get_fork_proofs() == []\n")
    assert _loaded(modules, ("sqlite_utils", "numpy")) == []


def _v1_schema_as_sqlite_utils_built_it(conn: sqlite3.Connection) -> None:
    """The schema migration as it was written with sqlite-utils (before issue 15)."""
    import sqlite_utils

    db = sqlite_utils.Database(conn)
    db["feeds"].create({"feed_id": str, "private_key": bytes, "name": str, "created_ms": int},
                       pk="feed_id", not_null={"created_ms"})
    db["feeds"].create_index(["name"], unique=True)
    db["subfeeds"].create({"id": int, "feed_id": str, "subfeed_hash": str, "name": str, "count": int,
                           "head_hash": bytes},
                          pk="id", not_null={"feed_id", "subfeed_hash", "count"}, defaults={"count": 0})
    db["subfeeds"].create_index(["feed_id", "subfeed_hash"], unique=True)
    db.execute("""CREATE TABLE messages (
               subfeed_id INTEGER NOT NULL,
               n INTEGER NOT NULL,
               body BLOB NOT NULL,
               sig BLOB,
               PRIMARY KEY (subfeed_id, n)
           ) WITHOUT ROWID""")
    db["fork_proofs"].create({"id": int, "feed_id": str, "subfeed_hash": str, "position": int,
                              "proof_sha256": bytes, "proof": bytes, "detected_ms": int},
                             pk="id", not_null={"feed_id", "subfeed_hash", "position", "proof",
                                                "detected_ms"})
    db["fork_proofs"].create_index(["proof_sha256"], unique=True)


def test_plain_sql_schema_is_exactly_the_one_sqlite_utils_built(tmp_path):
    kf.open_store(tmp_path / "new.db").close()
    old = sqlite3.connect(tmp_path / "old.db")
    _v1_schema_as_sqlite_utils_built_it(old)
    for later_step in schema.MIGRATIONS[1:]:  # v2 on: plain SQL on both sides
        later_step(old)
    master = "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name"
    new = sqlite3.connect(tmp_path / "new.db")
    assert new.execute(master).fetchall() == old.execute(master).fetchall()
    old.close()
    new.close()


def test_store_db_still_offers_sqlite_utils(tmp_path):
    with kf.open_store(tmp_path / "feeds.db") as store:
        feed = store.create_feed(name="lab")
        assert [r["name"] for r in store.db["feeds"].rows] == ["lab"]
        assert feed.feed_id == store.list_feeds()[0]["feed_id"]


def test_the_startup_bench_runs_and_stops_its_daemon_and_hub(tmp_path):
    """bench/bench_startup.py, one round of one run: every row printed, the daemon and the hub
    it started in temporary folders (here under ``tmp_path``) stopped at its end."""
    import os
    from pathlib import Path

    bench = Path(__file__).parents[2] / "bench" / "bench_startup.py"
    try:
        out = subprocess.run([sys.executable, str(bench), "--rounds", "1", "--runs", "1"],
                             capture_output=True, text=True, timeout=120, check=True,
                             env={**os.environ, "TMPDIR": str(tmp_path)}).stdout
        for row in ("python -c pass (floor)", "import kachery_feeds", "kachery --help",
                    "kachery node status (a running daemon)", "kachery channel list (a running hub)"):
            assert f"| {row} |" in out, out
        assert "a request to the daemon: -X importtime" in out
        assert "a request to the hub: -X importtime" in out
        assert processes.naming(tmp_path) == []
    finally:
        for process in processes.naming(tmp_path):
            processes.terminate(process, timeout=5)

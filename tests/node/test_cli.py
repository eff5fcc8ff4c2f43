"""The `kachery` command: init, info, store, link, load, cat, feed ..., errors and --help."""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
import time
from pathlib import Path

import pytest

import kachery_node as kn
from kachery_node import identity
from tests.nodes import free_port

from .conftest import BIG_SIZE, KACHERY

CHUNK = 20_000_000


def test_init_creates_identity_and_config(cli, storage_dir: Path, tmp_path: Path) -> None:
    out = cli.json("init", "--label", "lab-pc")
    node_key = storage_dir / "node.key"
    user_key = tmp_path / "kachery-user" / "user.key"
    for key in (node_key, user_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600  # only its owner can read it
    assert out["node_id"] == identity.load_node_key(storage_dir).public_hex
    assert out["owner"] == identity.load_user_key(tmp_path / "kachery-user").public_hex
    assert len(out["node_id"]) == 64 and int(out["node_id"], 16) >= 0
    assert len(out["created"]) == 3
    cfg = kn.load_node_config(storage_dir)
    assert (cfg.label, cfg.node_id, cfg.owner, cfg.max_cache_size_gib) == (
        "lab-pc", out["node_id"], out["owner"], None)
    # Running it again keeps the keys.
    again = cli.json("init", "--max-cache-size-gib", "2.5")
    assert again["node_id"] == out["node_id"] and again["created"] == []
    assert kn.load_node_config(storage_dir).max_cache_bytes == 2_500_000_000
    assert kn.load_node_config(storage_dir).label == "lab-pc"
    # A second node of the same person shares the user key, not the node key.
    other = dict(cli.env, KACHERY_STORAGE_DIR=str(tmp_path / "second"))
    second = type(cli)(other).json("init")
    assert second["owner"] == out["owner"] and second["node_id"] != out["node_id"]


def test_info(cli, storage_dir: Path, tmp_path: Path) -> None:
    res = cli.run("info", check=False)
    assert res.returncode == 1
    assert "kachery init" in res.stderr and "Traceback" not in res.stderr
    with pytest.raises(kn.NotInitializedError):
        kn.load_node_config(storage_dir)
    init = cli.json("init", "--label", "n1")
    f = tmp_path / "f.txt"
    f.write_text("12345")
    cli.run("store", str(f))
    cli.run("link", str(f))
    info = cli.json("info")
    assert info["node_id"] == init["node_id"] and info["label"] == "n1"
    assert info["storage_dir"] == str(storage_dir)
    assert (info["stored_files"], info["stored_bytes"]) == (1, 5)
    assert (info["linked_files"], info["linked_bytes"]) == (1, 5)
    assert info["database_bytes"] > 0 and info["max_cache_bytes"] is None
    text = cli.run("info").stdout
    assert init["node_id"] in text and str(storage_dir) in text and "n1" in text


def test_store_load_cat(cli, storage_dir: Path, tmp_path: Path) -> None:
    f = tmp_path / "hello.txt"
    f.write_bytes(b"Hello, world!")
    uri = cli.run("store", str(f)).stdout.strip()
    assert uri == "sha1://943a702d06f34599aee1f8da8ef9f7296031d699/hello.txt"
    assert kn.load_text(uri) == "Hello, world!"  # the same storage from Python
    path = cli.run("load", uri).stdout.strip()
    assert Path(path).read_bytes() == b"Hello, world!"
    dest = tmp_path / "out.txt"
    cli.run("load", uri, "--dest", str(dest))
    assert dest.read_bytes() == b"Hello, world!"
    assert cli.run("cat", uri).stdout == "Hello, world!"
    assert cli.run("cat", uri, "--start", "7", "--end", "12").stdout == "world"
    assert cli.run("cat", uri, "--start", "7").stdout == "world!"
    # Several files at once, JSON lines.
    g = tmp_path / "g.txt"
    g.write_text("g")
    lines = cli.run("store", "--json", str(f), str(g)).stdout.splitlines()
    docs = [json.loads(x) for x in lines]
    assert [d["uri"] for d in docs] == [uri, f"sha1://{hashlib.sha1(b'g').hexdigest()}/g.txt"]
    assert docs[0] == {"path": str(f), "uri": uri, "sha1": uri[7:47], "size": 13,
                       "manifest_sha1": None}


def test_big_file_through_cli(cli, storage_dir: Path, big_file: Path) -> None:
    doc = cli.json("store", str(big_file))
    assert doc["size"] == BIG_SIZE and doc["manifest_sha1"]
    assert doc["uri"].endswith(f"?manifest={doc['manifest_sha1']}")
    data = big_file.read_bytes()
    raw = _cat_bytes(cli, doc["uri"], CHUNK - 10, 2 * CHUNK + 10)
    assert raw == data[CHUNK - 10 : 2 * CHUNK + 10]
    assert hashlib.sha1(_cat_bytes(cli, doc["uri"])).hexdigest() == doc["sha1"]
    # --progress forces a bar on stderr even without a terminal.
    res = cli.run("store", "--progress", str(big_file))
    assert res.stdout.strip() == doc["uri"]


def _cat_bytes(cli, uri: str, start: int | None = None, end: int | None = None) -> bytes:
    import subprocess

    from .conftest import KACHERY

    args = [KACHERY, "cat", uri]
    if start is not None:
        args += ["--start", str(start), "--end", str(end)]
    return subprocess.run(args, env=cli.env, capture_output=True, check=True, timeout=60).stdout


def test_progress_bar_for_large_files(cli, storage_dir: Path, tmp_path: Path) -> None:
    f = tmp_path / "big.bin"
    with open(f, "wb") as out:
        out.truncate(60_000_000)  # sparse: fast to make
    res = cli.run("store", "--progress", str(f))
    assert "big.bin" in res.stderr and "%" in res.stderr
    res = cli.run("store", str(f))  # not a terminal: no bar by default
    assert res.stderr == ""
    small = tmp_path / "s"
    small.write_text("s")
    assert cli.run("store", str(small)).stderr == ""


def test_link_through_cli(cli, storage_dir: Path, tmp_path: Path) -> None:
    f = tmp_path / "data.csv"
    f.write_text("a,b\n1,2\n")
    doc = cli.json("link", str(f))
    assert cli.run("load", doc["uri"]).stdout.strip() == str(f)
    f.write_text("a,b\n1,3\n")
    res = cli.run("load", doc["uri"], check=False)
    assert res.returncode == 1 and "changed after it was linked" in res.stderr


def test_cli_errors_are_messages_not_tracebacks(cli, storage_dir: Path, tmp_path: Path) -> None:
    missing = "sha1://" + "0" * 40
    for args in (["load", missing], ["cat", missing], ["load", "sha1://xyz"],
                 ["cat", "not-a-uri"]):
        res = cli.run(*args, check=False)
        assert res.returncode == 1, args
        assert res.stderr.startswith("Error: ") and "Traceback" not in res.stderr, res.stderr
    res = cli.run("load", missing, check=False)
    assert "not in the local storage" in res.stderr
    res = cli.run("store", str(tmp_path / "nope"), check=False)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    uri = kn.store_text("abc")
    res = cli.run("cat", uri, "--start", "2", "--end", "9", check=False)
    assert res.returncode == 1 and "outside" in res.stderr


def test_corrupted_file_through_cli(cli, storage_dir: Path) -> None:
    uri = kn.store_text("keep me safe")
    p = Path(kn.load_file(uri))
    p.chmod(0o644)
    p.write_text("keep me SAFE")
    res = cli.run("cat", uri, check=False)
    assert res.returncode == 1 and "corrupted" in res.stderr and "deleted" in res.stderr


def test_help_documents_every_command(cli) -> None:
    top = cli.run("--help").stdout
    for name in ("init", "info", "store", "link", "load", "cat", "feed", "mutable"):
        assert name in top
        assert "Usage:" in cli.run(name, "--help").stdout
    for sub in ("create", "append", "tail", "info"):
        text = cli.run("feed", sub, "--help").stdout
        assert "Usage:" in text and len(text.splitlines()) > 4


# -- feeds ----------------------------------------------------------------------------------------
def test_feed_commands(cli, storage_dir: Path) -> None:
    created = cli.json("feed", "create")
    feed_uri = created["uri"]
    assert feed_uri == f"feed://{created['feed_id']}"
    sub = feed_uri + "/main"
    assert cli.run("feed", "append", sub, '{"a": 1}', '"two"').stdout.strip() == "1"
    appended = cli.json("feed", "append", sub, input='{"b": 3}\n\n[4]\n')
    assert (appended["first"], appended["last"], appended["count"]) == (2, 3, 2)
    lines = cli.run("feed", "tail", sub).stdout.splitlines()
    assert [json.loads(x) for x in lines] == [{"a": 1}, "two", {"b": 3}, [4]]
    assert [json.loads(x) for x in cli.run("feed", "tail", sub, "-n", "1").stdout.splitlines()] == [[4]]
    recs = [json.loads(x) for x in cli.run("feed", "tail", sub, "--start", "2",
                                           "--records").stdout.splitlines()]
    assert [r["number"] for r in recs] == [2, 3] and recs[0]["payload"] == {"b": 3}
    info = cli.json("feed", "info", sub)
    assert info["num_messages"] == 4 and info["is_writeable"] is True
    finfo = cli.json("feed", "info", feed_uri)
    assert finfo["feed_id"] == created["feed_id"] and len(finfo["subfeeds"]) == 1
    assert "feed://" in cli.run("feed", "info", feed_uri).stdout
    # The same feed through the Python API of the same storage.
    sf = kn.load_subfeed(sub)
    assert sf.get_messages() == [{"a": 1}, "two", {"b": 3}, [4]]
    res = cli.run("feed", "append", sub, "not json", check=False)
    assert res.returncode == 1 and "not JSON" in res.stderr
    res = cli.run("feed", "append", "feed://" + "ab" * 32 + "/x", "1", check=False)
    assert res.returncode == 1 and "Traceback" not in res.stderr


def test_feed_tail_follow(cli, storage_dir: Path) -> None:
    feed = kn.create_feed()
    sf = feed.load_subfeed("live")
    sf.append_message({"n": 0})
    proc = cli.popen("feed", "tail", sf.uri, "--follow", "--timeout", "10")
    try:
        assert json.loads(proc.stdout.readline()) == {"n": 0}
        t0 = time.monotonic()
        sf.append_message({"n": 1})  # from this process, while the CLI follows
        assert json.loads(proc.stdout.readline()) == {"n": 1}
        assert time.monotonic() - t0 < 5
        cli.run("feed", "append", sf.uri, '{"n": 2}')  # from a third process
        assert json.loads(proc.stdout.readline()) == {"n": 2}
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_feed_tail_follow_stops_after_idle_timeout(cli, storage_dir: Path) -> None:
    sf = kn.create_feed().load_subfeed("quiet")
    t0 = time.monotonic()
    res = cli.run("feed", "tail", sf.uri, "--follow", "--timeout", "0.5", timeout=30)
    assert res.stdout == "" and time.monotonic() - t0 < 20


def test_feeds_through_python_api(storage_dir: Path) -> None:
    feed = kn.create_feed()
    assert feed.is_writeable and len(feed.feed_id) == 64
    sf = feed.load_subfeed({"kind": "curation"})
    sf.append_messages([{"action": "merge"}, {"action": "label"}])
    assert kn.load_feed(feed.uri).load_subfeed({"kind": "curation"}).get_num_local_messages() == 2
    assert kn.load_subfeed(sf.uri).get_messages()[1] == {"action": "label"}
    assert (storage_dir / "feeds.db").exists()


def test_mutable_commands(cli, storage_dir: Path) -> None:
    cli.run("mutable", "set", "best", '{"uri": "sha1://x", "score": 0.9}')
    assert json.loads(cli.run("mutable", "get", "best").stdout) == {"uri": "sha1://x", "score": 0.9}
    assert kn.get("best")["score"] == 0.9  # the same store as the Python API
    res = cli.run("mutable", "set", "best", "1", "--keep", check=False)
    assert res.returncode == 1 and "already has a value" in res.stderr
    cli.run("mutable", "set", "--json-key", '{"type": "cfg"}', "[1, 2]")
    assert kn.get({"type": "cfg"}) == [1, 2]
    cli.run("mutable", "delete", "best")
    res = cli.run("mutable", "get", "best", check=False)
    assert res.returncode == 1 and "no mutable" in res.stderr
    assert cli.run("mutable", "delete", "best", check=False).returncode == 1
    assert cli.run("mutable", "set", "k", "not json", check=False).returncode == 1


def test_local_feed_names_and_subfeed_names(cli, storage_dir: Path) -> None:
    """`feed info readings` took a local name but `feed tail readings/temps` said "not a feed
    URI"; and `feed info` listed subfeeds by hash, not by the names the owner gave them."""
    cli.run("init", "--label", "n")
    cli.run("feed", "create", "--name", "readings")
    assert cli.run("feed", "append", "readings/temps", "20.5", "21").stdout.strip() == "1"
    cli.run("feed", "append", "readings/humidity", '{"rh": 40}')
    assert cli.run("feed", "tail", "readings/temps").stdout.split() == ["20.5", "21"]
    assert cli.json("feed", "info", "readings/temps")["num_messages"] == 2
    info = cli.json("feed", "info", "readings")
    assert [(s["name"], s["num_messages"]) for s in info["subfeeds"]] == [("temps", 2), ("humidity", 1)]
    text = cli.run("feed", "info", "readings").stdout
    assert '"temps": 2 messages' in text and "~" not in text
    res = cli.run("feed", "tail", "readings", check=False)
    assert res.returncode == 1 and "names no subfeed" in res.stderr
    res = cli.run("feed", "tail", "nosuchfeed/x", check=False)
    assert res.returncode == 1 and "no feed named 'nosuchfeed'" in res.stderr


def test_group_help_is_not_cut(cli) -> None:
    """Click cut each command's first sentence at the terminal width with "..."."""
    env = {**cli.env, "COLUMNS": "80"}
    for group in ([], ["feed"], ["node"], ["channel"], ["hub"], ["task"], ["mutable"]):
        out = subprocess.run([KACHERY, *group, "--help"], env=env, capture_output=True, text=True,
                             timeout=60).stdout
        commands = out.split("Commands:", 1)[1]
        assert not any(line.rstrip().endswith(("...", "…")) for line in commands.splitlines()), out


def test_viewer_without_a_daemon_is_an_error_not_a_dead_link(cli, storage_dir: Path) -> None:
    cli.run("init", "--label", "n")
    env = {**cli.env, "KACHERY_DAEMON_PORT": str(free_port())}
    res = subprocess.run([KACHERY, "node", "viewer", "feed://" + "ab" * 32 + "/x"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "#token=" not in res.stdout, res.stdout
    assert "kachery node start" in res.stderr


def test_lazy_names_are_offered_for_completion() -> None:
    names = dir(kn)
    for name in ("request_task", "taskfunction", "run_task_backend", "report_progress", "submit_message"):
        assert name in names


def test_an_unreachable_hub_says_what_to_check(cli, storage_dir: Path) -> None:
    cli.run("init", "--label", "n")
    res = cli.run("channel", "list", "--hub", f"http://127.0.0.1:{free_port()}", check=False)
    assert res.returncode == 1 and "cannot reach the hub" in res.stderr, res.stderr
    assert "HTTP 0" not in res.stderr and "KACHERY_HUB_URL" in res.stderr

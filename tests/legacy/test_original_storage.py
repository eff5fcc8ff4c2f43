"""A storage directory of the original kachery, made by kachery-client 1.2.0's own code
(make_original_storage.py), opened by this node: nothing crashes, nothing of it changes behind
the user's back, and what it holds keeps working (issue 17, spec/legacy.md §2)."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from kachery_node.legacy.original_messages import signature_scheme
from tests.legacy.conftest import HERE, run_original

KACHERY = str(Path(sys.executable).parent / "kachery")


@pytest.fixture
def original(original_python, tmp_path) -> dict:
    """An original storage directory and what is in it."""
    storage = tmp_path / "storage"
    made = run_original(original_python, HERE / "make_original_storage.py", str(storage),
                        str(tmp_path / "work"))
    made["storage"] = storage
    made["env"] = {**os.environ, "KACHERY_STORAGE_DIR": str(storage),
                   "KACHERY_USER_DIR": str(tmp_path / "user"), "KACHERY_DAEMON_PORT": "1"}
    return made


def _snapshot(storage: Path) -> dict[str, tuple[str, int]]:
    """Every file the original left: (SHA-1 of its bytes, mode)."""
    out = {}
    for dirpath, _dirs, names in os.walk(storage):
        for name in names:
            p = Path(dirpath) / name
            out[str(p.relative_to(storage))] = (hashlib.sha1(p.read_bytes()).hexdigest(),
                                                p.stat().st_mode)
    return out


def _kachery(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([KACHERY, *args], env=env, capture_output=True, text=True, timeout=120)


def _python(env: dict, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)


def _journal_mode(path: Path) -> str:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        conn.close()


def test_original_storage_opens_without_change(original) -> None:
    storage, env = original["storage"], original["env"]
    before = _snapshot(storage)

    init = _kachery(env, "init", "--json")
    assert init.returncode == 0, init.stderr
    report = json.loads(init.stdout)
    # The node keeps its identity: node.key is the seed of the original's private.pem.
    assert report["node_id"] == original["node_id"]
    notes = " | ".join(report["original_kachery"])
    assert "private.pem" in notes and "feeds.db: the original's (2 feeds, 3 subfeeds, 10 messages)" in notes
    assert "mutables.db: 4 values, used as they are" in notes
    assert "max_cache_size_gib = 50" in " ".join(report["created"])  # from kachery.yaml

    code = f"""
import json, kachery_node as kn, kachery_feeds as kf
d = json.loads({json.dumps(json.dumps({k: v for k, v in original.items() if k not in ("storage", "env")}))})
out = {{}}
out["small"] = kn.load_text(d["small"]["uri"])
big = open(d["big"]["path"], "rb").read()
out["range_ok"] = kn.load_bytes(d["big"]["uri"], 19_999_990, 20_000_010) == big[19_999_990:20_000_010]
out["tail_ok"] = kn.load_bytes(d["big"]["uri"], 40_000_000) == big[40_000_000:]
read = lambda p: open(p, "rb").read()
out["linked_client"] = read(kn.load_file(d["linked_client"]["uri"])) == read(d["linked_client"]["path"])
out["linked_daemon"] = kn.load_file(d["linked_daemon"]["uri"]) == d["linked_daemon"]["path"]
try:
    kn.load_file(d["linked_changed"]["uri"])
    out["changed"] = "served"
except kn.LinkedFileChangedError as e:
    out["changed"] = str(e)
out["best_run"] = kn.get("best-run")
kn.set("set-by-kachery-node", {{"x": 1}})
out["new"] = kn.get("set-by-kachery-node")
attempts = {{"create_feed": kn.create_feed, "get_feed_id": lambda: kn.get_feed_id("lab-notes"),
            "load_subfeed": lambda: kn.load_subfeed("feed://" + "a" * 64 + "/x")}}
for attempt, call in attempts.items():
    try:
        call()
        out[attempt] = "worked"
    except kn.OriginalFeedsDatabaseError as e:
        out[attempt] = str(e)
print(json.dumps(out))
"""
    r = _python(env, code)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["small"] == original["small"]["bytes"]
    assert out["range_ok"] and out["tail_ok"]  # a range across chunks, through the manifest
    assert out["linked_client"] and out["linked_daemon"]  # both .link forms are followed
    assert "changed after it was linked" in out["changed"]  # never served under the old hash
    assert out["best_run"] == original["mutables"]["best-run"]
    assert out["new"] == {"x": 1}
    for attempt in ("create_feed", "get_feed_id", "load_subfeed"):
        assert "the original kachery's feed database" in out[attempt]
        assert "kachery feed import-legacy" in out[attempt]

    # The command line says the same in one line, with exit status 1 (no traceback).
    feed = _kachery(env, "feed", "create")
    assert feed.returncode == 1 and "Traceback" not in feed.stderr
    assert feed.stderr.startswith("Error: ") and len(feed.stderr.strip().splitlines()) == 1
    assert "import-legacy" in feed.stderr

    # Nothing the original left changed, except the one mutable the user set: mutables.db is
    # used as it is, in its own table and journal mode; feeds.db is not touched at all.
    after = _snapshot(storage)
    changed = {p for p in before if after.get(p) != before[p]}
    assert changed == {"mutables.db"}
    assert _journal_mode(storage / "feeds.db") == "delete"
    assert _journal_mode(storage / "mutables.db") == "delete"
    assert not (storage / "feeds.db-wal").exists() and not (storage / "mutables.db-wal").exists()
    with sqlite3.connect(f"file:{storage / 'mutables.db'}?mode=ro", uri=True) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(mutables)")]
        key_text = '"set-by-kachery-node"'
        row = conn.execute("SELECT key, value FROM mutables WHERE sha1 = ?",
                           (hashlib.sha1(key_text.encode()).hexdigest(),)).fetchone()
    assert columns == ["sha1", "key", "value"]
    assert row == (key_text, '{"x":1}')  # found by the original daemon's own lookup


def test_daemon_on_original_feeds_db_says_what_to_do(original) -> None:
    env = original["env"]
    assert _kachery(env, "init").returncode == 0
    env = {**env, "KACHERY_DAEMON_PORT": str(_free_port())}
    start = _kachery(env, "node", "start")
    assert start.returncode == 1, start.stdout
    assert "import-legacy" in start.stderr and "Traceback" not in start.stderr


def test_private_pem_readable_by_others_is_refused(original) -> None:
    storage, env = original["storage"], original["env"]
    os.chmod(storage / "private.pem", 0o644)
    r = _kachery(env, "init")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "chmod 600" in r.stderr and not (storage / "node.key").exists()


def test_malformed_private_pem_is_refused(original) -> None:
    storage, env = original["storage"], original["env"]
    (storage / "private.pem").write_text(
        "-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    r = _kachery(env, "init")
    assert r.returncode == 1 and "not an Ed25519 private key" in r.stderr
    assert not (storage / "node.key").exists()


def _free_port() -> int:
    from tests.nodes import free_port

    return free_port()


def test_import_legacy_feeds(original, original_python) -> None:
    storage, env = original["storage"], original["env"]
    assert _kachery(env, "init").returncode == 0
    feeds_db_sha1 = hashlib.sha1((storage / "feeds.db").read_bytes()).hexdigest()

    r = _kachery(env, "feed", "import-legacy", "--json")
    assert r.returncode == 0, r.stderr
    imported = {f["original_feed_id"]: f for f in json.loads(r.stdout)["feeds"]}
    owned, remote = original["feeds"]["owned"], original["feeds"]["remote"]
    assert set(imported) == {owned["feed_id"], remote["feed_id"]}
    assert imported[owned["feed_id"]]["name"] == "lab-notes" and imported[owned["feed_id"]]["owned_here"]
    assert not imported[remote["feed_id"]]["owned_here"]
    # The original file is kept, byte for byte, beside the new store.
    assert hashlib.sha1((storage / "feeds.original.db").read_bytes()).hexdigest() == feeds_db_sha1

    code = f"""
import json, kachery_node as kn
d = json.loads({json.dumps(json.dumps(original["feeds"]))})
out = {{"by_name": kn.get_feed_id("lab-notes")}}
feed = kn.load_feed("lab-notes")
for key, info in d["owned"]["subfeeds"].items():
    name = info.get("name", key)
    out[key] = [[r.payload, r.metadata] for r in feed.load_subfeed(name).get_records()]
remote = kn.load_feed({json.dumps(imported[remote["feed_id"]]["feed_id"])})
out["schemes"] = [r.metadata["original"]["scheme"] for r in remote.load_subfeed("log").get_records(1)]
print(json.dumps(out))
"""
    r = _python(env, code)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    new_owned = imported[owned["feed_id"]]["feed_id"]
    assert out["by_name"] == new_owned  # the original's local name carried over
    for key, info in owned["subfeeds"].items():
        records = out[key]
        origin = records[0][0]["imported_from"]
        assert origin["feed_id"] == owned["feed_id"] and origin["subfeed_hash"] == info["hash"]
        assert origin["message_count"] == len(info["messages"]) == len(records) - 1
        assert [p for p, _meta in records[1:]] == info["messages"]
        for _payload, meta in records[1:]:  # the original's signatures stay checkable
            body = json.loads(meta["original"]["body"])
            assert signature_scheme(owned["feed_id"], body, meta["original"]["signature"]) == "sha1"
        assert origin["last_signature"] == records[-1][1]["original"]["signature"]

    # kachery-p2p's legacy signature form (no SHA-1, message 1 here) is accepted and said so.
    assert [s["messages"] for s in imported[remote["feed_id"]]["subfeeds"]] == [3]
    assert out["schemes"] == ["sha1", "legacy", "sha1"]

    # Again: nothing new; and the node's feeds work now, daemon included.
    again = _kachery(env, "feed", "import-legacy")
    assert again.returncode == 0 and again.stdout.count("already imported") == 2
    assert _kachery(env, "feed", "create").returncode == 0
    env = {**env, "KACHERY_DAEMON_PORT": str(_free_port())}
    try:
        start = _kachery(env, "node", "start")
        assert start.returncode == 0, start.stderr
        # An unchanged kachery-client script on the kept directory finds the feed by the name it
        # gave, now the imported one (its mutable still holds the original ID, untouched), and
        # reads the original's messages after the one that says where they came from.
        script = storage.parent / "by_name.py"
        script.write_text(
            "import json, kachery_client as kc\n"
            "feed = kc.load_feed('lab-notes')\n"
            "print(json.dumps([kc.get_feed_id('lab-notes'), feed.load_subfeed('primes')"
            ".get_next_messages(wait_msec=0)]))\n")
        feed_id, primes = run_original(original_python, script, env=env)
        assert feed_id == new_owned
        assert primes[0]["imported_from"]["feed_id"] == owned["feed_id"]
        assert primes[1:] == owned["subfeeds"]["primes"]["messages"]
    finally:
        _kachery(env, "node", "stop")
    with sqlite3.connect(f"file:{storage / 'mutables.db'}?mode=ro", uri=True) as conn:
        (value,) = conn.execute("SELECT value FROM mutables WHERE key = ?", (
            '{"feed_name":"lab-notes","type":"feed_id_for_name"}',)).fetchone()
    assert json.loads(value) == owned["feed_id"]


def test_import_legacy_refuses_a_forged_message(original) -> None:
    storage, env = original["storage"], original["env"]
    assert _kachery(env, "init").returncode == 0
    owned = original["feeds"]["owned"]
    conn = sqlite3.connect(storage / "feeds.db")
    text = conn.execute("SELECT message FROM subfeedMessages WHERE feedId=? AND position=2",
                        (owned["feed_id"],)).fetchone()[0]
    conn.execute("UPDATE subfeedMessages SET message=? WHERE feedId=? AND message=?",
                 (text.replace('"p":5', '"p":6'), owned["feed_id"], text))
    conn.commit()
    conn.close()
    before = hashlib.sha1((storage / "feeds.db").read_bytes()).hexdigest()
    r = _kachery(env, "feed", "import-legacy")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "message 2: its signature does not verify" in r.stderr and "nothing was imported" in r.stderr
    assert hashlib.sha1((storage / "feeds.db").read_bytes()).hexdigest() == before
    assert not (storage / "feeds.original.db").exists()

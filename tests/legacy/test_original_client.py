"""kachery-client 1.2.0, unmodified and from PyPI, against this node's daemon (issue 17,
spec/legacy.md §3): files, mutables and feeds through the original daemon's local API."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import kachery_feeds as kf
from tests.legacy.conftest import HERE, run_original
from tests.nodes import TestNode


def test_original_client_script_runs_against_our_daemon(original_python, tmp_path) -> None:
    node = TestNode(tmp_path, "a")
    node.start()
    out = run_original(original_python, HERE / "original_client_script.py", str(tmp_path),
                       env=node.env, timeout=240)

    assert out["node_id"] == node.node_id
    # The client waited in one long poll until the message came, and got only the news.
    assert out["watch"] == {"events": [{"event": "late"}]}
    assert 0.3 < out["watch_seconds"] < 8
    # signed=True: this format's signed messages (the batch's last carries the signature).
    assert [m["body"]["payload"] for m in out["signed"]] == [{"p": 2}, {"p": 3}, {"p": 5}]
    assert out["signed"][0]["signature"] and out["signed"][2]["signature"]

    # Everything the client did is this node's data, seen through our own API.
    code = f"""
import json, numpy as np, kachery_node as kn
d = json.loads({json.dumps(json.dumps(out))})
print(json.dumps({{
    "json_uri": kn.store_json({{"name": "Zoë", "values": [1, 2.5, None], "nested": {{"ok": True}}}}),
    "text_uri": kn.store_text("Hello, world!"),
    "npy_sum": float(kn.load_npy(d["npy_uri"]).sum()),
    "primes": kn.load_subfeed(d["primes_uri"]).get_messages(),
    "events": kn.load_subfeed(d["events_uri"]).get_messages(),
    "feed_id": kn.get_feed_id("lab-notes"),
    "best": kn.get("run/best"),
    "dict_key": kn.get({{"type": "dict-key", "n": 1}}),
    "big": len(kn.load_bytes(d["big_uri"], 0, 21_000_000)),
    "linked": kn.load_file(d["link_uri"]),
}}))
"""
    r = subprocess.run([sys.executable, "-c", code], env=node.env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    ours = json.loads(r.stdout.strip().splitlines()[-1])
    # store_json writes the original's bytes: the same value has the same URI (non-ASCII too).
    assert ours["json_uri"] == out["json_uri"]
    assert ours["text_uri"] == out["text_uri"] == "sha1://943a702d06f34599aee1f8da8ef9f7296031d699/file.txt"
    assert ours["npy_sum"] == sum(range(24))
    assert ours["primes"] == [{"p": 2}, {"p": 3}, {"p": 5}]
    assert ours["events"] == [{"event": "late"}]
    assert ours["feed_id"] == out["feed_id"]  # a name given with kachery-client resolves here
    assert ours["best"] == {"score": 0.9} and ours["dict_key"] == ["a", "b"]
    assert ours["big"] == 21_000_000
    assert ours["linked"] == str(tmp_path / "linked.dat")
    # The subfeed the client named by hash is the one our name "primes" hashes to.
    store = kf.open_store(node.storage_dir / "feeds.db")
    try:
        assert store.load_subfeed(out["primes_uri"]).subfeed_hash == kf.subfeed_hash("primes")
        assert out["deleted_feed"] not in {f["feed_id"] for f in store.list_feeds()}
    finally:
        store.close()
    assert "Traceback" not in node.log() and " ERROR " not in node.log()


def test_original_client_without_the_code_is_refused(original_python, tmp_path) -> None:
    """The original's credential file is the key: a wrong code gets the original's 403."""
    node = TestNode(tmp_path, "a")
    node.start()
    (node.storage_dir / "client-auth").write_text("wrong-code")
    script = tmp_path / "set.py"
    script.write_text("import kachery_client as kc\nprint(kc.set('k', 1))\nkc.get('k')\n")
    env = {k: v for k, v in node.env.items() if not k.startswith("PYTHON")}
    r = subprocess.run([str(original_python), str(script)], env=env, capture_output=True,
                       text=True, timeout=60)
    # The original client turns a refusal into False (set) or an exception (get).
    assert r.returncode != 0 and r.stdout.strip() == "False"
    assert "Unable to get value for key" in r.stderr
    assert "403 Incorrect or invalid client authorization code" in node.log()
    assert os.stat(node.storage_dir / "client-auth").st_mode & 0o077 == 0


def test_original_client_loads_from_a_channel(original_python, tmp_path) -> None:
    """``load_file(uri, channel=...)`` and ``load_subfeed(uri, channel=...)`` of the original
    client reach the channel through this daemon: a file another node uploaded with
    ``kn.upload_json`` (then went offline), and a subfeed another node owns, followed live."""
    from tests.hub.conftest import HubProcess
    from tests.network.conftest import ALL_ROLES, Lab

    hub = HubProcess(tmp_path / "hub")
    lab = Lab(tmp_path, hub)
    try:
        alice = lab.add_node("alice", ALL_ROLES)
        bob = lab.add_node("bob", ["request-files", "request-feeds"])
        made = subprocess.run([sys.executable, "-c", """
import kachery_node as kn
print(kn.upload_json({"from": "alice", "name": "Zoë"}, channel="lab"))
with open("big.dat", "wb") as f:
    f.write(bytes(range(256)) * 82_032)  # 21,000,192 bytes: two chunks, a manifest
print(kn.upload_file("big.dat", channel="lab"))
sf = kn.create_feed().load_subfeed("notes")
sf.append_messages([{"n": 0}, {"n": 1}])
print(sf.uri)
"""], env=alice.env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert made.returncode == 0, made.stderr + alice.log()[-2000:]
        json_uri, big_uri, notes_uri = made.stdout.split()
        follow = tmp_path / "bob_follows.py"
        follow.write_text(f"""
import json, kachery_client as kc
sf = kc.load_subfeed({notes_uri!r}, channel="lab")
got = []
for _ in range(100):
    got += sf.get_next_messages(wait_msec=2000)
    if len(got) >= 2:
        break
print(json.dumps(got))
""")
        assert run_original(original_python, follow, env=bob.env, timeout=180) == [{"n": 0}, {"n": 1}]
        alice.stop()  # the uploaded file now comes from the channel's bucket alone
        load = tmp_path / "bob_loads.py"
        load.write_text(f"import json, kachery_client as kc\n"
                        f"data = kc.load_bytes({big_uri!r}, 19_999_990, 20_000_010, channel='lab')\n"
                        f"print(json.dumps([kc.load_json({json_uri!r}, channel='lab'), list(data)]))\n")
        loaded, data = run_original(original_python, load, env=bob.env, timeout=180)
        assert loaded == {"from": "alice", "name": "Zoë"}
        # A range across chunks: the client asks for each chunk (chunkOf) and reads it as a file.
        assert bytes(data) == (bytes(range(256)) * 82_032)[19_999_990:20_000_010]
    finally:
        try:
            lab.stop()
        finally:
            hub.stop()


def test_a_name_given_here_is_found_by_the_original_client(original_python, tmp_path) -> None:
    """Both kinds of local feed name lead to one feed, whichever side asks: kachery-client's
    get_feed_id reads a mutable, this node names feeds in its store (legacy/feed_names.py)."""
    node = TestNode(tmp_path, "a")
    node.start()
    made = subprocess.run([sys.executable, "-c", """
import kachery_node as kn
feed = kn.create_feed("made-here")
feed.load_subfeed("s").append_message({"from": "kachery_node"})
print(feed.feed_id)
"""], env=node.env, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    script = tmp_path / "by_name.py"
    script.write_text(
        "import json, kachery_client as kc\n"
        "feed_id = kc.get_feed_id('made-here')\n"
        "messages = kc.load_feed('made-here').load_subfeed('s').get_next_messages(wait_msec=0)\n"
        "replaced = kc.create_feed('made-here').feed_id\n"  # the original's re-create: a new feed
        "print(json.dumps([feed_id, messages, replaced, kc.get_feed_id('made-here')]))\n")
    feed_id, messages, replaced, after = run_original(original_python, script, env=node.env)
    assert feed_id == made.stdout.strip() and messages == [{"from": "kachery_node"}]
    assert replaced != feed_id and after == replaced
    ask = "import kachery_node as kn; print(kn.get_feed_id('made-here'))"
    ours = subprocess.run([sys.executable, "-c", ask], env=node.env, capture_output=True, text=True,
                          timeout=60)
    assert ours.stdout.strip() == replaced, ours.stderr  # and this node agrees

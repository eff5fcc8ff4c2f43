"""README's "Keys: backup, restore, rotation" section runs as written (spec/feeds.md §8-9).

Its first block runs on the machine that owns the feed, the others on a new machine with its
daemon running and its channel joined (the README says so); each block is run by bash with the
node's environment, in one directory standing for the files carried between the machines."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import kachery_feeds as kf
from kachery_node.protocol.bucket_layout import subfeed_head_path
from kachery_node.protocol.feed_bucket import parse_head
from tests.network.conftest import ALL_ROLES

ROOT = Path(__file__).parents[2]
SECTION = "## Keys: backup, restore, rotation"


def _section_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    start = readme.index(SECTION)
    end = readme.index("\n## ", start + len(SECTION))
    return re.findall(r"```bash\n(.*?)```", readme[start:end], flags=re.S)


def _run_block(node, block: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**node.env, "PATH": f"{Path(sys.executable).parent}:{node.env.get('PATH', '')}"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, (f"[{node.label}] README block failed:\n{block}\n"
                                    f"{result.stdout}\n{result.stderr}")
    return result


def test_the_readme_keys_section_runs_as_written(lab, tmp_path):
    backup_block, restore_block, rotation_block = _section_blocks()
    old = lab.add_node("old", ALL_ROLES)
    follower = lab.add_node("follower", ["request-feeds"])  # makes the owner publish the subfeed
    _run_block(old, backup_block, tmp_path)
    assert (tmp_path / "notes.key").stat().st_mode & 0o777 == 0o600
    # The old machine writes on after the backup; the channel's bucket holds it.
    old.run("feed", "append", "notes/log", '"after the backup"')
    store_old = kf.open_store(old.storage_dir / "feeds.db")
    log_old = store_old.load_feed("notes").load_subfeed("log")
    follower.client.request("POST", "/api/feeds/follow", json_body={"uri": log_old.uri})
    head = lab.bucket_object(subfeed_head_path(lab.channel, log_old.feed_id, log_old.subfeed_hash))
    deadline = time.monotonic() + 30
    while not (head.exists() and parse_head(head.read_bytes()).count == 2):
        assert time.monotonic() < deadline, "the bucket never held the subfeed's 2 messages"
        time.sleep(0.1)

    new = lab.add_node("new", ALL_ROLES)
    _run_block(new, restore_block, tmp_path)  # catches up first: no fork
    store_new = kf.open_store(new.storage_dir / "feeds.db")
    log_new = store_new.load_subfeed(log_old.uri)
    assert log_new.get_messages() == ["first", "after the backup", "from the new machine"]

    out = _run_block(new, rotation_block, tmp_path).stdout
    assert "key_successions: 3" in out
    assert log_new.get_messages()[3:] == ["after the recovery"]
    chain = store_new.key_succession(log_old.feed_id)
    assert len(chain) == 3
    info = json.loads(new.run("feed", "info", "notes", "--json").stdout)
    assert info["current_key"] != log_old.feed_id and info["key_successions"] == 3
    # The old machine's key (and notes.key, notes-2.key) was replaced: once it learns the
    # succession, it cannot append.
    assert log_old.add_signed_messages(log_new.get_signed_messages(2)) == 2
    refused = old.run("feed", "append", "notes/log", '"old key"', check=False)
    assert refused.returncode != 0 and "replaced by a key succession" in refused.stderr, refused.stderr

"""The hub commands as a person runs them: `kachery hub|channel|node join|leave` in real processes.

The README section "Start a hub and create a channel" is run here command by command.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import kachery_feeds as kf
from kachery_node.protocol.membership import Membership

from .conftest import KACHERY, HubProcess

ROOT = Path(__file__).parents[2]


def readme_section() -> str:
    """README.md's section "Start a hub and create a channel"."""
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"## Start a hub and create a channel\n(.*?)(?=\n## |\Z)", readme, re.S)
    assert m, "README.md lost its section 'Start a hub and create a channel'"
    return m.group(1)


class Person:
    def __init__(self, root: Path, name: str, hub_url: str) -> None:
        self.env = {**os.environ, "KACHERY_STORAGE_DIR": str(root / name / "storage"),
                    "KACHERY_USER_DIR": str(root / name / "user"), "KACHERY_HUB_URL": hub_url}
        self.storage = root / name / "storage"
        self.run("init", "--label", name)
        self.node_id = json.loads(self.run("info", "--json").stdout)["node_id"]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run([KACHERY, *args], env=self.env, capture_output=True, text=True, timeout=60)
        if check and p.returncode != 0:
            raise AssertionError(f"kachery {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}")
        return p

    def shell(self, line: str, **subst: str) -> subprocess.CompletedProcess:
        for k, v in subst.items():
            line = line.replace(k, v)
        args = line.split()
        assert args[0] == "kachery", line
        return self.run(*args[1:])


def test_readme_section_commands(tmp_path):
    text = readme_section()
    commands = [ln.strip() for block in re.findall(r"```bash\n(.*?)```", text, re.S)
                for ln in block.splitlines() if ln.strip().startswith("kachery ")]
    serve = [c for c in commands if c.startswith("kachery hub serve")]
    assert serve, "the section starts a hub"
    hub = HubProcess(tmp_path / "kachery-hub")  # same command, on a free port
    try:
        owner = Person(tmp_path, "owner", hub.url)
        # in the README one person is both the channel owner and the node owner
        outputs = {}
        for cmd in commands:
            if cmd in serve:
                continue
            outputs[cmd] = owner.shell(cmd, NODE_ID=owner.node_id).stdout
        login = next(v for k, v in outputs.items() if k.startswith("kachery hub login"))
        assert re.search(rf"{re.escape(hub.url)}/login/\S+", login)
        show = next(v for k, v in outputs.items() if k.startswith("kachery channel show"))
        assert "effective: request-files provide-files" in show
    finally:
        hub.stop()


def test_join_verify_grant_revoke_leave(tmp_path, hub):
    owner = Person(tmp_path, "owner", hub.url)
    member = Person(tmp_path, "member", hub.url)
    mallory = Person(tmp_path, "mallory", hub.url)
    owner.run("channel", "create", "cli.test")
    out = json.loads(member.run("node", "join", "cli.test", "--roles", "request-files provide-feeds",
                                "--json").stdout)
    assert out["requested"] == ["request-files", "provide-feeds"] and out["effective"] == []
    entry = json.loads((member.storage / "channels.json").read_text())["channels"]["cli.test"]
    assert entry["hub_id"] == hub.hub_id and entry["roles"] == ["request-files", "provide-feeds"]
    r = json.loads(owner.run("channel", "grant", "cli.test", member.node_id, "request-files",
                             "provide-files", "--json").stdout)
    assert r["effective"] == ["request-files"]
    # the node's own feed store now verifies the signed membership it fetches
    out = json.loads(member.run("node", "join", "cli.test", "--roles", "request-files", "--json").stdout)
    assert out["effective"] == ["request-files"] and out["granted"] == ["request-files", "provide-files"]
    store = kf.open_store(member.storage / "feeds.db")
    m = Membership.from_subfeed(store.load_subfeed(f"feed://{entry['feed_id']}/membership"), "cli.test")
    assert m.may(member.node_id, "request-files") and not m.may(member.node_id, "provide-files")

    listed = json.loads(member.run("channel", "list", "--json").stdout)
    assert [c["channel"] for c in listed] == ["cli.test"] and listed[0]["is_owner"] is False
    # a non-owner cannot grant: clear message, exit status 1, nothing changes
    p = mallory.run("channel", "grant", "cli.test", mallory.node_id, "provide-files", check=False)
    assert p.returncode == 1 and "only the owner" in p.stderr
    p = member.run("channel", "grant", "cli.test", member.node_id, "provide-files", check=False)
    assert p.returncode == 1
    p = owner.run("channel", "grant", "cli.test", member.node_id, "be-admin", check=False)
    assert p.returncode == 2 and "be-admin" in p.stderr
    p = member.run("node", "join", "cli.test", "--roles", "fly", check=False)
    assert p.returncode == 2
    p = member.run("node", "join", "no.such", "--roles", "request-files", check=False)
    assert p.returncode == 1 and "no channel named" in p.stderr
    show = json.loads(owner.run("channel", "show", "cli.test", "--json").stdout)
    assert show["members"][0]["granted"] == ["request-files", "provide-files"]

    r = json.loads(owner.run("channel", "revoke", "cli.test", member.node_id, "request-files",
                             "--json").stdout)
    assert r["effective"] == []
    env_hub = member.env.pop("KACHERY_HUB_URL")  # leave finds the hub in channels.json
    member.run("node", "leave", "cli.test")
    member.env["KACHERY_HUB_URL"] = env_hub
    p = member.run("node", "leave", "cli.test", check=False)
    assert p.returncode == 0  # leaving again is harmless (the hub URL comes from the environment)
    assert "cli.test" not in json.loads((member.storage / "channels.json").read_text())["channels"]
    show = json.loads(owner.run("channel", "show", "cli.test", "--json").stdout)
    assert show["members"][0]["requested"] == []
    owner.run("channel", "delete", "cli.test", "--yes")
    assert json.loads(owner.run("channel", "list", "--json").stdout) == []
    p = owner.run("channel", "show", "cli.test", check=False)
    assert p.returncode == 1 and "no channel named" in p.stderr


def test_onboarding_by_label_prefix_and_added_roles(tmp_path, hub):
    """`channel grant` needed the full 64-hex ID; `node join --roles` could only replace roles."""
    owner = Person(tmp_path, "owner", hub.url)
    a = Person(tmp_path, "lab-ws", hub.url)
    b = Person(tmp_path, "laptop", hub.url)
    owner.run("channel", "create", "onb.test")
    a.run("node", "join", "onb.test", "--roles", "request-files")
    b.run("node", "join", "onb.test", "--roles", "request-files")
    r = json.loads(owner.run("channel", "grant", "onb.test", "lab-ws", "request-files", "--json").stdout)
    assert r["effective"] == ["request-files"]
    r = json.loads(owner.run("channel", "grant", "onb.test", b.node_id[:10], "request-files",
                             "--json").stdout)
    assert r["effective"] == ["request-files"]
    shared = next(a.node_id[:i] for i in range(64) if a.node_id[i] != b.node_id[i])
    p = owner.run("channel", "grant", "onb.test", "nobody", "request-files", check=False)
    assert p.returncode == 1 and "lab-ws" in p.stderr and "laptop" in p.stderr and "full 64-hex" in p.stderr
    if len(shared) >= 4:  # rare: the two IDs share a 4-character start
        p = owner.run("channel", "grant", "onb.test", shared, "request-files", check=False)
        assert p.returncode == 1 and "several nodes" in p.stderr
    out = json.loads(a.run("node", "join", "onb.test", "--add-roles", "provide-files", "--json").stdout)
    assert out["requested"] == ["request-files", "provide-files"]
    out = json.loads(a.run("node", "join", "onb.test", "--add-roles", "request-feeds", "--json").stdout)
    assert out["requested"] == ["request-files", "provide-files", "request-feeds"]
    p = a.run("node", "join", "onb.test", check=False)
    assert p.returncode == 2 and "--add-roles" in p.stderr
    env_hub = a.env.pop("KACHERY_HUB_URL")
    p = a.run("channel", "list", check=False)
    a.env["KACHERY_HUB_URL"] = env_hub
    assert p.returncode == 2 and "KACHERY_HUB_URL" in p.stderr
    fresh = {**a.env, "KACHERY_STORAGE_DIR": str(tmp_path / "never-initialized")}
    p = subprocess.run([KACHERY, "node", "start"], env=fresh, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "kachery init" in p.stderr


def test_quota_and_hub_status_commands(tmp_path, hub):
    """Issue 13 item 6: a channel's quota from `channel create --quota` and `channel quota`, its
    figures in `hub status` for its owner only; sizes a person writes, and bad ones refused."""
    owner, other = Person(tmp_path, "owner", hub.url), Person(tmp_path, "other", hub.url)
    owner.run("channel", "create", "quota.test", "--quota", "1.5GiB")
    other.run("node", "join", "quota.test", "--roles", "request-files")
    [ch] = [c for c in json.loads(owner.run("hub", "status", "--json").stdout)["channels"]
            if c["channel"] == "quota.test"]
    assert ch["bucket"]["quota_bytes"] == 1_610_612_736 and ch["bucket"]["bytes"] == 0
    assert [n["label"] for n in ch["nodes"]] == ["other"]
    text = owner.run("hub", "status").stdout
    assert "quota.test\n    disk:  0 B in 0 object(s) of 1.61 GB (channel)" in text, text
    assert "quota.test" not in other.run("hub", "status").stdout

    bad = owner.run("channel", "quota", "quota.test", "lots", check=False)
    assert bad.returncode == 2 and "'lots' is not a size" in bad.stderr
    bad = owner.run("channel", "quota", "quota.test", "none", check=False)
    assert bad.returncode == 2 and "`default` takes the hub's" in bad.stderr
    bad = owner.run("channel", "create", "quota.bad", "--quota", "-3", check=False)
    assert bad.returncode == 2 and "not a size" in bad.stderr
    refused = other.run("channel", "quota", "quota.test", "1TB", check=False)
    assert refused.returncode == 1 and "only the owner" in refused.stderr
    assert "quota 20 GB (channel)" in owner.run("channel", "quota", "quota.test", "20GB").stdout
    assert "quota unlimited (hub default)" in owner.run("channel", "quota", "quota.test", "default").stdout
    assert "quota.bad" not in owner.run("channel", "list").stdout

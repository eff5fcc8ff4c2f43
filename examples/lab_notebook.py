#!/usr/bin/env python3
"""A lab's shared curation log: members submit actions from their own nodes to the lab's feed,
and every member rebuilds the same curation state by replaying it.

Only the feed's owner can append to it; members *submit* signed messages, which the owner's
task backend verifies and appends with attribution (kachery_node/apps/feed_submissions.py).

    # on the lab's node (owns the feed; channel member with provide-tasks):
    python lab_notebook.py owner --channel lab              # prints the log's URI, then serves
    # on each member's node (request-tasks, request-feeds):
    python lab_notebook.py submit URI '{"action": "label", "unit": 7, "label": "noise"}' --channel lab
    python lab_notebook.py replay URI --count 3 --channel lab   # verified state, as JSON
    # everything above on a throwaway local network (a hub and three nodes, in a temp folder):
    python lab_notebook.py demo
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import kachery_node as kn
from kachery_node.apps.feed_submissions import verify_submission
from kachery_node.daemon_client import DaemonClient

FEED_KEY = {"example": "lab_notebook", "what": "curation feed"}  # a local mutable: the lab's feed


def apply(state: dict, action: dict, by: str) -> None:
    """The curation state machine: labels per unit, merged groups, who did what."""
    kind = action.get("action")
    if kind == "label":
        state["labels"][str(action["unit"])] = action["label"]
    elif kind == "unlabel":
        state["labels"].pop(str(action["unit"]), None)
    elif kind == "merge":
        state["merges"].append(sorted(action["units"]))
    state["by"].setdefault(by[:8], 0)
    state["by"][by[:8]] += 1


def owner(channel: str) -> None:
    feed = kn.load_feed(kn.get(FEED_KEY)) if kn.get(FEED_KEY, None) else kn.create_feed()
    kn.set(FEED_KEY, feed.uri)
    log = feed.load_subfeed("curation")
    print(log.uri, flush=True)
    kn.run_task_backend(channels=[channel], functions=[kn.accept_submissions(log, allowed="members")])


def submit(uri: str, action: str, channel: str) -> None:
    print(kn.submit_message(uri, json.loads(action), channel=channel), flush=True)


def replay(uri: str, count: int, channel: str | None, timeout: float) -> dict:
    log = kn.load_subfeed(uri, channel=channel, live=True)  # a member's daemon follows the owner's feed
    state: dict = {"labels": {}, "merges": [], "by": {}}
    seen = 0
    for record in log.follow(start=0, timeout=timeout, records=True):
        sub = verify_submission(record)  # raises if the signature or payload does not check out
        apply(state, record.payload, sub.submitter)
        seen += 1
        if seen >= count:
            break
    if seen < count:
        raise SystemExit(f"only {seen} of {count} messages arrived within {timeout} s")
    return state


# ----------------------------------------------------------------------------- demo
def _kachery(env: dict, *args: str) -> str:
    cmd = [sys.executable, "-c", "from kachery_node.cli import main; main()", *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    if out.returncode:
        raise SystemExit(f"kachery {' '.join(args)} failed: {out.stderr}")
    return out.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo() -> None:
    root = Path(tempfile.mkdtemp(prefix="kachery-lab-notebook-"))
    hub = server = None
    envs: dict[str, dict] = {}
    try:
        hub_dir = root / "hub"
        hub = subprocess.Popen(
            [sys.executable, "-c", "from kachery_node.cli import main; main()", "hub", "serve",
             "--dir", str(hub_dir), "--port", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not (hub_dir / "hub.json").exists():
            if time.monotonic() > deadline:
                raise SystemExit("the hub did not start")
            time.sleep(0.05)
        hub_url = json.loads((hub_dir / "hub.json").read_text())["url"]
        roles = {"lab": "request-tasks,provide-tasks,request-feeds,provide-feeds",
                 "ana": "request-tasks,request-feeds", "ben": "request-tasks,request-feeds"}
        ids = {}
        for name in roles:
            envs[name] = env = {**os.environ, "KACHERY_STORAGE_DIR": str(root / name / "storage"),
                                "KACHERY_USER_DIR": str(root / name / "user"), "KACHERY_HUB_URL": hub_url,
                                "KACHERY_DAEMON_PORT": str(_free_port())}
            _kachery(env, "init", "--label", name)
            ids[name] = json.loads(_kachery(env, "info", "--json"))["node_id"]
        _kachery(envs["lab"], "channel", "create", "lab")
        for name, r in roles.items():
            _kachery(envs[name], "node", "join", "lab", "--roles", r)
            _kachery(envs["lab"], "channel", "grant", "lab", ids[name], *r.split(","))
            _kachery(envs[name], "node", "start")
        for name in roles:  # wait until every daemon is connected to the channel
            client = DaemonClient(envs[name]["KACHERY_STORAGE_DIR"])
            deadline = time.monotonic() + 30
            while not all(c["state"] == "connected" for c in client.status()["channels"] or [{"state": ""}]):
                if time.monotonic() > deadline:
                    raise SystemExit(f"{name}'s daemon did not connect")
                time.sleep(0.05)
        print(f"a hub and three nodes (lab, ana, ben) in {root}", flush=True)

        me = [sys.executable, __file__]
        server = subprocess.Popen([*me, "owner", "--channel", "lab"], env=envs["lab"],
                                  stdout=subprocess.PIPE, text=True)
        uri = server.stdout.readline().strip()
        print(f"the lab's curation log: {uri}", flush=True)
        time.sleep(0.5)  # the owner's backend registers
        actions = [("ana", {"action": "label", "unit": 7, "label": "noise"}),
                   ("ben", {"action": "label", "unit": 3, "label": "good"}),
                   ("ana", {"action": "merge", "units": [3, 12]}),
                   ("ben", {"action": "unlabel", "unit": 7})]
        for name, action in actions:
            number = subprocess.run([*me, "submit", uri, json.dumps(action), "--channel", "lab"],
                                    env=envs[name], capture_output=True, text=True, timeout=60)
            if number.returncode:
                raise SystemExit(f"{name}'s submission failed: {number.stderr}")
            print(f"{name} submitted {json.dumps(action)} -> message #{number.stdout.strip()}", flush=True)
        states = {}
        for name in roles:
            out = subprocess.run([*me, "replay", uri, "--count", str(len(actions)), "--channel", "lab"],
                                 env=envs[name], capture_output=True, text=True, timeout=60)
            if out.returncode:
                raise SystemExit(f"{name}'s replay failed: {out.stderr}")
            states[name] = out.stdout.strip()
            print(f"{name} replayed and verified: {states[name]}", flush=True)
        if len(set(states.values())) != 1:
            raise SystemExit("members disagree about the curation state")
        print("every member rebuilt the same state", flush=True)
    finally:
        _stop(server)  # the owner's backend, then the daemons, then the hub
        for env in envs.values():
            subprocess.run([sys.executable, "-c", "from kachery_node.cli import main; main()", "node",
                            "stop"], env=env, capture_output=True, timeout=30)
        _stop(hub)
        shutil.rmtree(root, ignore_errors=True)


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("owner")
    p.add_argument("--channel", required=True)
    p = sub.add_parser("submit")
    p.add_argument("uri")
    p.add_argument("action", help="a JSON object")
    p.add_argument("--channel", required=True)
    p = sub.add_parser("replay")
    p.add_argument("uri")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--channel")
    p.add_argument("--timeout", type=float, default=30)
    sub.add_parser("demo")
    args = parser.parse_args()
    if args.mode == "owner":
        owner(args.channel)
    elif args.mode == "submit":
        submit(args.uri, args.action, args.channel)
    elif args.mode == "replay":
        print(json.dumps(replay(args.uri, args.count, args.channel, args.timeout), sort_keys=True))
    else:
        demo()


if __name__ == "__main__":
    main()

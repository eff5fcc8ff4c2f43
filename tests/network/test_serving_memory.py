"""Memory stays bounded while a daemon serves a long subfeed to a node that starts from nothing
(issue 15): the owner builds and uploads the bucket's segments a window at a time, and the
reader imports them a few at a time, so neither daemon's peak RSS grows with the subfeed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import kachery_feeds as kf
from tests.network.conftest import ALL_ROLES

#: Messages served. 1M (~0.5 GB of segments) takes 20-40 s on a quiet 2-core machine; set
#: KACHERY_TEST_SERVING_MESSAGES (e.g. 300000) where that is too slow: the bound is the same.
MESSAGES = int(os.environ.get("KACHERY_TEST_SERVING_MESSAGES", "1000000"))
#: Peak RSS allowed to each daemon (a daemon at rest is ~50 MB; holding 1M messages would be ~500 MB).
RSS_CAP_MB = 150


def daemon_peak_rss_mb(storage_dir: Path) -> float:
    """The peak resident set (VmHWM) of the storage's daemon over its whole life."""
    pid = json.loads((storage_dir / "daemon.json").read_text())["pid"]
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_serving_a_long_subfeed_to_a_fresh_node_keeps_both_daemons_under_the_cap(lab):
    owner = lab.add_node("owner", ALL_ROLES, start=False)
    source = kf.open_store(owner.storage_dir / "feeds.db").create_feed().load_subfeed("long")
    for start in range(0, MESSAGES, 1000):  # batch appends: one signature per 1000 messages
        source.append_messages([{"i": i} for i in range(start, start + 1000)])
    owner.start()
    lab.wait_connected(owner)
    reader = lab.add_node("reader", ["request-feeds"])
    replica = kf.open_store(reader.storage_dir / "feeds.db").load_subfeed(source.uri)

    reader.client.request("POST", "/api/feeds/follow", json_body={"uri": source.uri})
    deadline = time.monotonic() + 60 + MESSAGES / 5_000  # 5k/s: a heavily loaded machine
    while replica.get_num_local_messages() < MESSAGES:
        assert time.monotonic() < deadline, (
            f"caught up {replica.get_num_local_messages()} of {MESSAGES}\n{owner.log()[-3000:]}")
        time.sleep(0.2)

    assert replica.get_messages(MESSAGES - 2) == [{"i": MESSAGES - 2}, {"i": MESSAGES - 1}]
    served, caught_up = daemon_peak_rss_mb(owner.storage_dir), daemon_peak_rss_mb(reader.storage_dir)
    assert served < RSS_CAP_MB, f"the serving daemon peaked at {served:.0f} MB"
    assert caught_up < RSS_CAP_MB, f"the catching-up daemon peaked at {caught_up:.0f} MB"

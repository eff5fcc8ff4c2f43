"""``Subfeed.iter_messages``: the same messages as ``get_messages``, a page at a time, with
memory that does not grow with the subfeed (issue 15)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import kachery_feeds as kf
from kachery_feeds.subfeed import PAGE_SIZE


@pytest.fixture
def store(tmp_path):
    s = kf.open_store(tmp_path / "feeds.db")
    yield s
    s.close()


def test_iter_messages_yields_what_get_messages_returns(store):
    sf = store.create_feed().load_subfeed("x")
    n = 2 * PAGE_SIZE + 17
    sf.append_messages([{"i": i} for i in range(n)], metadata={"m": 1})
    assert list(sf.iter_messages()) == sf.get_messages() == [{"i": i} for i in range(n)]
    for start, end in [(0, 0), (5, 6), (PAGE_SIZE - 1, PAGE_SIZE + 1), (999, None), (n, None),
                       (n + 5, None), (10, n + 100)]:
        assert list(sf.iter_messages(start, end)) == sf.get_messages(start, end), (start, end)
    records = list(sf.iter_messages(PAGE_SIZE - 2, PAGE_SIZE + 2, records=True))
    assert records == sf.get_records(PAGE_SIZE - 2, PAGE_SIZE + 2)
    assert [r.number for r in records] == list(range(PAGE_SIZE - 2, PAGE_SIZE + 2))
    assert records[0].metadata == {"m": 1}
    assert list(store.create_feed().load_subfeed("empty").iter_messages()) == []


def test_iter_messages_sees_appends_made_while_it_runs_and_refuses_bad_ranges(store):
    sf = store.create_feed().load_subfeed("x")
    sf.append_messages([{"i": i} for i in range(PAGE_SIZE)])
    got = []
    for payload in sf.iter_messages():
        got.append(payload["i"])
        if len(got) == 1:
            sf.append_message({"i": PAGE_SIZE})  # lands after the first page: still yielded
    assert got == list(range(PAGE_SIZE + 1))
    with pytest.raises(ValueError):
        list(sf.iter_messages(-1))
    with pytest.raises(ValueError):
        list(sf.iter_messages(5, 4))


#: Run in a fresh process: its peak RSS (VmHWM) after iterating, minus the RSS before.
_MEASURE = """
import json, sys
import kachery_feeds as kf

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024

sf = kf.open_store(sys.argv[1]).load_subfeed(sys.argv[2])
base = rss("VmRSS:")
if sys.argv[3] == "iter":
    n = sum(1 for _ in sf.iter_messages())
else:
    n = len(sf.get_messages())
print(json.dumps({"n": n, "growth_mb": rss("VmHWM:") - base}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads VmHWM from /proc")
def test_iter_messages_memory_does_not_grow_with_the_subfeed(tmp_path):
    n = 200_000
    with kf.open_store(tmp_path / "feeds.db") as store:
        sf = store.create_feed().load_subfeed("long")
        for start in range(0, n, 10_000):
            sf.append_messages([{"i": i, "data": "x" * 200} for i in range(start, start + 10_000)])
        uri = sf.uri

    def growth(how: str) -> float:
        out = subprocess.run([sys.executable, "-c", _MEASURE, str(tmp_path / "feeds.db"), uri, how],
                             capture_output=True, text=True, timeout=120, check=True)
        result = json.loads(out.stdout)
        assert result["n"] == n
        return result["growth_mb"]

    streamed, loaded = growth("iter"), growth("list")
    assert streamed < 20, f"iter_messages grew the process by {streamed:.0f} MB"
    assert loaded > 5 * streamed + 50, f"get_messages grew it by {loaded:.0f} MB only: not a real check"

"""follow() with a poller (Subfeed.set_poller): how a reader with no daemon gets new messages
of another node's subfeed that nobody pushes into its store (kachery_node polls the buckets)."""

from __future__ import annotations

import time

import pytest

import kachery_feeds as kf
import kachery_feeds.subfeed as subfeed_module


class CopyFromSource:
    """A poller that imports, verified, what a source store has beyond the replica's end (as
    kachery_node's bucket poller does from a bucket), and records when it was called."""

    def __init__(self, source: kf.Subfeed) -> None:
        self.source = source
        self.calls: list[float] = []

    def __call__(self, replica: kf.Subfeed) -> int:
        self.calls.append(time.monotonic())
        lines = self.source.get_signed_messages(replica.get_num_local_messages())
        return replica.add_signed_messages(lines) if lines else 0


@pytest.fixture
def pair(tmp_path):
    source_store, replica_store = kf.open_store(tmp_path / "a.db"), kf.open_store(tmp_path / "b.db")
    source = source_store.create_feed().load_subfeed("s")
    source.append_message({"n": 0})
    replica = replica_store.load_subfeed(source.uri)
    yield source, replica
    source_store.close()
    replica_store.close()


def test_follow_polls_for_messages_nobody_pushes(pair, monkeypatch):
    monkeypatch.setattr(subfeed_module, "POLL_FIRST_SECONDS", 0.05)
    source, replica = pair
    poller = CopyFromSource(source)
    replica.set_poller(poller)
    got = []
    for msg in replica.follow(timeout=10):
        got.append(msg["n"])
        if len(got) < 4:
            source.append_message({"n": len(got)})  # only the poller brings it to the replica
        else:
            break
    assert got == [0, 1, 2, 3] and replica.get_num_local_messages() == 4


def test_polls_back_off_while_nothing_comes_and_follow_still_times_out(pair, monkeypatch):
    monkeypatch.setattr(subfeed_module, "POLL_FIRST_SECONDS", 0.05)
    monkeypatch.setattr(subfeed_module, "POLL_MAX_SECONDS", 0.4)
    source, replica = pair
    poller = CopyFromSource(source)
    replica.set_poller(poller)
    t0 = time.monotonic()
    assert list(replica.follow(timeout=1.6)) == [{"n": 0}]  # imported by the first poll
    assert 1.6 <= time.monotonic() - t0 < 3
    gaps = [b - a for a, b in zip(poller.calls[1:], poller.calls[2:], strict=False)]
    # Doubling from 0.05 s (0.1, 0.2, 0.4, ...), capped at 0.4 s.
    assert gaps and all(0.08 <= g < 0.6 for g in gaps), gaps
    assert gaps[0] < gaps[-1] and max(gaps) >= 0.35, gaps


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_afollow_polls_in_a_worker_thread(pair, monkeypatch, backend):
    import anyio

    monkeypatch.setattr(subfeed_module, "POLL_FIRST_SECONDS", 0.05)
    source, replica = pair
    replica.set_poller(CopyFromSource(source))

    async def main() -> list[int]:
        got = []
        with anyio.fail_after(10):
            async for msg in replica.afollow(timeout=5):
                got.append(msg["n"])
                if len(got) == 3:
                    return got
                source.append_message({"n": len(got)})
        return got

    assert anyio.run(main, backend=backend) == [0, 1, 2]

"""The hub's revocation queue (kachery_node/hub/revocations.py): durable, retried, bounded.

The queue runs here in-process against a backend whose service answers as the test says; the
Ably tests (tests/cloud/test_ably.py) show the same against the Ably stand-in and a killed hub.
"""

from __future__ import annotations

import pytest
import trio

from kachery_node.hub import revocations
from kachery_node.hub.revocations import CLOCK_MARGIN_MS, RevocationQueue
from kachery_node.hub.state import HubState
from kachery_node.transport.pubsub.pubsub_interface import PubSubBackend

pytestmark = pytest.mark.trio

SPEC = {"backend": "ably", "rest_url": "http://127.0.0.1:9"}
SECRET = {"api_key": "kapp.k:secret"}
NODE = "ab" * 32


class Service(PubSubBackend):
    """A service that is down for the first ``failures`` calls, then revokes."""

    name = "ably"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[tuple[str, int]] = []

    def credentials(self, **kwargs):  # not used by the queue
        raise NotImplementedError

    def revoke_node(self, node_id: str, issued_before_ms: int) -> bool:
        self.calls.append((node_id, issued_before_ms))
        if len(self.calls) <= self.failures:
            raise ConnectionError("service unavailable")
        return True


async def run_until_sent(queue: RevocationQueue) -> None:
    """Run the queue until nothing is pending (at most 10 s), then stop it."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(queue.run)
        with trio.fail_after(10):
            while queue.pending():
                await trio.sleep(0.02)
        queue.close()


def details(state: HubState) -> list[str]:
    return [x["detail"] for x in reversed(state.activity("ch"))]


async def test_failures_are_retried_with_growing_delays_then_sent(tmp_path, monkeypatch):
    monkeypatch.setattr(revocations, "RETRY_MIN_S", 0.1)
    state = HubState(tmp_path)
    service = Service(failures=2)
    queue = RevocationQueue(state, lambda spec, secret: service)
    start = trio.current_time()
    queue.put("ch", SPEC, SECRET, [NODE], token_ttl_ms=3_600_000)
    await run_until_sent(queue)
    elapsed = trio.current_time() - start
    assert len(service.calls) == 3 and len({c for c in service.calls}) == 1  # same decision time
    assert 0.3 <= elapsed < 5, elapsed  # waited 0.1 s, then 0.2 s
    # One line for the outage (not one per retry), one for the outcome.
    assert details(state) == [f"ably could not revoke node {NODE[:12]}…'s credentials yet: service "
                              "unavailable; the hub retries until they expire",
                              f"ably revoked node {NODE[:12]}…'s credentials"]
    state.close()


async def test_pending_revocations_survive_a_restart(tmp_path):
    state = HubState(tmp_path)
    RevocationQueue(state, lambda spec, secret: Service(0)).put("ch", SPEC, SECRET, [NODE, "cd" * 32],
                                                                 token_ttl_ms=3_600_000)
    # As if Ably had been down: the next try was an hour away. A restarted hub tries at once.
    state.db.execute("UPDATE pending_revocations SET attempts = 7, next_ms = next_ms + 3600000")
    state.close()  # the hub stops before sending them

    state = HubState(tmp_path)
    service = Service(failures=0)
    made_with = []
    queue = RevocationQueue(state, lambda spec, secret: made_with.append((spec, secret)) or service)
    assert [r.node for r in queue.pending()] == [NODE, "cd" * 32]
    await run_until_sent(queue)
    assert [c[0] for c in service.calls] == [NODE, "cd" * 32]
    assert made_with == [(SPEC, SECRET)] * 2  # the service as it was when the owner decided
    state.close()


async def test_revocations_of_expired_credentials_are_dropped_unsent(tmp_path):
    state = HubState(tmp_path)
    service = Service(failures=0)
    queue = RevocationQueue(state, lambda spec, secret: service)
    queue.put("ch", SPEC, SECRET, [NODE], token_ttl_ms=-CLOCK_MARGIN_MS - 1)  # expired already
    queue.put("ch", {"backend": "embedded"}, {}, [NODE], token_ttl_ms=3_600_000)  # narrowed in-process
    await run_until_sent(queue)
    assert service.calls == []
    assert details(state) == [f"ably: node {NODE[:12]}…'s credentials from before the revocation "
                              "have expired; nothing left to revoke"]
    state.close()

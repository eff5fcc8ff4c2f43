"""TaskExchange guards, in memory (tests/daemon/memory_link.py): what a provider refuses, what a
requester refuses, and one runner for several providers. End to end: tests/network/test_tasks.py."""

from __future__ import annotations

import types

import anyio
import pytest

from kachery_node.daemon.tasks_exchange import TaskExchange, TaskTimeouts
from kachery_node.identity import Keypair
from kachery_node.protocol.task_messages import (
    NoProviderError,
    TaskArgumentError,
    TaskError,
    encode_result_object,
    sign_result,
    task_hash,
)
from tests.daemon.memory_link import MemoryChannel

PROVIDER = ["request-tasks", "provide-tasks"]
FAST = TaskTimeouts(offer=0.3, silence=2.0, heartbeat=0.5, registration_grace=0.5)
ADD = [{"function_id": "t.add.1", "function_type": "pure-calculation"}]


def _allow_task_uploads(link) -> None:
    async def upload(self, path, data, *, progress=None):
        self.hub.bucket[path] = bytes(data)
        self.hub.uploads.append((self.node_id, path))

    link.upload = types.MethodType(upload, link)


async def _backend(ex: TaskExchange, name: str, runs: list, *, result=None, count: int = 100) -> None:
    """A backend that adds a and b (or returns ``result``) for every task it gets."""
    for _ in range(count):
        for task in await ex.poll(name, ADD, max_tasks=4, running=[], timeout=5):
            runs.append((name, task["request_id"]))
            value = result if result is not None else task["kwargs"]["a"] + task["kwargs"]["b"]
            await ex.update(name, task["task_key"], "finished", result=value)


@pytest.mark.trio
async def test_two_providers_one_runner_and_the_cache_afterwards(tmp_path):
    ch = MemoryChannel("lab")
    for d in ("p1", "p2", "req"):
        (tmp_path / d).mkdir()
    exs = [TaskExchange(tmp_path / n, FAST) for n in ("p1", "p2", "req")]
    links = [ch.join(Keypair.generate(), PROVIDER, ex.on_message) for ex in exs[:2]]
    req = ch.join(Keypair.generate(), ["request-tasks"], exs[2].on_message)
    for link in links:
        _allow_task_uploads(link)
    runs: list = []
    async with anyio.create_task_group() as tg:
        for ex in exs:
            await tg.start(ex.run)
        tg.start_soon(_backend, exs[0], "b1", runs)
        tg.start_soon(_backend, exs[1], "b2", runs)
        await anyio.sleep(0.05)
        with anyio.fail_after(5):
            first = await exs[2].request([req], "t.add.1", {"a": 1, "b": 2})
            second = await exs[2].request([req], "t.add.1", {"a": 1, "b": 2})
        tg.cancel_scope.cancel()
    assert first["result"] == 3 and not first["from_cache"]
    assert second["result"] == 3 and second["from_cache"]
    assert len(runs) == 1
    assert len([b for _s, _band, b in ch.published if b["type"] == "offer"]) == 2


@pytest.mark.trio
async def test_provider_refuses_a_mismatched_hash_and_ignores_assignments_by_others(tmp_path):
    ch = MemoryChannel("lab")
    prov = TaskExchange(tmp_path, FAST)
    plink = ch.join(Keypair.generate(), PROVIDER, prov.on_message)
    alice = ch.join(Keypair.generate(), ["request-tasks"])
    mallory = ch.join(Keypair.generate(), ["request-tasks"])
    runs: list = []
    async with anyio.create_task_group() as tg:
        await tg.start(prov.run)
        tg.start_soon(_backend, prov, "b", runs)
        await anyio.sleep(0.05)
        await alice.publish("request-tasks", {
            "type": "requestTask", "request_id": "r" * 12, "function_id": "t.add.1",
            "function_type": "pure-calculation", "kwargs": {"a": 1, "b": 2}, "task_hash": "0" * 64})
        await alice.publish("request-tasks", {
            "type": "requestTask", "request_id": "s" * 12, "function_id": "t.add.1",
            "function_type": "pure-calculation", "kwargs": {"a": 1, "b": 2},
            "task_hash": task_hash("t.add.1", {"a": 1, "b": 2})})
        await mallory.publish("request-tasks", {"type": "assignTask", "request_id": "s" * 12,
                                                "provider": plink.node_id})
        await anyio.sleep(0.2)
        tg.cancel_scope.cancel()
    statuses = [b for s, _band, b in ch.published if b["type"] == "taskStatus"]
    assert statuses[0]["status"] == "error" and "task_hash does not match" in statuses[0]["error"]
    assert len(statuses) == 1 and runs == []  # mallory cannot assign alice's request


@pytest.mark.trio
async def test_requester_rejects_a_result_signed_by_a_non_provider(tmp_path):
    ch = MemoryChannel("lab", runtime_checks=False)
    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    prov, reqx = TaskExchange(tmp_path / "p", FAST), TaskExchange(tmp_path / "r", FAST)
    plink = ch.join(Keypair.generate(), PROVIDER, prov.on_message)
    _allow_task_uploads(plink)
    req = ch.join(Keypair.generate(), ["request-tasks"], reqx.on_message)
    outsider = Keypair.generate()
    h = task_hash("t.add.1", {"a": 5, "b": 5})
    ch.bucket[f"lab/task_results/{h[:2]}/{h[2:4]}/{h[4:6]}/{h}"] = encode_result_object(
        sign_result(outsider, task_hash=h, function_id="t.add.1", result=999, now_ms=1_700_000_000_000))
    runs: list = []
    async with anyio.create_task_group() as tg:
        await tg.start(prov.run)
        await tg.start(reqx.run)
        tg.start_soon(_backend, prov, "b", runs)
        await anyio.sleep(0.05)
        with anyio.fail_after(5):
            line = await reqx.request([req], "t.add.1", {"a": 5, "b": 5})
        tg.cancel_scope.cancel()
    assert line["result"] == 10 and not line["from_cache"]
    assert any("does not hold provide-tasks" in w for w in line["warnings"])
    assert plink.node_id == line["provider"]


@pytest.mark.trio
async def test_no_provider_and_remote_errors(tmp_path):
    ch = MemoryChannel("lab")
    (tmp_path / "p").mkdir()
    (tmp_path / "r").mkdir()
    prov, reqx = TaskExchange(tmp_path / "p", FAST), TaskExchange(tmp_path / "r", FAST)
    ch.join(Keypair.generate(), PROVIDER, prov.on_message)
    req = ch.join(Keypair.generate(), ["request-tasks"], reqx.on_message)

    async def failing_backend():
        while True:
            for task in await prov.poll("b", ADD, max_tasks=1, running=[], timeout=5):
                await prov.update("b", task["task_key"], "error", error="ZeroDivisionError: boom")

    async with anyio.create_task_group() as tg:
        await tg.start(prov.run)
        await tg.start(reqx.run)
        tg.start_soon(failing_backend)
        await anyio.sleep(0.05)
        with anyio.fail_after(5):
            no_provider = r"no provider on channel lab offers function 't\.x\.1'"
            with pytest.raises(NoProviderError, match=no_provider):
                await reqx.request([req], "t.x.1", {})
            with pytest.raises(TaskError, match="ZeroDivisionError: boom"):
                await reqx.request([req], "t.add.1", {"a": 1, "b": 0})
        tg.cancel_scope.cancel()


@pytest.mark.trio
async def test_oversized_arguments_get_a_clear_error_and_nothing_is_sent(tmp_path):
    ch = MemoryChannel("lab")
    reqx = TaskExchange(tmp_path, FAST)
    req = ch.join(Keypair.generate(), ["request-tasks"], reqx.on_message)
    with pytest.raises(TaskArgumentError, match="store large inputs"):
        await reqx.request([req], "t.add.1", {"a": list(range(20_000))})
    assert ch.published == []


@pytest.mark.trio
async def test_probe_lists_the_registered_functions(tmp_path):
    ch = MemoryChannel("lab")
    prov = TaskExchange(tmp_path, FAST)
    ch.join(Keypair.generate(), PROVIDER, prov.on_message)
    req = ch.join(Keypair.generate(), ["request-tasks"])
    async with anyio.create_task_group() as tg:
        await tg.start(prov.run)
        tg.start_soon(_backend, prov, "b", [])
        await anyio.sleep(0.05)
        await req.publish("request-tasks", {"type": "probeTasks", "request_id": "p" * 12})
        tg.cancel_scope.cancel()
    (answer,) = [b for _s, _band, b in ch.published if b["type"] == "taskFunctions"]
    assert answer["functions"] == [{"function_id": "t.add.1", "function_type": "pure-calculation"}]


@pytest.mark.trio
async def test_identical_calculations_from_two_requesters_share_one_run_and_its_error(tmp_path):
    """One computation per task hash at a time, whoever asks; its failure is theirs too; an
    untyped request learns the type from the offer (issue 11)."""
    ch = MemoryChannel("lab")
    for d in ("p", "r1", "r2"):
        (tmp_path / d).mkdir()
    prov = TaskExchange(tmp_path / "p", FAST)
    r1, r2 = TaskExchange(tmp_path / "r1", FAST), TaskExchange(tmp_path / "r2", FAST)
    _allow_task_uploads(ch.join(Keypair.generate(), PROVIDER, prov.on_message))
    l1 = ch.join(Keypair.generate(), ["request-tasks"], r1.on_message)
    l2 = ch.join(Keypair.generate(), ["request-tasks"], r2.on_message)
    runs: list = []
    release = anyio.Event()

    async def slow_backend():
        while True:
            for task in await prov.poll("b", ADD, max_tasks=4, running=[], timeout=5):
                runs.append(task["request_id"])
                await release.wait()  # both requests are assigned before the first finishes
                kw = task["kwargs"]
                if kw["b"] == 0:
                    await prov.update("b", task["task_key"], "error", error="ZeroDivisionError: b")
                else:
                    await prov.update("b", task["task_key"], "finished", result=kw["a"] + kw["b"])

    async def ask(ex, link, kwargs, out):
        try:
            out.append(await ex.request([link], "t.add.1", kwargs))
        except TaskError as exc:
            out.append(exc)

    async with anyio.create_task_group() as tg:
        for ex in (prov, r1, r2):
            await tg.start(ex.run)
        tg.start_soon(slow_backend)
        await anyio.sleep(0.05)
        for kwargs in ({"a": 1, "b": 2}, {"a": 1, "b": 0}):
            out: list = []
            runs.clear()
            release = anyio.Event()
            with anyio.fail_after(5):
                async with anyio.create_task_group() as asks:
                    asks.start_soon(ask, r1, l1, kwargs, out)
                    asks.start_soon(ask, r2, l2, kwargs, out)
                    while len([b for _s, _band, b in ch.published
                               if b.get("status") == "queued" and b.get("note")]) < (1 if kwargs["b"] else 2):
                        await anyio.sleep(0.01)  # the second request follows the first's computation
                    release.set()
            assert len(runs) == 1, runs
            if kwargs["b"]:
                assert [o["result"] for o in out] == [3, 3] and not any(o["from_cache"] for o in out)
            else:
                assert len(out) == 2 and all("ZeroDivisionError: b" in str(o) for o in out), out
        tg.cancel_scope.cancel()
    offers = [b for _s, _band, b in ch.published if b["type"] == "offer"]
    assert offers and all(b["function_type"] == "pure-calculation" for b in offers)
    asked = [b for _s, _band, b in ch.published if b["type"] == "requestTask"]
    assert len(asked) == 4 and not any("function_type" in b for b in asked[:2])  # untyped at first,
    assert all(b["function_type"] == "pure-calculation" for b in asked[2:])  # then learned

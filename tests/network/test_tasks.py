"""Tasks across real processes: a backend on node A, requests from node B (spec/tasks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from kachery_node.protocol.bucket_layout import task_result_path
from kachery_node.protocol.task_messages import task_hash
from tests import processes
from tests.hub.conftest import HubProcess
from tests.network.conftest import ALL_ROLES, Lab
from tests.nodes import KACHERY

ROOT = Path(__file__).parents[2]


class Backend:
    """`kachery task backend tests.network.task_functions:FUNCTIONS` on a node, as a process."""

    def __init__(self, node, log_dir: Path) -> None:
        self.node, self.log_dir = node, log_dir
        self.env = {**node.env, "PYTHONPATH": str(ROOT), "TASK_LOG_DIR": str(log_dir)}
        self.proc: subprocess.Popen | None = None
        processes.register(self)  # stopped with the test that made it, pass or fail
        self.start()

    def start(self) -> None:
        """Start the backend and wait until the node's daemon lists it as registered."""
        before = {b["backend_id"] for b in task_backends(self.node)}
        with open(self.log_dir.parent / f"backend-{self.node.label}.log", "ab") as err:
            self.proc = subprocess.Popen(
                [KACHERY, "task", "backend", "tests.network.task_functions:FUNCTIONS"],
                env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        wait_for(lambda: any(b["backend_id"] not in before for b in task_backends(self.node)),
                 what=f"the backend on {self.node.label} to register its functions")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    stop = kill

    def kill_and_wait_unregistered(self) -> None:
        """Kill the backend and wait until its daemon no longer offers its functions."""
        self.kill()
        wait_for(lambda: not task_backends(self.node), what="the daemon to notice the backend is gone")

    def runs(self, name: str) -> list[str]:
        path = self.log_dir / f"{name}.log"
        return path.read_text().splitlines() if path.exists() else []


def task_backends(node) -> list[dict]:
    """The task backends ``node``'s daemon has registered now (``/api/status``)."""
    return node.client.status()["task_backends"]


def script(node, code: str, timeout: float = 60) -> str:
    result = subprocess.run([sys.executable, "-c", code], env={**node.env, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr + node.log()[-3000:]
    return result.stdout


def request(node, function_id: str, kwargs: dict, *, type: str | None = "pure-calculation",
            timeout: float = 20, request_id: str | None = None) -> str:
    """Request from `node` in a script; prints `ok <result> <from_cache> <stale> <statuses> <warnings>`
    or `<ErrorClass>: <message>`."""
    return script(node, f"""
import kachery_node as kn
h = kn.request_task({function_id!r}, {kwargs!r}, channel="lab", function_type={type!r},
                    timeout={timeout!r}, request_id={request_id!r})
try:
    r = h.wait()
    print("ok", repr(r), h.from_cache, h.stale, h.statuses, h.warnings)
except kn.KacheryError as e:
    print(type(e).__name__ + ":", e)
""", timeout=timeout + 30).strip()


def wait_for(predicate, timeout: float = 20, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@dataclass
class TaskLab:
    lab: Any
    alice: Any  # all roles, runs the backend
    bob: Any  # request-tasks only
    backend: Backend


@pytest.fixture(scope="module")
def shared_lab(tmp_path_factory):
    """One hub, alice (all roles, runs the backend) and bob (request-tasks) for this module:
    the tests use distinct function arguments, so they do not see each other's results."""
    root = tmp_path_factory.mktemp("tasks")
    hub = HubProcess(root / "hub")
    lab = Lab(root, hub)
    backend = None
    try:
        alice = lab.add_node("alice", ALL_ROLES)
        bob = lab.add_node("bob", ["request-tasks"])
        backend = Backend(alice, root / "runs-alice")
        yield TaskLab(lab, alice, bob, backend)
    finally:
        if backend is not None:
            backend.kill()
        try:
            lab.stop()
        finally:
            hub.stop()


@pytest.fixture
def tl(shared_lab):
    proc = shared_lab.backend.proc
    if proc is None or proc.poll() is not None:  # a test stopped it
        shared_lab.backend.start()
    return shared_lab


def test_pure_result_is_cached_and_the_second_request_never_reaches_the_provider(tl):
    first = request(tl.bob, "test.add.1", {"a": 2, "b": 3})
    assert first.startswith("ok 5 False False"), first
    assert "running" in first and "finished" in first
    h = task_hash("test.add.1", {"a": 2, "b": 3})
    cached = tl.lab.bucket_object(task_result_path("lab", h))
    wait_for(cached.exists, what="the result in the bucket")  # uploaded just after `finished`
    second = request(tl.bob, "test.add.1", {"a": 2, "b": 3})
    assert second.startswith("ok 5 True False ['finished']"), second
    assert len(tl.backend.runs("add")) == 1


def test_query_is_fresh_and_falls_back_to_the_cache_only_without_provider(tl):
    one = request(tl.bob, "test.clock.1", {"tag": "x"}, type="query")
    two = request(tl.bob, "test.clock.1", {"tag": "x"}, type="query")
    assert one.startswith("ok {") and " False False " in one, one
    assert two.startswith("ok {") and " False False " in two and one != two, two
    assert len(tl.backend.runs("clock")) == 2
    tl.backend.kill_and_wait_unregistered()  # its daemon notices the closed poll at once
    stale = request(tl.bob, "test.clock.1", {"tag": "x"}, type="query")
    assert stale.startswith("ok {") and " True True " in stale and "no provider answered" in stale, stale
    assert two.split(" True True")[0].split("False False")[0] in stale or "'tag': 'x'" in stale
    none = request(tl.bob, "test.clock.1", {"tag": "never"}, type="query")
    assert none.startswith("NoProviderError:") and "no cached result" in none, none


def test_unknown_function_fails_quickly_saying_so(tl):
    t0 = time.monotonic()
    out = request(tl.bob, "test.nobody_has_this.1", {})
    assert out.startswith("NoProviderError:"), out
    assert "no provider on channel lab offers function 'test.nobody_has_this.1'" in out
    assert time.monotonic() - t0 < 8


def test_the_remote_error_message_reaches_the_requester(tl):
    out = request(tl.bob, "test.fail.1", {"why": "bad input 42"})
    assert out.startswith("TaskError:") and "ValueError: cannot do it: bad input 42" in out, out


def test_timeouts_are_explicit(tl):
    out = request(tl.bob, "test.slow.1", {"seconds": 3, "tag": "t"}, timeout=1.5)
    assert out.startswith("TaskTimeoutError:") and "1.5 s" in out, out


def test_tampered_or_forged_cached_results_are_ignored_and_reported(tl):
    from kachery_node.identity import Keypair
    from kachery_node.protocol.task_messages import encode_result_object, sign_result, task_hash

    assert request(tl.bob, "test.echo.1", {"value": "original"}).startswith("ok 'original' False")
    h = task_hash("test.echo.1", {"value": "original"})
    obj_path = tl.lab.bucket_object(task_result_path("lab", h))
    obj_path.write_bytes(obj_path.read_bytes().replace(b"original", b"tampered"))
    out = request(tl.bob, "test.echo.1", {"value": "original"})
    assert out.startswith("ok 'original' False"), out  # recomputed, not taken from the cache
    assert "bad signature" in out
    assert len(tl.backend.runs("echo")) == 2
    wait_for(lambda: b"tampered" not in obj_path.read_bytes(), what="the provider to overwrite it")

    # A well-signed result from a node that does not hold provide-tasks on the channel.
    h2 = task_hash("test.echo.1", {"value": "x"})
    forger = Keypair.generate()
    forged = sign_result(forger, task_hash=h2, function_id="test.echo.1", result="forged!",
                         now_ms=int(time.time() * 1000))
    path2 = tl.lab.bucket_object(task_result_path("lab", h2))
    path2.parent.mkdir(parents=True, exist_ok=True)
    path2.write_bytes(encode_result_object(forged))
    out = request(tl.bob, "test.echo.1", {"value": "x"})
    assert out.startswith("ok 'x' False"), out
    assert "does not hold provide-tasks" in out


def test_backend_restart_mid_task(tl):
    code = """
import kachery_node as kn
h = kn.request_task("test.slow.1", {"seconds": 3, "tag": "r"}, channel="lab", timeout=40)
print(h.wait(), h.statuses)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], env=tl.bob.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for(lambda: any("start r" in line for line in tl.backend.runs("slow")), what="the task to start")
    tl.backend.kill()
    tl.backend.start()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.startswith("{'slept': 3, 'tag': 'r'}"), out
    statuses = out.split("[", 1)[1]
    assert statuses.count("'queued'") >= 2 and statuses.count("'running'") >= 2, out
    runs = tl.backend.runs("slow")
    assert sum("start r" in r for r in runs) == 2 and sum("end r" in r for r in runs) == 1


def test_action_runs_once_under_retries_and_with_two_providers(tl, tmp_path):
    carol = tl.lab.nodes.get("carol") or tl.lab.add_node("carol", ALL_ROLES)
    second = Backend(carol, tmp_path / "runs-carol")
    try:
        rid = "retry-test-0001"
        first = request(tl.bob, "test.append.1", {"text": "hello"}, type="action", request_id=rid)
        assert first.startswith("ok {'appended': 'hello'} False False"), first
        again = request(tl.bob, "test.append.1", {"text": "hello"}, type="action", request_id=rid)
        assert again.startswith("ok {'appended': 'hello'} False False"), again
        assert len(tl.backend.runs("append")) + len(second.runs("append")) == 1
        fresh = request(tl.bob, "test.append.1", {"text": "hello"}, type="action")
        assert fresh.startswith("ok {'appended': 'hello'}"), fresh
        assert len(tl.backend.runs("append")) + len(second.runs("append")) == 2
        # Actions are never cached.
        h = task_hash("test.append.1", {"text": "hello"})
        assert not (tl.lab.bucket_object(task_result_path("lab", h))).exists()
    finally:
        second.kill()


def test_cli_requests_with_progress_and_fails_with_a_clear_error(tl):
    out = tl.bob.run("task", "request", "test.add.1", "--arg", "a=20", "--arg", "b=22", "--channel", "lab")
    assert out.stdout.strip() == "42"
    assert "[test.add.1] running" in out.stderr and "[test.add.1] finished" in out.stderr
    again = tl.bob.json("task", "request", "test.add.1", "--arg", "a=20", "--arg", "b=22")
    assert again["result"] == 42 and again["from_cache"] is True
    bad = tl.bob.run("task", "request", "test.nope.1", "--channel", "lab", check=False)
    assert bad.returncode == 1
    assert "Error: no provider on channel lab offers function 'test.nope.1'" in bad.stderr
    bad = tl.bob.run("task", "request", "test.add.1", "--arg", "a=1", "--arg", "b=NaN", check=False)
    assert bad.returncode == 1 and "Error:" in bad.stderr


def test_backend_survives_a_daemon_restart(tl):
    pid = json.loads((tl.alice.storage_dir / "daemon.json").read_text())["pid"]
    tl.alice.stop()
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
             what="the old daemon to exit")
    tl.alice.start()
    tl.lab.wait_connected(tl.alice)
    # The backend reconnects with backoff (at most 5 s) and registers again with the new daemon.
    wait_for(lambda: task_backends(tl.alice), what="the backend to register with the new daemon")
    out = request(tl.bob, "test.add.1", {"a": 100, "b": 1})
    assert out.startswith("ok 101 False"), out
    assert tl.backend.proc.poll() is None


def test_readme_tasks_example_runs(tl):
    import re

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Tasks", 1)[1].split("\n## ", 1)[0]
    # README's channel is lab.demo; this suite's channel is lab.
    backend_code, request_code = (code.replace('"lab.demo"', '"lab"')
                                  for code in re.findall(r"```py\n(.*?)```", section, flags=re.S))
    proc = subprocess.Popen([sys.executable, "-c", backend_code], env=tl.alice.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any("lab.unit_count.1" in b["functions"] for b in task_backends(tl.alice)),
                 what="the README's backend to register")
        out = script(tl.bob, request_code).splitlines()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert out == ["{'recording': 'r1', 'units': 42}", "['assigned', 'queued', 'running', 'finished'] False"]


def test_numpy_arguments_and_results_and_a_node_asking_itself(tl):
    out = script(tl.alice, """
import numpy as np
import kachery_node as kn
a = np.arange(6, dtype=np.float64).reshape(2, 3) / 2
h = kn.request_task("test.echo.1", {"value": a}, channel="lab", timeout=20)
print(h.wait(), h.task_hash == kn.task_hash("test.echo.1", {"value": a.tolist()}))
""")
    assert out.strip() == "[[0.0, 0.5, 1.0], [1.5, 2.0, 2.5]] True"


@pytest.mark.backends
@pytest.mark.parametrize("lab_backends", ["nats+gcs", "ably+embedded"], indirect=True)
def test_tasks_over_other_backends(lab, tmp_path):
    alice = lab.add_node("alice", ALL_ROLES)
    bob = lab.add_node("bob", ["request-tasks"])
    backend = Backend(alice, tmp_path / "runs")
    try:
        assert request(bob, "test.add.1", {"a": 7, "b": 8}).startswith("ok 15 False")
        h = task_hash("test.add.1", {"a": 7, "b": 8})
        cached = lab.bucket_object(f"lab/task_results/{h[:2]}/{h[2:4]}/{h[4:6]}/{h}")
        wait_for(cached.exists, what="the result in the bucket")  # uploaded just after `finished`
        again = request(bob, "test.add.1", {"a": 7, "b": 8})
        assert again.startswith("ok 15 True"), again
        assert len(backend.runs("add")) == 1
        out = request(bob, "test.append.1", {"text": "x"}, type="action")
        assert out.startswith("ok {'appended': 'x'}"), out
    finally:
        backend.kill()


def test_backend_runs_at_most_max_concurrency_tasks_at_once(tl):
    out = script(tl.bob, """
import kachery_node as kn
hs = [kn.request_task("test.slow.1", {"seconds": 1, "tag": f"c{i}"}, channel="lab", timeout=30)
      for i in range(6)]
print(sorted(h.wait()["tag"] for h in hs))
""")
    assert out.strip() == str([f"c{i}" for i in range(6)])
    level = peak = 0
    for line in tl.backend.runs("slow"):
        if " start c" in line:
            level += 1
        elif " end c" in line:
            level -= 1
        peak = max(peak, level)
    assert peak == 4  # `kachery task backend` runs 4 at a time by default


def test_identical_requests_at_once_run_once(tl):
    """Three identical pure calculations requested at once: the provider runs one computation and
    answers the three requests from it (issue 11)."""
    out = script(tl.bob, """
import kachery_node as kn
hs = [kn.request_task("test.slow.1", {"seconds": 1, "tag": "same"}, channel="lab", timeout=30)
      for _ in range(3)]
print([h.wait() for h in hs], len({h.request_id for h in hs}))
""")
    assert out.strip() == str([{"slept": 1, "tag": "same"}] * 3) + " 3", out
    assert sum("start same" in line for line in tl.backend.runs("slow")) == 1, tl.backend.runs("slow")
    assert "is already being computed here" in tl.alice.log()


def test_requester_needs_no_function_type(tl):
    """The provider's registration says what a function is: a query is fresh each time, an
    action runs once per request, a pure calculation is cached (issue 11)."""
    one = request(tl.bob, "test.clock.1", {"tag": "untyped"}, type=None)
    two = request(tl.bob, "test.clock.1", {"tag": "untyped"}, type=None)
    assert one.startswith("ok {") and " False False " in one, one
    assert two.startswith("ok {") and " False False " in two and one != two, two
    assert sum("untyped" in line for line in tl.backend.runs("clock")) == 2
    done = tl.bob.json("task", "request", "test.append.1", "--arg", "text=untyped", "--channel", "lab")
    assert done["result"] == {"appended": "untyped"} and done["from_cache"] is False
    assert sum("untyped" in line for line in tl.backend.runs("append")) == 1
    first = request(tl.bob, "test.add.1", {"a": 40, "b": 2}, type=None)
    assert first.startswith("ok 42 False False"), first
    h = task_hash("test.add.1", {"a": 40, "b": 2})
    cached = tl.lab.bucket_object(task_result_path("lab", h))
    wait_for(cached.exists, what="the result in the bucket")
    second = request(tl.bob, "test.add.1", {"a": 40, "b": 2}, type=None)
    assert second.startswith("ok 42 True False ['finished']"), second
    assert sum("40+2" in line for line in tl.backend.runs("add")) == 1


def test_the_original_clients_names_work(tl, tmp_path):
    """kachery-client's keywords (issue 17): run_task_backend(task_function_ids=...) with
    decorated functions, request_task(task_function_id=, task_kwargs=, task_function_type=),
    handle.wait(timeout_sec=), handle.result and handle.status."""
    code = tmp_path / "original_backend.py"
    code.write_text(
        "import kachery_node as kn\n"
        "@kn.taskfunction('test.original-names.1', type='query')\n"
        "def shout(*, text):\n"
        "    return text.upper()\n"
        "kn.run_task_backend(channels=['lab'], task_function_ids=['test.original-names.1'])\n")
    before = {b["backend_id"] for b in task_backends(tl.alice)}
    proc = subprocess.Popen([sys.executable, str(code)], env=tl.alice.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: any(b["backend_id"] not in before for b in task_backends(tl.alice)),
                 what="the task_function_ids backend to register")
        out = script(tl.bob, """
import kachery_node as kn
h = kn.request_task(task_function_id="test.original-names.1", task_kwargs={"text": "hi"},
                    task_function_type="query", channel="lab")
print(h.wait(timeout_sec=30), h.result, h.status)
""")
        assert out.split() == ["HI", "HI", "finished"], out
    finally:
        proc.kill()
        proc.wait(timeout=10)

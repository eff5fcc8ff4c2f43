"""The file exchange between nodes, over in-memory channels (tests/daemon/memory_link.py).

Each node is a real initialized storage directory with its own node key; envelopes are really
signed and verified. Timeouts are shrunk (FAST) except where a test checks the defaults.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import time
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

import kachery_node as kn
from kachery_node.daemon.files_exchange import FileExchange
from kachery_node.identity import load_node_key
from kachery_node.protocol.bucket_layout import file_path
from kachery_node.protocol.file_messages import MalformedFileMessage, parse_request, parse_status
from kachery_node.protocol.file_timeouts import FileTimeouts
from kachery_node.storage.manifest import CHUNK_SIZE
from kachery_node.storage.node_storage import Storage
from tests.daemon.memory_link import MemoryChannel, MemoryLink

FAST = FileTimeouts(answer=0.8, stall=1.0, backoff_max=0.3, progress_interval=0.05,
                    heartbeat=0.3, min_upload_rate=1e9, bucket_head=2.0, standby_max=10.0)
BOTH = ("request-files", "provide-files")


class FixedBackoff(random.Random):
    """Makes a provider's backoff deterministic: always ``fraction`` of the maximum."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fraction


class Node:
    def __init__(self, root: Path, name: str, timeouts: FileTimeouts, rng: random.Random | None):
        directory = root / name
        kn.init_node(directory, label=name, user_dir=root / "user")
        self.name = name
        self.storage = Storage(directory)
        self.keypair = load_node_key(directory)
        self.exchange = FileExchange(self.storage, timeouts=timeouts, rng=rng)
        self.links: dict[str, MemoryLink] = {}
        self.scope: anyio.CancelScope | None = None

    def join(self, channel: MemoryChannel, roles=BOTH, *, member: bool = True) -> MemoryLink:
        link = channel.join(self.keypair, roles, self.exchange.on_message, member=member)
        self.links[channel.name] = link
        return link

    async def serve(self, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.CancelScope() as scope:
            self.scope = scope
            await self.exchange.run(task_status=task_status)

    def kill(self) -> None:
        """The node dies: its tasks are cancelled and it leaves every channel."""
        for link in self.links.values():
            link.detach()
        assert self.scope is not None
        self.scope.cancel()

    async def fetch(self, uri: str, progress=None) -> str:
        return await self.exchange.fetch(list(self.links.values()), uri, progress)


@asynccontextmanager
async def network(tmp_path: Path, names: list[str], *, timeouts: FileTimeouts = FAST,
                  backoff: dict[str, float] | None = None,
                  spawn_handlers: list[MemoryChannel] = ()):
    """Nodes with running exchanges; cancelled on exit. ``backoff`` fixes providers' delays;
    the channels in ``spawn_handlers`` deliver each message in its own task."""
    backoff = backoff or {}
    nodes = [Node(tmp_path, n, timeouts, FixedBackoff(backoff[n]) if n in backoff
                  else random.Random(i)) for i, n in enumerate(names)]
    async with anyio.create_task_group() as tg:
        for channel in spawn_handlers:
            channel.spawn_handlers_in = tg
        for node in nodes:
            await tg.start(node.serve)
        yield nodes
        tg.cancel_scope.cancel()


#: Run a test with inline delivery (deterministic) and with one task per delivery (as the
#: daemon's channel runtime does).
delivery = pytest.mark.parametrize("spawned", [False, True], ids=["inline", "spawned"])


def lab(spawned: bool) -> tuple[MemoryChannel, list[MemoryChannel]]:
    ch = MemoryChannel("lab")
    return ch, [ch] if spawned else []


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def no_leftovers(node: Node) -> bool:
    tmp = node.storage.directory / "tmp"
    return not any(p.is_file() for p in tmp.rglob("*")) if tmp.exists() else True


# -- basic flows -------------------------------------------------------------------------------


@pytest.mark.trio
async def test_small_file_from_bucket_needs_no_request(tmp_path):
    ch = MemoryChannel("lab")
    data = b"hello from the bucket\n"
    ch.bucket[file_path("lab", sha1(data))] = data
    async with network(tmp_path, ["b"]) as (b,):
        b.join(ch)
        path = await b.fetch(f"sha1://{sha1(data)}/hello.txt")
    assert Path(path).read_bytes() == data
    assert b.storage.has_file(f"sha1://{sha1(data)}")
    assert b.storage.index.get_file(sha1(data)).fetchable  # downloads may be evicted later
    assert ch.published == []
    assert no_leftovers(b)


@delivery
@pytest.mark.trio
async def test_small_file_requested_and_provided(tmp_path, spawned):
    ch, spawn = lab(spawned)
    async with network(tmp_path, ["a", "b"], spawn_handlers=spawn) as (a, b):
        a.join(ch)
        b.join(ch)
        uri = a.storage.store_bytes(b"provided by a" * 1000, "a.txt")
        seen = []
        path = await b.fetch(uri, progress=lambda done, total: seen.append((done, total)))
        assert Path(path).read_bytes() == b"provided by a" * 1000
        assert len(ch.requests()) == 1
        assert [(s, b["status"]) for s, b in ch.statuses() if b["status"] != "progress"] == [
            (a.keypair.public_hex, "started"), (a.keypair.public_hex, "finished")]
        assert ch.uploads == [(a.keypair.public_hex, file_path("lab", kn.parse_uri(uri).sha1))]
        assert seen[-1] == (13000, 13000)
        # Once the object is in the bucket, another node gets it without asking.
        c = Node(tmp_path, "c", FAST, None)
        c.join(ch)
        assert Path(await c.fetch(uri)).read_bytes() == b"provided by a" * 1000
        assert len(ch.requests()) == 1
    assert ch.handler_errors == []


@pytest.mark.trio
async def test_concurrent_fetches_of_one_file_share_one_request(tmp_path):
    ch = MemoryChannel("lab")
    async with network(tmp_path, ["a", "b"]) as (a, b):
        a.join(ch)
        b.join(ch)
        uri = a.storage.store_bytes(os.urandom(5000))
        paths = []
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(lambda: _append(paths, b.fetch(uri)))
        assert len(set(paths)) == 1
        assert len(ch.requests()) == 1


async def _append(out: list, coro) -> None:
    out.append(await coro)


@pytest.mark.trio
async def test_falls_through_to_a_channel_that_has_a_provider(tmp_path):
    empty, lab = MemoryChannel("empty"), MemoryChannel("lab")
    async with network(tmp_path, ["a", "b"]) as (a, b):
        a.join(lab)
        b.join(empty)
        b.join(lab)
        uri = a.storage.store_bytes(b"only on lab")
        assert Path(await b.fetch(uri)).read_bytes() == b"only on lab"
        assert len(empty.requests()) == 1 and len(lab.requests()) == 1


# -- large files -------------------------------------------------------------------------------


def big_file(tmp_path: Path, size: int = 45_000_000) -> Path:
    path = tmp_path / "big.bin"
    path.write_bytes(os.urandom(size))
    return path


@delivery
@pytest.mark.trio
async def test_large_file_moves_as_parallel_verified_chunks(tmp_path, spawned):
    ch, spawn = lab(spawned)
    src = big_file(tmp_path)
    async with network(tmp_path, ["a", "b"], spawn_handlers=spawn) as (a, b):
        a.join(ch)
        b.join(ch)
        uri = a.storage.store_file(src)
        key = kn.parse_uri(uri)
        assert key.manifest_sha1 is not None
        seen = []
        path = await b.fetch(uri, progress=lambda done, total: seen.append((done, total)))
        assert sha1(Path(path).read_bytes()) == key.sha1
        requests = ch.requests()
        assert requests[0]["sha1"] == key.manifest_sha1
        chunk_requests = [r for r in requests if "chunk_of" in r]
        assert len(chunk_requests) == 3
        assert {r["chunk_of"]["sha1"] for r in chunk_requests} == {key.sha1}
        assert sorted((r["chunk_of"]["start"], r["chunk_of"]["end"]) for r in chunk_requests) == [
            (0, CHUNK_SIZE), (CHUNK_SIZE, 2 * CHUNK_SIZE), (2 * CHUNK_SIZE, 45_000_000)]
        # chunks move in parallel: all three were asked for before the first one arrived
        kinds = [b.get("chunk_of") is not None if band == "request-files" else b["status"]
                 for _s, band, b in ch.published]
        chunk_requests_at = [i for i, k in enumerate(kinds) if k is True]
        assert kinds.index("finished", chunk_requests_at[0]) > chunk_requests_at[-1]
        assert seen[-1] == (45_000_000, 45_000_000)
        assert all(d1 <= d2 for (d1, _), (d2, _) in itertools.pairwise(seen))
        assert not (b.storage.directory / "tmp" / "partial" / key.sha1).exists()
        assert b.storage.has_file(f"sha1://{key.manifest_sha1}")
        assert b.storage.load_bytes(uri, CHUNK_SIZE - 5, CHUNK_SIZE + 5) == \
            src.read_bytes()[CHUNK_SIZE - 5 : CHUNK_SIZE + 5]


def _markers(partial: Path) -> list[str]:
    """The verified-chunk markers of a partial fetch (files_partial)."""
    return sorted(p.name for p in partial.iterdir() if p.suffix == ".ok")


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "file-link"])
@pytest.mark.trio
async def test_interrupted_large_fetch_resumes_with_only_the_missing_chunks(tmp_path, stream):
    ch = MemoryChannel("lab")
    ch.stream_downloads = stream  # False: a link that can only write whole files
    src = big_file(tmp_path)
    async with network(tmp_path, ["a", "b"]) as (a, b):
        a.join(ch)
        b.join(ch)
        uri = a.storage.store_file(src)
        key = kn.parse_uri(uri)
        first_chunk = file_path("lab", sha1(src.read_bytes()[:CHUNK_SIZE]))

        async def only_first_chunk(link, path):
            if "sha1/" in path and path != first_chunk and path.split("/")[-1] != key.manifest_sha1:
                await anyio.sleep_forever()  # the other chunks hang until the fetch is cancelled

        ch.upload_hook = only_first_chunk
        partial = b.storage.directory / "tmp" / "partial" / key.sha1
        with anyio.move_on_after(10) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(b.fetch, uri)
                while not (partial.exists() and _markers(partial)):
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()  # interrupt the fetch mid-way
        assert not scope.cancelled_caught
        assert _markers(partial) == [f"0-{CHUNK_SIZE}.{first_chunk[-40:]}.ok"]
        assert sorted(p.name for p in partial.iterdir() if p.suffix != ".ok") == ["content"]
        assert not b.storage.has_file(uri)

        # The provider node restarts; the bucket lost chunk 1 meanwhile, so only the partial
        # copy can supply it.
        a.kill()
        ch.upload_hook = None
        del ch.bucket[first_chunk]
        a2 = Node(tmp_path, "a", FAST, None)
        a2.join(ch)
        async with anyio.create_task_group() as tg:
            await tg.start(a2.serve)
            before = len(ch.requests())
            path = await b.fetch(uri)
            tg.cancel_scope.cancel()
        again = ch.requests()[before:]
        assert sha1(Path(path).read_bytes()) == key.sha1
        assert first_chunk[-40:] not in {r["sha1"] for r in again}
        assert len(again) == 2 and all("chunk_of" in r for r in again)
        assert not partial.exists()


@pytest.mark.trio
async def test_resume_refetches_a_verified_chunk_damaged_on_disk(tmp_path):
    ch = MemoryChannel("lab")
    src = big_file(tmp_path)
    data = src.read_bytes()
    async with network(tmp_path, ["a", "b"]) as (a, b):
        a.join(ch)
        b.join(ch)
        uri = a.storage.store_file(src)
        key = kn.parse_uri(uri)
        first = sha1(data[:CHUNK_SIZE])

        async def only_first_chunk(link, path):
            if path.split("/")[-1] not in (first, key.manifest_sha1):
                await anyio.sleep_forever()

        ch.upload_hook = only_first_chunk
        partial = b.storage.directory / "tmp" / "partial" / key.sha1
        with anyio.move_on_after(10) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(b.fetch, uri)
                while not (partial.exists() and _markers(partial)):
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
        assert not scope.cancelled_caught
        assert _markers(partial) == [f"0-{CHUNK_SIZE}.{first}.ok"]
        with open(partial / "content", "r+b") as f:  # the disk changes under the marker
            f.seek(1000)
            f.write(b"tampered")
        ch.upload_hook = None
        first_download = (b.keypair.public_hex, file_path("lab", first))
        assert ch.downloads.count(first_download) == 1
        path = await b.fetch(uri)
        assert Path(path).read_bytes() == data
        assert ch.downloads.count(first_download) == 2  # the damaged chunk was fetched again
        assert not partial.exists()
        assert b.storage.index.get_file(key.sha1).fetchable
        assert b.storage.index.get_file(key.sha1).manifest_sha1 == key.manifest_sha1
        assert no_leftovers(b)


@pytest.mark.trio
async def test_tampered_chunk_without_provider_is_reported_and_nothing_stored(tmp_path):
    ch = MemoryChannel("lab")
    src = big_file(tmp_path)
    data = src.read_bytes()
    async with network(tmp_path, ["a", "b"]) as (a, b):
        a.join(ch)
        b.join(ch)
        uri = a.storage.store_file(src)
        key = kn.parse_uri(uri)
        await b.fetch(f"sha1://{key.manifest_sha1}")
        second = sha1(data[CHUNK_SIZE : 2 * CHUNK_SIZE])
        for i, start in enumerate(range(0, len(data), CHUNK_SIZE)):
            piece = data[start : start + CHUNK_SIZE]
            ch.bucket[file_path("lab", sha1(piece))] = b"x" * len(piece) if i == 1 else piece
        a.kill()
        with pytest.raises(kn.NotFoundError) as info:
            await b.fetch(uri)
        message = str(info.value)
        assert "chunk 2/3" in message and "corrupted" in message
        assert "rejected, nothing stored" in message
        assert not b.storage.has_file(uri)
        partial = b.storage.directory / "tmp" / "partial" / key.sha1
        assert second not in " ".join(_markers(partial))  # the bad chunk is not trusted
        assert len(_markers(partial)) == 2  # the good ones wait for a retry
        assert not [p for p in partial.iterdir() if p.suffix == ".part"]


@pytest.mark.trio
async def test_resume_adopts_chunk_files_of_the_earlier_layout(tmp_path):
    ch = MemoryChannel("lab")
    src = big_file(tmp_path, 25_000_000)
    data = src.read_bytes()
    async with network(tmp_path, ["a", "b"]) as (a, b):
        a.join(ch)
        b.join(ch)
        uri = a.storage.store_file(src)
        key = kn.parse_uri(uri)
        b.storage.store_bytes(a.storage.load_bytes(f"sha1://{key.manifest_sha1}"))
        partial = b.storage.directory / "tmp" / "partial" / key.sha1
        partial.mkdir(parents=True)
        first = sha1(data[:CHUNK_SIZE])
        (partial / first).write_bytes(data[:CHUNK_SIZE])  # a verified chunk, old layout
        path = await b.fetch(uri)
        assert Path(path).read_bytes() == data
        assert {r["sha1"] for r in ch.requests()} == {sha1(data[CHUNK_SIZE:])}
        assert not partial.exists()


@pytest.mark.trio
async def test_resume_rejects_a_damaged_partial_chunk(tmp_path):
    ch = MemoryChannel("lab")
    src = big_file(tmp_path, 25_000_000)
    async with network(tmp_path, ["a", "b"]) as (a, b):
        a.join(ch)
        b.join(ch)
        uri = a.storage.store_file(src)
        key = kn.parse_uri(uri)
        manifest = a.storage.load_bytes(f"sha1://{key.manifest_sha1}")
        b.storage.store_bytes(manifest)
        partial = b.storage.directory / "tmp" / "partial" / key.sha1
        partial.mkdir(parents=True)
        first = sha1(src.read_bytes()[:CHUNK_SIZE])
        (partial / first).write_bytes(b"x" * CHUNK_SIZE)  # right size, wrong content
        path = await b.fetch(uri)
        assert sha1(Path(path).read_bytes()) == key.sha1
        assert {r["sha1"] for r in ch.requests()} == {first, sha1(src.read_bytes()[CHUNK_SIZE:])}


# -- faults --------------------------------------------------------------------------------------


@delivery
@pytest.mark.trio
async def test_provider_killed_mid_upload_another_takes_over(tmp_path, spawned):
    ch, spawn = lab(spawned)
    data = os.urandom(300_000)
    async with network(tmp_path, ["a", "b", "c"], backoff={"a": 0.0, "c": 0.5},
                       spawn_handlers=spawn) as (a, b, c):
        for node in (a, b, c):
            node.join(ch)
        uri = a.storage.store_bytes(data)
        c.storage.store_bytes(data)
        a_uploading = anyio.Event()

        async def hang_a(link, path):
            if link.node_id == a.keypair.public_hex:
                a_uploading.set()
                await anyio.sleep_forever()

        ch.upload_hook = hang_a
        result = []
        t0 = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_append, result, b.fetch(uri))
            with anyio.fail_after(5):
                await a_uploading.wait()
            a.kill()
        elapsed = time.monotonic() - t0
        assert Path(result[0]).read_bytes() == data
        assert ch.uploads == [(c.keypair.public_hex, file_path("lab", sha1(data)))]
        assert [s for s, _ in ch.statuses("started")] == [a.keypair.public_hex, c.keypair.public_hex]
        assert elapsed < FAST.stall * 3


@delivery
@pytest.mark.trio
async def test_provider_upload_fails_another_takes_over_at_once(tmp_path, spawned):
    ch, spawn = lab(spawned)
    data = os.urandom(100_000)
    async with network(tmp_path, ["a", "b", "c"], backoff={"a": 0.0, "c": 0.5},
                       spawn_handlers=spawn) as (a, b, c):
        for node in (a, b, c):
            node.join(ch)
        uri = a.storage.store_bytes(data)
        c.storage.store_bytes(data)

        async def fail_a(link, path):
            if link.node_id == a.keypair.public_hex:
                raise OSError("disk on fire")

        ch.upload_hook = fail_a
        t0 = time.monotonic()
        path = await b.fetch(uri)
        elapsed = time.monotonic() - t0
        assert Path(path).read_bytes() == data
        failed = ch.statuses("failed")
        assert [s for s, _ in failed] == [a.keypair.public_hex]
        assert "disk on fire" in failed[0][1]["error"]
        assert ch.uploads == [(c.keypair.public_hex, file_path("lab", sha1(data)))]
        assert elapsed < FAST.stall  # no stall timeout was needed


@pytest.mark.trio
async def test_provider_gives_up_a_hung_upload_and_tries_again(tmp_path):
    ch = MemoryChannel("lab")
    data = os.urandom(50_000)
    async with network(tmp_path, ["a", "b"]) as (a, b):
        a.join(ch)
        b.join(ch)
        uri = a.storage.store_bytes(data)
        hung = []

        async def hang_once(link, path):
            if not hung:
                hung.append(path)
                await anyio.sleep_forever()  # no bytes move, no progress is reported

        ch.upload_hook = hang_once
        t0 = time.monotonic()
        assert Path(await b.fetch(uri)).read_bytes() == data
        assert time.monotonic() - t0 < 3 * FAST.stall
        (_, failed), = ch.statuses("failed")
        assert "made no progress" in failed["error"]
        assert len(ch.uploads) == 1 and len(ch.requests()) == 2


@pytest.mark.trio
async def test_heartbeats_keep_a_slow_upload_alive_without_byte_progress(tmp_path):
    ch = MemoryChannel("lab")
    data = os.urandom(100_000)
    # the link reports no progress until the end; 100 kB at 50 kB/s: 2 s allowed on top of stall
    slow = replace(FAST, min_upload_rate=50_000)
    async with network(tmp_path, ["a", "b"], timeouts=slow) as (a, b):
        a.join(ch)
        b.join(ch)
        uri = a.storage.store_bytes(data)

        async def slow_upload(link, path):
            await anyio.sleep(1.6 * slow.stall)

        ch.upload_hook = slow_upload
        assert Path(await b.fetch(uri)).read_bytes() == data
        assert len(ch.requests()) == 1  # the requester never thought it stalled
        assert ch.statuses("failed") == []
        assert len(ch.statuses("progress")) >= 3  # heartbeats


@delivery
@pytest.mark.trio
async def test_tampered_bucket_object_is_rejected_and_healed_by_a_provider(tmp_path, spawned):
    ch, spawn = lab(spawned)
    data = b"the real content" * 100
    path_in_bucket = file_path("lab", sha1(data))
    ch.bucket[path_in_bucket] = b"evil content!!!!" * 100  # same size, wrong bytes
    async with network(tmp_path, ["a", "b"], spawn_handlers=spawn) as (a, b):
        a.join(ch)
        b.join(ch)
        uri = a.storage.store_bytes(data)
        path = await b.fetch(uri)
        assert Path(path).read_bytes() == data
        assert [r.get("bad_object", False) for r in ch.requests()] == [True]
        assert ch.bucket[path_in_bucket] == data  # healed for everyone
        assert no_leftovers(b)


@pytest.mark.trio
async def test_tampered_bucket_object_without_provider_is_reported_and_nothing_stored(tmp_path):
    ch = MemoryChannel("lab")
    data = b"the real content"
    ch.bucket[file_path("lab", sha1(data))] = b"evil"
    async with network(tmp_path, ["b"]) as (b,):
        b.join(ch)
        with pytest.raises(kn.NotFoundError) as info:
            await b.fetch(f"sha1://{sha1(data)}")
        message = str(info.value)
        assert "corrupted" in message and "rejected, nothing stored" in message
        assert "no provider answered" in message
        assert not b.storage.has_file(f"sha1://{sha1(data)}")
        assert not b.storage.has_file(f"sha1://{sha1(b'evil')}")
        assert no_leftovers(b)


@pytest.mark.trio
async def test_provider_that_announces_finished_without_a_good_object_is_retried(tmp_path):
    ch = MemoryChannel("lab")
    data = b"bytes that will be overwritten on their way"
    async with network(tmp_path, ["a", "b"]) as (a, b):
        a.join(ch)
        b.join(ch)
        uri = a.storage.store_bytes(data)

        # The object is overwritten between the upload and the provider's 'finished'.
        original_publish = a.links["lab"].publish

        tampered = []

        async def publish_and_tamper(band, body):
            if body.get("status") == "finished" and not tampered:
                tampered.append(True)
                ch.bucket[file_path("lab", sha1(data))] = b"x" * len(data)
            await original_publish(band, body)

        a.links["lab"].publish = publish_and_tamper
        path = await b.fetch(uri)
        assert Path(path).read_bytes() == data
        assert [r.get("bad_object", False) for r in ch.requests()] == [False, True]


# -- permissions ---------------------------------------------------------------------------------


@pytest.mark.trio
async def test_requester_without_request_role_gets_a_clear_error_and_publishes_nothing(tmp_path):
    ch = MemoryChannel("lab")
    async with network(tmp_path, ["a", "b"]) as (a, b):
        a.join(ch)
        b.join(ch, roles=("provide-files",))
        uri = a.storage.store_bytes(b"you may not ask")
        t0 = time.monotonic()
        with pytest.raises(kn.NotFoundError) as info:
            await b.fetch(uri)
        assert time.monotonic() - t0 < 0.5  # it did not even wait
        assert "request-files role" in str(info.value) and "'lab'" in str(info.value)
        assert ch.published == []


@pytest.mark.trio
async def test_node_without_provide_role_never_answers(tmp_path):
    ch = MemoryChannel("lab", runtime_checks=False)  # let the request reach it anyway
    async with network(tmp_path, ["a", "b"]) as (a, b):
        a.join(ch, roles=("request-files",))
        b.join(ch)
        uri = a.storage.store_bytes(b"a has it but may not provide it")
        with pytest.raises(kn.NotFoundError, match="no provider answered"):
            await b.fetch(uri)
        assert ch.statuses() == [] and ch.uploads == []
        # and it cannot get an upload URL either
        with pytest.raises(PermissionError):
            await a.links["lab"].upload(file_path("lab", kn.parse_uri(uri).sha1), b"x")


@pytest.mark.trio
async def test_provider_ignores_a_requester_outside_the_membership(tmp_path):
    ch = MemoryChannel("lab", runtime_checks=False)  # the exchange must check on its own
    async with network(tmp_path, ["a", "b"]) as (a, b):
        a.join(ch)
        b.join(ch, roles=("request-files",), member=False)
        uri = a.storage.store_bytes(b"members only")
        with pytest.raises(kn.NotFoundError, match="no provider answered"):
            await b.fetch(uri)
        assert len(ch.requests()) == 1
        assert ch.statuses() == [] and ch.uploads == []


@pytest.mark.trio
async def test_no_provider_gives_not_found_within_the_default_answer_timeout(tmp_path):
    ch = MemoryChannel("lab")
    async with network(tmp_path, ["b"], timeouts=FileTimeouts()) as (b,):
        b.join(ch)
        t0 = time.monotonic()
        with pytest.raises(kn.NotFoundError) as info:
            await b.fetch("sha1://" + "ab" * 20 + "/x.dat")
        elapsed = time.monotonic() - t0
    assert 2.9 <= elapsed < 4.5
    assert "channel 'lab': no provider answered within 3 s" in str(info.value)
    assert info.value.uri == "sha1://" + "ab" * 20 + "/x.dat"


@pytest.mark.trio
async def test_not_found_names_every_channel_and_its_reason(tmp_path):
    one, two = MemoryChannel("one"), MemoryChannel("two")
    async with network(tmp_path, ["b"]) as (b,):
        b.join(one)
        b.join(two, roles=("provide-files",))
        with pytest.raises(kn.NotFoundError) as info:
            await b.fetch("sha1://" + "cd" * 20)
    message = str(info.value)
    assert "channel 'one': no provider answered within 0.8 s" in message
    assert "channel 'two': not in its bucket, and this node does not have the request-files" \
        in message


@delivery
@pytest.mark.trio
async def test_only_one_of_several_providers_uploads(tmp_path, spawned):
    ch, spawn = lab(spawned)
    data = os.urandom(2_000_000)
    # backoffs 0, 150 and 300 ms: wide enough apart to hold on a loaded machine
    backoff = {"p1": 0.5, "p2": 0.0, "p3": 1.0}
    async with network(tmp_path, ["p1", "p2", "p3", "req"], backoff=backoff,
                       spawn_handlers=spawn) as nodes:
        for node in nodes:
            node.join(ch)
        for provider in nodes[:3]:
            uri = provider.storage.store_bytes(data)
        path = await nodes[3].fetch(uri)
        assert Path(path).read_bytes() == data
        await anyio.sleep(FAST.backoff_max + 0.1)  # give the others time to do something wrong
        assert [node for node, _ in ch.uploads] == [nodes[1].keypair.public_hex]
        assert len(ch.statuses("started")) == 1


@pytest.mark.trio
async def test_providers_answer_finished_at_once_when_the_bucket_already_has_it(tmp_path):
    ch = MemoryChannel("lab")
    data = b"already there"
    async with network(tmp_path, ["a", "b"]) as (a, b):
        a.join(ch)
        b.join(ch)
        uri = a.storage.store_bytes(data)
        # b asks (bypassing its own bucket check) as if the object appeared meanwhile
        ch.bucket[file_path("lab", sha1(data))] = data
        await b.links["lab"].publish("request-files", {
            "type": "requestFile", "sha1": sha1(data), "request_id": "r" * 16})
        with anyio.fail_after(2):
            while not ch.statuses("finished"):
                await anyio.sleep(0.01)
        assert ch.uploads == [] and ch.statuses("started") == []
        assert Path(await b.fetch(uri)).read_bytes() == data


@pytest.mark.trio
async def test_provider_refuses_a_chunk_range_that_does_not_hash_to_the_requested_sha1(tmp_path):
    ch = MemoryChannel("lab")
    async with network(tmp_path, ["a", "b"]) as (a, b):
        a.join(ch)
        b.join(ch)
        uri = a.storage.store_bytes(b"0123456789" * 10)
        await b.links["lab"].publish("request-files", {
            "type": "requestFile", "sha1": "ee" * 20, "request_id": "r" * 16,
            "chunk_of": {"sha1": kn.parse_uri(uri).sha1, "start": 0, "end": 10}})
        with anyio.fail_after(2):
            while not ch.statuses("failed"):
                await anyio.sleep(0.01)
        assert ch.uploads == []
        assert "not the requested" in ch.statuses("failed")[0][1]["error"]


# -- message formats ------------------------------------------------------------------------------


def test_request_messages_are_validated_strictly():
    good = {"type": "requestFile", "sha1": "ab" * 20, "request_id": "0123456789abcdef"}
    assert parse_request(good).sha1 == "ab" * 20
    chunk = {**good, "size": 10, "chunk_of": {"sha1": "cd" * 20, "start": 0, "end": 10}}
    assert parse_request(chunk).to_body() == chunk
    for bad in (
        {**good, "sha1": "AB" * 20},
        {**good, "request_id": "short"},
        {**good, "size": -1},
        {**good, "bad_object": "yes"},
        {**good, "chunk_of": {"sha1": "cd" * 20, "start": 5, "end": 5}},
        {**good, "chunk_of": {"sha1": "cd" * 20, "start": 0, "end": CHUNK_SIZE + 1}},
        {**good, "size": 3, "chunk_of": {"sha1": "cd" * 20, "start": 0, "end": 10}},
    ):
        with pytest.raises(MalformedFileMessage):
            parse_request(bad)
    status = {"type": "uploadStatus", "sha1": "ab" * 20, "status": "progress", "bytes": 5}
    assert parse_status(status).to_body() == status
    with pytest.raises(MalformedFileMessage):
        parse_status({**status, "status": "pending"})


@pytest.mark.trio
async def test_fetch_without_channels_or_with_a_chunk_uri_fails_clearly(tmp_path):
    async with network(tmp_path, ["b"]) as (b,):
        with pytest.raises(kn.NotFoundError, match="joined no channel"):
            await b.fetch("sha1://" + "ab" * 20)
        with pytest.raises(kn.InvalidUriError, match="names a chunk"):
            await b.fetch("sha1://" + "ab" * 20 + "?chunkOf=" + "cd" * 20 + "~0~10")
        with pytest.raises(kn.InvalidUriError):
            await b.fetch("sha1://nothex")

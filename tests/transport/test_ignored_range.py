"""A bucket server that ignores ``Range`` (answers 200 with the whole object): both download
paths keep exactly the bytes asked for.

The direct path refuses such an answer before writing anything (tests/daemon/test_direct_get.py);
the download then goes through httpx, which cuts the range out of the whole body
(``http_transfer.BodyRange``). Checked for the daemon's async download and a script's blocking
read, with ranges that start and end inside the body's pieces and at its ends.
"""

from __future__ import annotations

import httpx
import pytest
import trio

from kachery_node.transport.bucket.blocking_reads import BlockingBucketReader
from kachery_node.transport.bucket.http_transfer import download
from tests.http_listener import ScriptedServer

BODY = bytes(range(256)) * 9000  # 2.3 MB: several 1 MiB pieces
RANGES = [(1000, 300_000), (0, 10), (1_500_000, None), (len(BODY) - 1, len(BODY)), (None, 5), (0, len(BODY))]


@pytest.fixture
def server():
    scripted = ScriptedServer(answer=lambda path: (200, "application/octet-stream", BODY))
    yield scripted
    scripted.close()


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write_blocking(self, piece: bytes | memoryview) -> None:
        self.data += piece


@pytest.mark.parametrize(("start", "end"), RANGES)
def test_a_blocking_read_keeps_the_range_of_a_whole_answer(server, start, end) -> None:
    got = bytearray()
    seen: list[tuple[int, int]] = []
    reader = BlockingBucketReader(server.url.rstrip("/"), connect_timeout=5, read_timeout=10)
    n = reader.read("ch/objects/x", got.extend, start=start, end=end,
                    progress=lambda d, t: seen.append((d, t)))
    assert bytes(got) == BODY[start:end] and n == len(got)
    assert seen[-1] == (n, n)  # the total counts only the range's bytes


@pytest.mark.parametrize(("start", "end"), RANGES)
def test_a_download_keeps_the_range_of_a_whole_answer(server, start, end) -> None:
    sink = Sink()
    seen: list[tuple[int, int]] = []

    async def main() -> int:
        async with httpx.AsyncClient() as client:
            return await download(client, server.url + "ch/objects/x", sink, start=start, end=end,
                                  progress=lambda d, t: seen.append((d, t)))

    n = trio.run(main)
    assert bytes(sink.data) == BODY[start:end] and n == len(sink.data)
    assert seen[-1] == (n, n)

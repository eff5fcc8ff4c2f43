"""storage/partial_files.py: downloads written once, hashed as they are written: a whole file
(IncomingFile) and the chunks of a large one, each straight into its place (PartialFile)."""

from __future__ import annotations

import hashlib
import os

import pytest

from kachery_node.storage.manifest import Chunk, Manifest
from kachery_node.storage.partial_files import IncomingFile, PartialFile


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _partial(tmp_path, data: bytes, size: int, *, check_chunks: bool = True) -> PartialFile:
    chunks = [Chunk(s, min(s + size, len(data)), _sha1(data[s : s + size]))
              for s in range(0, len(data), size)]
    return PartialFile(tmp_path, Manifest(len(data), _sha1(data), tuple(chunks)),
                       check_chunks=check_chunks)


@pytest.mark.trio
async def test_streamed_chunks_land_in_place_and_are_marked(tmp_path):
    data = os.urandom(3000)
    partial = _partial(tmp_path, data, 1000)
    assert partial.open() == list(partial.manifest.chunks)
    for chunk in reversed(partial.manifest.chunks):  # any order
        sink = partial.sink(chunk)
        await sink.write_piece(data[chunk.start : chunk.start + 300])
        await sink.write_piece(data[chunk.start + 300 : chunk.end])
        assert sink.commit() is None
    partial.close()
    assert partial.content_path.read_bytes() == data
    assert partial.open() == []  # resumed: every chunk re-verified and kept
    partial.remove()
    assert not partial.directory.exists()


@pytest.mark.trio
async def test_a_too_long_or_wrong_chunk_is_rejected_and_does_not_touch_its_neighbours(tmp_path):
    data = os.urandom(3000)
    partial = _partial(tmp_path, data, 1000)
    first, second, _third = partial.open()
    sink = partial.sink(second)
    await sink.write_piece(data[1000:2000])
    assert sink.commit() is None
    sink = partial.sink(first)
    await sink.write_piece(b"y" * 2500)  # runs into the verified second chunk
    assert sink.commit() == "it has 2500 bytes, not 1000"
    sink = partial.sink(first)
    await sink.write_piece(b"z" * 1000)
    assert sink.commit() == f"its content hashes to {_sha1(b'z' * 1000)}, not {first.sha1}"
    partial.close()
    assert partial.content_path.read_bytes()[1000:2000] == data[1000:2000]
    assert partial.open() == [first, _third]
    assert not [p for p in partial.directory.iterdir() if p.suffix == ".part"]
    partial.close()


def test_a_file_link_download_is_copied_in_and_verified(tmp_path):
    data = os.urandom(2000)
    partial = _partial(tmp_path, data, 1000)
    first, second = partial.open()
    sink = partial.sink(first)
    with open(sink, "xb") as f:  # what a link that only writes files does
        f.write(data[:1000])
    assert sink.commit() is None
    sink = partial.sink(second)
    with open(sink, "xb") as f:
        f.write(b"x" * 1000)
    assert sink.commit() is not None
    assert partial.open() == [second]
    assert sorted(p.suffix for p in partial.directory.iterdir()) == ["", ".ok"]
    partial.close()


@pytest.mark.trio
async def test_the_whole_file_hash_follows_the_verified_prefix(tmp_path):
    data = os.urandom(5000)
    partial = _partial(tmp_path, data, 1000)
    chunks = partial.open()
    for i in (3, 1, 4):  # out of order: nothing from the start yet
        sink = partial.sink(chunks[i])
        await sink.write_piece(data[chunks[i].start : chunks[i].end])
        assert sink.commit() is None
    sink = partial.sink(chunks[0])
    await sink.write_piece(b"w" * 1000)
    assert sink.commit() is not None  # a wrong first chunk does not enter the hash
    sink = partial.sink(chunks[0])
    await sink.write_piece(data[:1000])
    assert sink.commit() is None
    assert partial.whole_sha1() is None  # chunk 2 is still missing
    sink = partial.sink(chunks[2])
    sink.write_blocking(memoryview(data)[2000:3000])
    assert sink.commit() is None
    assert partial.whole_sha1() == _sha1(data)
    partial.close()
    resumed = _partial(tmp_path, data, 1000)  # a restarted daemon: re-verified, hashed again
    assert resumed.open() == [] and resumed.whole_sha1() == _sha1(data)
    resumed.remove()



@pytest.mark.trio
async def test_deferred_checks_verify_the_whole_file_in_one_pass(tmp_path, monkeypatch):
    data = os.urandom(5000)
    updates = []
    real_sha1 = hashlib.sha1

    class Counting:  # every byte hashed by anyone, counted
        def __init__(self, *args):
            self._h = real_sha1(*args)

        def update(self, b):
            updates.append(len(memoryview(b)))
            self._h.update(b)

        def hexdigest(self):
            return self._h.hexdigest()

    monkeypatch.setattr("kachery_node.storage.partial_files.hashlib.sha1", Counting)
    partial = _partial(tmp_path, data, 1000, check_chunks=False)
    chunks = partial.open()
    for chunk in (chunks[2], chunks[0], chunks[4], chunks[1], chunks[3]):
        sink = partial.sink(chunk)
        await sink.write_piece(data[chunk.start : chunk.end])
        assert sink.commit() is None
    assert partial.whole_sha1() == _sha1(data)
    assert sum(updates) == len(data)  # once, not once per chunk and once for the file
    partial.close()


@pytest.mark.trio
async def test_deferred_checks_find_a_wrong_chunk_and_fetch_it_checked(tmp_path):
    data = os.urandom(3000)
    partial = _partial(tmp_path, data, 1000, check_chunks=False)
    first, second, third = partial.open()
    sink = partial.sink(third)
    await sink.write_piece(b"y" * 999)
    assert sink.commit() == "it has 999 bytes, not 1000"  # the size is always checked
    for chunk, body in ((first, data[:1000]), (second, b"x" * 1000), (third, data[2000:])):
        sink = partial.sink(chunk)
        await sink.write_piece(body)
        assert sink.commit() is None  # the right size: taken, unchecked
    whole = partial.whole_sha1()
    assert whole is not None and whole != _sha1(data)
    assert partial.recheck() == [second]  # the good chunks keep their markers
    assert partial.whole_sha1() is None  # from now on the file is hashed whole when stored
    sink = partial.sink(second)
    await sink.write_piece(b"z" * 1000)
    assert sink.commit() == f"its content hashes to {_sha1(b'z' * 1000)}, not {second.sha1}"
    sink = partial.sink(second)
    await sink.write_piece(data[1000:2000])
    assert sink.commit() is None
    assert partial.whole_sha1() is None
    partial.close()
    assert partial.content_path.read_bytes() == data
    resumed = _partial(tmp_path, data, 1000)
    assert resumed.open() == [] and resumed.whole_sha1() == _sha1(data)
    resumed.remove()


@pytest.mark.trio
async def test_a_resumed_deferred_fetch_checks_each_chunk_it_finds(tmp_path):
    data = os.urandom(3000)
    partial = _partial(tmp_path, data, 1000, check_chunks=False)
    first, second, third = partial.open()
    for chunk, body in ((first, data[:1000]), (second, b"x" * 1000)):
        sink = partial.sink(chunk)
        await sink.write_piece(body)
        assert sink.commit() is None
    partial.close()  # the process dies here
    resumed = _partial(tmp_path, data, 1000, check_chunks=False)
    assert resumed.open() == [second, third]  # the unchecked wrong chunk is not kept
    resumed.close()

@pytest.mark.trio
async def test_an_incoming_file_is_hashed_as_it_streams_and_kept_when_it_matches(tmp_path):
    data = os.urandom(3000)
    incoming = IncomingFile(tmp_path / "tmp", _sha1(data), 3000)
    await incoming.write_piece(data[:1000])
    incoming.write_blocking(memoryview(data)[1000:])  # from a download's worker thread
    assert incoming.commit() is None
    assert incoming.path.read_bytes() == data and incoming.size == 3000
    assert incoming.path.parent == tmp_path / "tmp"
    assert incoming.path.stat().st_mode & 0o777 == 0o600


@pytest.mark.trio
async def test_an_incoming_file_that_is_not_the_object_is_deleted_with_the_reason(tmp_path):
    data = os.urandom(100)
    wrong = IncomingFile(tmp_path, _sha1(data))
    await wrong.write_piece(b"x" * 100)
    assert wrong.commit() == f"its content hashes to {_sha1(b'x' * 100)}, not {_sha1(data)}"
    assert not wrong.path.exists()
    short = IncomingFile(tmp_path, _sha1(data), 101)
    await short.write_piece(data)
    assert short.commit() == "it has 100 bytes, not 101"
    assert list(tmp_path.iterdir()) == []


def test_an_incoming_file_written_by_a_file_link_is_hashed_once_after(tmp_path):
    data = os.urandom(2000)
    incoming = IncomingFile(tmp_path, _sha1(data))
    with open(incoming, "xb") as f:  # what a link that only writes files does
        f.write(data)
    assert incoming.commit() is None and incoming.size == 2000
    empty = IncomingFile(tmp_path, _sha1(b""))  # a streamed empty body: no piece at all
    assert empty.commit() is None and empty.path.read_bytes() == b""
    incoming.discard()
    empty.discard()
    assert list(tmp_path.iterdir()) == []


def test_range_reads_from_a_partial_copy_take_only_verified_chunks(tmp_path):
    """read_partial_range (issue 14): bytes of a partly fetched file, only from marked chunks,
    re-hashed once per change of the file; a chunk spoiled on disk is refused and unmarked."""
    from kachery_node.storage.manifest import CHUNK_SIZE
    from kachery_node.storage.partial_files import read_partial_range

    data = os.urandom(CHUNK_SIZE + 100)
    partial = _partial(tmp_path, data, CHUNK_SIZE)
    first, last = partial.manifest.chunks
    assert read_partial_range(tmp_path, partial.manifest, 5, 10) is None  # nothing yet
    assert not partial.directory.exists()  # and a read creates nothing
    assert partial.open_chunks([last]) == [last]
    sink = partial.sink(last)
    sink.write_blocking(data[last.start:])
    assert sink.commit() is None
    partial.close()
    assert read_partial_range(tmp_path, partial.manifest, CHUNK_SIZE + 5, CHUNK_SIZE + 50) \
        == data[CHUNK_SIZE + 5 : CHUNK_SIZE + 50]
    assert read_partial_range(tmp_path, partial.manifest, CHUNK_SIZE + 50, CHUNK_SIZE + 60) \
        == data[CHUNK_SIZE + 50 : CHUNK_SIZE + 60]
    assert read_partial_range(tmp_path, partial.manifest, CHUNK_SIZE - 5, CHUNK_SIZE + 5) is None
    with open(partial.content_path, "r+b") as f:  # spoiled behind kachery's back
        f.seek(CHUNK_SIZE + 7)
        f.write(b"X" if data[CHUNK_SIZE + 7 : CHUNK_SIZE + 8] != b"X" else b"Y")
    assert read_partial_range(tmp_path, partial.manifest, CHUNK_SIZE + 5, CHUNK_SIZE + 50) is None
    assert partial.open_chunks([first, last]) == [first, last]  # its marker is gone
    partial.close()

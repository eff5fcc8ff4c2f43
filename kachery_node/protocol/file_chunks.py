"""The rules of fetching a large file chunk by chunk, without I/O (spec/node-protocol.md §Files,
"Large files"): which chunk to fetch next, over which channels first, and how far along the
whole fetch is. The daemon's :mod:`kachery_node.daemon.chunked_fetch` drives them; each chunk is
then obtained as an object of its own (:class:`~.file_requester.FileRequester`)."""

from __future__ import annotations

from collections.abc import Sequence

from ..storage.manifest import Chunk
from .file_messages import ChunkRef
from .file_requester import Target


class ChunkSchedule:
    """Which chunk of a large file to fetch next, and over which channels first.

    Chunks are taken in file order (so they complete roughly in order and the whole-file hash
    keeps up with them); the channel that delivered the last chunk is tried first for the next."""

    def __init__(self, file_sha1: str, chunks: Sequence[Chunk], missing: Sequence[Chunk],
                 channels: Sequence[str]) -> None:
        self.file_sha1 = file_sha1
        self._all = list(chunks)
        self._queue = sorted(missing, key=lambda c: c.start)
        self._order = list(channels)

    def __len__(self) -> int:
        return len(self._queue)

    def next_chunk(self) -> Chunk | None:
        """The next chunk to fetch, or None when every one was handed out."""
        return self._queue.pop(0) if self._queue else None

    def target(self, chunk: Chunk) -> Target:
        """What to request for ``chunk``: its SHA-1, size and place in the file."""
        index = self._all.index(chunk)
        return Target(chunk.sha1, f"chunk {index + 1}/{len(self._all)} of sha1://{self.file_sha1}",
                      chunk.end - chunk.start, ChunkRef(self.file_sha1, chunk.start, chunk.end))

    def channel_order(self) -> list[str]:
        """The channels, the one that delivered last first."""
        return list(self._order)

    def delivered(self, channel: str) -> None:
        if channel in self._order and self._order[0] != channel:
            self._order.remove(channel)
            self._order.insert(0, channel)


class ChunkProgress:
    """Adds the progress of several concurrent chunk downloads into one (done, total)."""

    def __init__(self, total: int, done: int) -> None:
        self.total, self.done = total, done
        self._in_flight: dict[str, int] = {}

    def update(self, chunk: Chunk, done: int) -> tuple[int, int]:
        self._in_flight[chunk.sha1] = done
        return self.current()

    def chunk_done(self, chunk: Chunk) -> tuple[int, int]:
        self._in_flight.pop(chunk.sha1, None)
        self.done += chunk.end - chunk.start
        return self.current()

    def current(self) -> tuple[int, int]:
        return min(self.total, self.done + sum(self._in_flight.values())), self.total

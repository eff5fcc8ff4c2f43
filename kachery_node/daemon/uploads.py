"""Pushing a locally stored file to a channel's bucket (``kn.upload_file``, ``kachery upload``).

A file above 20 MB goes up as its manifest plus one object per chunk (each chunk's bytes are
read from the stored file, never copied into the store), so that other nodes can fetch it in
verifiable pieces. Objects already in the bucket are skipped (HEAD with the expected size).
"""

from __future__ import annotations

import logging
from pathlib import Path

import anyio

from ..protocol.bucket_layout import file_path
from ..storage.file_uris import parse_uri
from ..storage.manifest import parse_manifest
from ..storage.node_storage import Storage
from .channel_link import ChannelLink, ProgressCallback

log = logging.getLogger("kachery.uploads")


async def upload_file(storage: Storage, link: ChannelLink, uri: str,
                      progress: ProgressCallback | None = None) -> dict:
    """Upload the content of ``uri`` (stored here) to ``link``'s bucket; returns what was sent."""
    key = parse_uri(uri)
    local = storage.locate(key)  # NotFoundError if it is not here
    pieces: list[tuple[str, int, int]] = []  # (sha1, start, end) of the stored file
    if key.manifest_sha1:
        manifest_bytes = storage.load_bytes(f"sha1://{key.manifest_sha1}")
        manifest = parse_manifest(manifest_bytes, expected_sha1=key.sha1)  # the file it describes
        pieces = [(c.sha1, c.start, c.end) for c in manifest.chunks]
    total = sum(end - start for _s, start, end in pieces) if pieces else local.size
    done = 0
    uploaded = skipped = 0

    async def put(sha1: str, data_range: tuple[int, int] | None, size: int) -> None:
        nonlocal done, uploaded, skipped
        path = file_path(link.channel, sha1)
        if await link.bucket_head(path) == size:
            skipped += 1
        else:
            if data_range is None:
                data: bytes | Path = local.path  # streamed from disk
            else:  # a chunk: at most 20 MB in memory
                data = await anyio.to_thread.run_sync(storage.load_bytes, uri, *data_range)
            await link.upload(path, data)
            uploaded += 1
        done += size
        if progress:
            progress(done, total)

    if pieces:
        await _put_bytes(link, key.manifest_sha1, manifest_bytes)
        for sha1, start, end in pieces:
            await put(sha1, (start, end), end - start)
    else:
        await put(key.sha1, None, local.size)
    log.info("uploaded %s to %s: %d object(s) sent, %d already there", uri, link.channel, uploaded, skipped)
    return {"uploaded": uploaded, "skipped": skipped, "bytes": total}


async def _put_bytes(link: ChannelLink, sha1: str, data: bytes) -> None:
    path = file_path(link.channel, sha1)
    if await link.bucket_head(path) != len(data):
        await link.upload(path, data)

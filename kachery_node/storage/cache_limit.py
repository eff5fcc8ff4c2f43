"""The cache cap: free space by deleting what can be fetched again, least recently used first.

Rule (spec/storage.md §Cache): when the stored files (linked files do not count) exceed
``max_cache_size_gib`` × 10⁹ bytes after a store, delete files marked fetchable — downloaded
from a channel, so another copy exists — in order of last access, oldest first, until the total
is at most 70 % of the cap (the original's target, so eviction does not run on every store).
Files the user stored here are never deleted, even if the cap cannot be met. Deleting really
unlinks the file (the original only moved it to ``sha1-trash/``, which freed nothing).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection
from pathlib import Path

from .file_index import FileIndex

TARGET_FRACTION = 0.7


def enforce_cache_limit(
    index: FileIndex,
    path_for: Callable[[str], Path],
    max_bytes: int | None,
    *,
    keep: Collection[str] = (),
) -> list[str]:
    """Evict until under the cap; return the SHA-1s deleted. ``keep`` is never evicted
    (the file just stored, which its caller is about to use)."""
    if max_bytes is None:
        return []
    _, total = index.total_stored_bytes()
    if total <= max_bytes:
        return []
    target = int(max_bytes * TARGET_FRACTION)
    evicted = []
    for sha1, size, manifest_sha1 in index.eviction_candidates():
        if total <= target:
            break
        if sha1 in keep:
            continue
        with contextlib.suppress(FileNotFoundError):
            path_for(sha1).unlink()
        index.delete_file(sha1)
        total -= size
        evicted.append(sha1)
        # Its manifest goes with it, unless the user stored it or another file still needs it.
        if manifest_sha1 is not None and manifest_sha1 not in keep:
            manifest = index.get_file(manifest_sha1)
            if (manifest is not None and manifest.fetchable
                    and not index.manifest_in_use(manifest_sha1)):
                with contextlib.suppress(FileNotFoundError):
                    path_for(manifest_sha1).unlink()
                index.delete_file(manifest_sha1)
                total -= manifest.size
                evicted.append(manifest_sha1)
    return evicted

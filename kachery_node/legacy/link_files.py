"""``.link`` files: how the original registered a file in place (``kachery-link``).

A link to a file with SHA-1 ``h`` is the JSON file ``sha1/aa/bb/cc/<h>.link`` next to where the
stored copy would be. Two writers made them, with two spellings of the manifest field
(spec/legacy.md; kachery-client 1.2.0 ``_local_kachery_storage.py``)::

    {"path": "/abs/file", "manifestSha1": "<40 hex>" | null, "stat": {"size": N, "mtime": S},
     "_writingProcess": "daemon"}                                     (the daemon, /linkFile)
    {"path": "/abs/file", "manifest_hash": "<40 hex>" | null, "stat": {"size": N, "mtime": S}}
                                                                      (the client, offline)

``mtime`` is in seconds (a float). The original served the file while its size and mtime were
unchanged; this node hashes it once instead (storage/node_storage.py, ``locate``) and then keeps
it in its own index, so a file modified behind the link is never served under the old hash.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..storage.private_files import make_private_dirs

LINK_SUFFIX = ".link"
_HEX40 = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class LinkFile:
    """What a ``.link`` file says."""

    path: str
    size: int | None
    mtime: float | None
    manifest_sha1: str | None


def link_file_path(stored_path: Path) -> Path:
    """``<storage>/sha1/aa/bb/cc/<sha1>.link`` for the stored path of ``<sha1>``."""
    return stored_path.with_name(stored_path.name + LINK_SUFFIX)


def read_link_file(path: Path) -> LinkFile | None:
    """The link at ``path``, or None if there is none or it is not a link file (it is then
    ignored, as the original ignored it, with a warning)."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(1 << 16))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("path"), str):
        return None
    stat = data.get("stat") if isinstance(data.get("stat"), dict) else {}
    size = stat.get("size")
    mtime = stat.get("mtime")
    manifest = data.get("manifestSha1", data.get("manifest_hash"))
    return LinkFile(
        path=data["path"],
        size=size if isinstance(size, int) and not isinstance(size, bool) else None,
        mtime=float(mtime) if isinstance(mtime, int | float) and not isinstance(mtime, bool) else None,
        manifest_sha1=manifest if isinstance(manifest, str) and _HEX40.fullmatch(manifest) else None,
    )


def write_link_file(stored_path: Path, target: str, manifest_sha1: str | None) -> Path:
    """Write the daemon's form of a link (for kachery-client 1.2.0, which checks that its
    ``link_file`` left one and loads linked files through it). Atomic; mode 0600."""
    st = os.stat(target)
    doc = {"path": target, "manifestSha1": manifest_sha1,
           "stat": {"size": st.st_size, "mtime": st.st_mtime}, "_writingProcess": "daemon"}
    dest = link_file_path(stored_path)
    make_private_dirs(dest.parent)
    tmp = dest.with_name(dest.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, dest)
    return dest

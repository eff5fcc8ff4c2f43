"""Where the embedded bucket keeps each object on disk, so that no key can block another.

Object ``<s1>/<s2>/…/<sn>`` (a key that passed :func:`validate_object_key`) is the file
``<root>/<s1>/<s2>/…/<sn>#``. Why the ``#``: were a key its own path, a key that is a prefix of
another (``lab/feeds/ab`` and ``lab/feeds/ab/cd/head``) would need one path to be a file and a
directory at once, and whoever wrote first would block the other (issue 11). Key segments never
contain ``#``, so every directory name is a key segment and every file name ends with ``#``: the
two never meet, whatever keys are written, in whatever order.

``<root>/.tmp/`` holds uploads in progress, ``<root>/.trash/`` deleted channels' directories
until they are removed (in the background, and at the next start), ``<root>/.index.db`` the
objects' sizes and access times (hub/object_index.py) and ``<root>/.layout`` records the on-disk
layout (no key segment starts with ``.``). A bucket written before the suffix (files named by their
key) is migrated when it is opened: each such file is renamed to its ``#`` name (idempotent, so
an interrupted migration resumes at the next start), then ``.layout`` is written.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

from ..protocol.channel_errors import InvalidPathError
from ..protocol.signed_urls import validate_object_key

log = logging.getLogger("kachery.hub.bucket")
OBJECT_SUFFIX = "#"
LAYOUT = "kachery-bucket-files v2: object <key> is the file <key>#\n"


def object_file(root: Path, key: str) -> Path:
    """The file of object ``key`` in a bucket directory ``root`` (pure: touches nothing);
    InvalidPathError for an unsafe key."""
    parts = validate_object_key(key).split("/")
    return Path(root).joinpath(*parts[:-1], parts[-1] + OBJECT_SUFFIX)


class ObjectFiles:
    """The object files under ``root`` (see the module docstring for the layout)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp = self.root / ".tmp"
        self.tmp.mkdir(exist_ok=True)
        for stale in self.tmp.iterdir():  # partial uploads of a previous run
            stale.unlink(missing_ok=True)
        self.trash = self.root / ".trash"
        if self.trash.exists():  # deleted channels whose removal a stop interrupted
            shutil.rmtree(self.trash, ignore_errors=True)
        marker = self.root / ".layout"
        if not marker.exists():
            moved = self._migrate_unsuffixed()
            if moved:
                log.info("bucket %s: %d object(s) moved to the %r-suffixed layout", self.root, moved,
                         OBJECT_SUFFIX)
            marker.write_text(LAYOUT)

    def path_of(self, key: str) -> Path:
        """The file of object ``key`` (which may not exist); InvalidPathError for an unsafe key."""
        return object_file(self.root, key)

    def new_tmp(self) -> Path:
        """A fresh name in the temporary directory, for an upload to stream into."""
        return self.tmp / secrets.token_hex(12)

    def commit(self, tmp: Path, key: str) -> None:
        """Move the complete file ``tmp`` into place as object ``key``, atomically: readers see
        the old object or the new one, never a part."""
        final = self.path_of(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)

    def remove(self, key: str) -> None:
        """Delete object ``key`` (absent: nothing to do) and the directories it leaves empty, up
        to the channel's own directory (p(h) makes up to 16 million of them over time)."""
        path = self.path_of(key)
        path.unlink(missing_ok=True)
        top = self.root / key.split("/", 1)[0]
        parent = path.parent
        while parent != top and parent != self.root:
            try:
                parent.rmdir()
            except OSError:  # not empty (or gone): the directories above are not empty either
                break
            parent = parent.parent

    def remove_channel(self, channel: str) -> None:
        """Delete every object of ``channel`` (a channel name: one key segment). Its directory
        is moved aside at once (a channel created again under this name starts empty) and
        deleted by a background thread."""
        top = self.path_of(f"{channel}/x").parent
        if not top.is_dir():
            return
        self.trash.mkdir(exist_ok=True)
        aside = self.trash / f"{channel}.{secrets.token_hex(6)}"
        os.replace(top, aside)
        threading.Thread(target=shutil.rmtree, args=(aside,), kwargs={"ignore_errors": True},
                         name="bucket-remove-channel", daemon=True).start()

    def objects(self) -> Iterator[tuple[str, os.stat_result]]:
        """Every object's key and file status, channel by channel (for rebuilding an index)."""
        for top in sorted(self.root.iterdir()):
            if top.name.startswith(".") or not top.is_dir():
                continue
            for dirpath, _dirnames, filenames in os.walk(top):
                rel = Path(dirpath).relative_to(self.root).as_posix()
                for name in filenames:
                    if name.endswith(OBJECT_SUFFIX):
                        path = os.path.join(dirpath, name)
                        try:
                            yield f"{rel}/{name[:-len(OBJECT_SUFFIX)]}", os.stat(path)
                        except FileNotFoundError:
                            continue

    def keys(self, prefix: str, limit: int) -> tuple[list[str], bool]:
        """Keys starting with ``prefix``, at most ``limit`` of them, and whether more were left
        out. Order: directory by directory, a directory's objects (sorted) before its
        subdirectories (sorted). Only the directory the prefix names is walked."""
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else prefix
        try:
            base = self.root.joinpath(*validate_object_key(directory + "/x").split("/")[:-1])
        except InvalidPathError:  # a prefix no key can have
            return [], False
        keys: list[str] = []
        if not base.is_dir():
            return keys, False
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in sorted(filenames):
                if not name.endswith(OBJECT_SUFFIX):
                    continue
                key = f"{rel}/{name[:-len(OBJECT_SUFFIX)]}"
                if key.startswith(prefix):
                    if len(keys) >= limit:
                        return keys, True
                    keys.append(key)
        return keys, False

    def _migrate_unsuffixed(self) -> int:
        """Rename the object files of the old layout (named by their key) to ``<key>#``."""
        moved = 0
        for top in sorted(self.root.iterdir()):
            if top.name.startswith(".") or not top.is_dir():
                continue
            for dirpath, _dirnames, filenames in os.walk(top):
                for name in filenames:
                    if name.endswith(OBJECT_SUFFIX):
                        continue
                    old = Path(dirpath) / name
                    new = old.with_name(name + OBJECT_SUFFIX)
                    if new.exists():  # both names (copied in by hand?): the suffixed one is served
                        old.unlink()
                    else:
                        os.replace(old, new)
                        moved += 1
        return moved

"""The modes of a storage directory: private to its owner, whatever the umask (spec/storage.md §1).

A node's storage holds a person's data (files, mutables, feeds and their keys); on a shared
server nobody else should read it. Everything kachery creates there is made private when it is
created, never loosened by a umask of 022:

* directories: 0700 (the storage directory itself first: that alone shuts everything in it);
* databases (``files.db``, ``mutables.db``, ``feeds.db``) and other files: 0600; SQLite gives
  a database's ``-wal`` and ``-shm`` files the database file's mode;
* stored content under ``sha1/``: 0400 (read-only too: a path from ``load_file`` must not be
  edited in place).

Existing directories and files keep their modes (someone may have chosen them); files
registered with ``link_file`` stay where and as they are: kachery never changes a user's file.
"""

from __future__ import annotations

import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
STORED_FILE_MODE = 0o400


def make_private_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents with mode 0700 (``mkdir -p`` would give the
    parents the umask's mode). Existing directories are left as they are."""
    missing = []
    p = Path(path)
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:  # another process made it meanwhile
            continue
        os.chmod(d, DIR_MODE)  # a umask like 0o277 would have taken bits away


def create_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if it does not exist (before SQLite opens it, so that
    the database and its -wal/-shm files are private)."""
    make_private_dirs(Path(path).parent)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except FileExistsError:
        pass

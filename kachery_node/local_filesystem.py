"""Refusing to open kachery_node's SQLite databases (a storage's, a hub's) on a network file
system: :mod:`kachery_feeds.filesystems` decides, this module raises kachery_node's error
(:class:`~kachery_node.errors.NetworkFileSystemError`, which the CLI prints as one line)."""

from __future__ import annotations

import os

from kachery_feeds import filesystems

from .errors import NetworkFileSystemError


def require_local_filesystem(directory: str | os.PathLike, what: str, fix: str) -> None:
    """Raise :class:`NetworkFileSystemError` if ``directory`` is on a network file system (and
    ``KACHERY_ALLOW_NETWORK_FS=1`` is not set); ``what`` and ``fix`` word the message."""
    try:
        filesystems.require_local_filesystem(directory, what, fix)
    except filesystems.NetworkFileSystemError as exc:
        raise NetworkFileSystemError(str(exc), path=exc.path, mount=exc.mount) from None


def require_local_storage(storage_dir: str | os.PathLike) -> None:
    """:func:`require_local_filesystem` for a node's storage directory (its files.db,
    mutables.db and feeds.db): checked by ``kachery init`` and before the databases open."""
    require_local_filesystem(
        storage_dir, "the storage's databases (files.db, mutables.db, feeds.db)",
        "Set KACHERY_STORAGE_DIR (or pass the storage directory) to a directory on a local disk")

"""The errors kachery_node raises. Every failure is one of these, with a message a person can act on.

Nothing in the public API returns ``None`` to mean "it went wrong" (the original's most
reported surprise); a caller who wants to tolerate absence catches :class:`NotFoundError`.
"""

from __future__ import annotations

import reprlib

import kachery_feeds.filesystems as _feeds_filesystems

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 100
_REPR.maxlevel = 3


def short_repr(value: object) -> str:
    """``repr(value)`` cut to a readable length and depth, for messages about data from
    elsewhere (a plain repr of a 100k-deep list raises RecursionError; of 100 MB, is 100 MB)."""
    return _REPR.repr(value)


class KacheryError(Exception):
    """Base class of every error raised by kachery_node."""


class NotFoundError(KacheryError, LookupError):
    """The content (or mutable key) is not available here.

    ``uri`` names what was asked for when it is a file.
    """

    def __init__(self, message: str, *, uri: str | None = None) -> None:
        super().__init__(message)
        self.uri = uri


class InvalidUriError(KacheryError, ValueError):
    """A ``sha1://`` URI is malformed (hash length, non-hex, bad query parameter)."""


class CorruptedFileError(KacheryError):
    """A stored file no longer matches its SHA-1. The bad copy has been deleted."""


class LinkedFileChangedError(KacheryError):
    """A linked file changed after :func:`link_file` registered it, so it is not served."""


class UnsafePickleError(KacheryError):
    """A pickle refers to something other than plain data and numpy arrays.

    ``global_name`` is the refused ``module.name``.
    """

    def __init__(self, message: str, *, global_name: str | None = None) -> None:
        super().__init__(message)
        self.global_name = global_name


class PickleTooLargeError(UnsafePickleError):
    """A pickle would allocate more memory than its budget allows (``bytearray(600_000_000)`` is
    a 46-byte pickle). ``limit`` is the budget in bytes, ``requested`` what the pickle had asked
    for when it was refused. Load it with ``load_pkl(uri, max_bytes=...)`` if you trust it."""

    def __init__(self, message: str, *, limit: int, requested: int) -> None:
        super().__init__(message, global_name=None)
        self.limit = limit
        self.requested = requested


class InvalidDataError(KacheryError, ValueError):
    """A value or argument is not acceptable: NaN in JSON, an object array for .npy, text
    that is not UTF-8, a byte range outside the file, ..."""


class NotInitializedError(KacheryError):
    """The storage directory has no identity or config yet: run ``kachery init``."""


class ConfigError(KacheryError):
    """The node's config.toml is unreadable or holds a bad value."""


class InsecureUrlError(ConfigError):
    """A secret (a bearer token, a signed request or upload, a channel's cloud secret) would go
    over plain HTTP to another machine; refused before connecting. ``url`` is the refused URL.
    Use https, or ``--insecure-http`` / ``KACHERY_INSECURE_HTTP=1`` if you really mean it."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class NetworkFileSystemError(KacheryError, _feeds_filesystems.NetworkFileSystemError):
    """A storage's or hub's SQLite databases would be on a network file system (NFS, SMB,
    sshfs, Lustre, …), where WAL mode is unsafe; the message says where to put them instead
    (see :mod:`kachery_feeds.filesystems`; ``KACHERY_ALLOW_NETWORK_FS=1`` overrides)."""

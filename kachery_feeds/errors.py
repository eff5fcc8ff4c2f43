"""Exceptions raised by kachery_feeds.

Every error derives from :class:`FeedError`. They say whose fault a failure is, as h11 does:
:class:`VerificationError` means data from elsewhere is bad (tampered, forged, forked, out of
order); :class:`InvalidPayloadError`, :class:`InvalidUriError` and :class:`NotWriteableError`
mean the caller asked for something impossible. A call that raises changes nothing in the store
(the one deliberate exception: a detected fork's proof is recorded before :class:`ForkError` is
raised, because the proof is the evidence a person needs).
"""

from __future__ import annotations

import reprlib


class _ShortRepr(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        # reprlib calls repr() on ints, which raises ValueError past sys.get_int_max_str_digits()
        # (4300 by default): untrusted input can hold such a number.
        try:
            return super().repr_int(x, level)
        except ValueError:
            return f"<int of {x.bit_length()} bits>"


_REPR = _ShortRepr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 100
_REPR.maxlevel = 3


def short_repr(value: object) -> str:
    """``repr(value)`` cut to a readable length and depth, for error messages about untrusted
    input (a plain repr of a 100k-deep list raises RecursionError; of 100 MB, is 100 MB)."""
    return _REPR.repr(value)


class FeedError(Exception):
    """Base class of every kachery_feeds error."""


class VerificationError(FeedError):
    """Received data failed verification (signature, hash chain, numbering or binding)."""


class ForkError(VerificationError):
    """Two valid, conflicting signed messages exist for one position of a subfeed.

    ``proof`` holds the portable fork proof (bytes, see spec/feeds.md "Fork proofs"); it can be
    checked by anyone with :func:`kachery_feeds.verify_fork_proof`.
    """

    def __init__(self, message: str, proof: bytes, position: int) -> None:
        super().__init__(message)
        self.proof = proof
        self.position = position


class MissingMessagesError(FeedError):
    """An imported range starts after the last local message, so it cannot be chained yet."""

    def __init__(self, message: str, local_count: int) -> None:
        super().__init__(message)
        self.local_count = local_count


class NotWriteableError(FeedError):
    """Appending to a feed whose private key this store does not hold."""


class FeedRestoringError(NotWriteableError):
    """Appending to a feed whose key was restored from a backup before the store caught up with
    the newest messages the network holds of it (spec/feeds.md §8): appending now could fork the
    feed. ``feed_id`` names the feed."""

    def __init__(self, message: str, feed_id: str) -> None:
        super().__init__(message)
        self.feed_id = feed_id


class RestoreIncompleteError(FeedError):
    """Ending a restore while the store still lacks messages the network is known to hold.
    ``missing`` maps subfeed hashes to ``(local count, known count)``."""

    def __init__(self, message: str, missing: dict[str, tuple[int, int]]) -> None:
        super().__init__(message)
        self.missing = missing


class InvalidUriError(FeedError, ValueError):
    """A feed URI, feed ID or subfeed name is malformed."""


class UnknownFeedError(FeedError, KeyError):
    """A feed name or ID that this store does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InvalidPayloadError(FeedError, ValueError):
    """A payload or metadata value that is not plain JSON, or a message over the size limit."""


class StoreFullError(FeedError):
    """The store cannot hold this subfeed or message: a subfeed row id past 8,388,606 or a
    message number past 2^40 - 1 (the bounds of its message keys, spec/feeds.md §7). Nothing
    was written."""


class StoreBusyError(FeedError):
    """Opening the store waited too long for another process that held its write lock while
    the store still needed converting to this version's schema (most likely that process was
    converting it, in one transaction: about 10 s a million messages). Nothing was changed."""


class StoreVersionError(FeedError):
    """The store was written by a newer version of kachery_feeds than this one."""


class NotAStoreError(FeedError):
    """The file is an SQLite database, but not a kachery_feeds store (it has tables and no
    schema version: another program's database, such as the original kachery's feeds.db).
    It is left unchanged: not migrated, not switched to WAL."""

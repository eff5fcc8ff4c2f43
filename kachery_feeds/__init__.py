"""kachery_feeds: signed, append-only feeds in SQLite, with live following and replication.

>>> import kachery_feeds as kf
>>> store = kf.open_store("/tmp/demo/feeds.db")           # doctest: +SKIP
>>> sf = store.create_feed().load_subfeed("primes")       # doctest: +SKIP
>>> sf.append_message({"p": 2})                           # doctest: +SKIP
0

The format is specified in ``spec/feeds.md``. Nothing here touches the network: a node carries
:meth:`Subfeed.get_signed_messages` output to another store's :meth:`Subfeed.add_signed_messages`.
"""

from .audit import Problem, StoreReport
from .errors import (
    FeedError,
    FeedRestoringError,
    ForkError,
    InvalidPayloadError,
    InvalidUriError,
    MissingMessagesError,
    NotAStoreError,
    NotWriteableError,
    RestoreIncompleteError,
    StoreBusyError,
    StoreFullError,
    StoreVersionError,
    UnknownFeedError,
    VerificationError,
)
from .filesystems import NetworkFileSystemError
from .forks import ForkProofInfo, is_succession_violation, verify_fork_proof
from .messages import (
    FORMAT_VERSION,
    SIGNATURE_CONTEXT,
    ParsedMessage,
    decode_segment,
    encode_segment,
    parse_message,
)
from .payloads import MAX_MESSAGE_BYTES
from .store import Store, open_store
from .subfeed import Feed, MessageRecord, Subfeed
from .uris import FeedUri, normalize_feed_id, parse_feed_uri, subfeed_hash, subfeed_uri

__all__ = [
    "FORMAT_VERSION",
    "MAX_MESSAGE_BYTES",
    "SIGNATURE_CONTEXT",
    "Feed",
    "FeedError",
    "FeedRestoringError",
    "FeedUri",
    "ForkError",
    "ForkProofInfo",
    "InvalidPayloadError",
    "InvalidUriError",
    "MessageRecord",
    "MissingMessagesError",
    "NetworkFileSystemError",
    "NotAStoreError",
    "NotWriteableError",
    "ParsedMessage",
    "Problem",
    "RestoreIncompleteError",
    "Store",
    "StoreBusyError",
    "StoreFullError",
    "StoreReport",
    "StoreVersionError",
    "Subfeed",
    "UnknownFeedError",
    "VerificationError",
    "decode_segment",
    "encode_segment",
    "is_succession_violation",
    "normalize_feed_id",
    "open_store",
    "parse_feed_uri",
    "parse_message",
    "subfeed_hash",
    "subfeed_uri",
    "verify_fork_proof",
]

"""Every error kachery_node raises, in one tree whose branches say whose fault a failure is.

Like h11's ``LocalProtocolError`` / ``RemoteProtocolError``, the class tells the caller what to do
about it, without reading the message:

* :class:`InternalError`: **ours**, a bug in kachery (a core driven out of order, an invariant
  broken). Report it. :class:`LocalProtocolError` is its protocol-core kind.
* :class:`RemoteProtocolError`: **the peer's**. Data from elsewhere (another node's message, a
  bucket object, a hub's answer, a request reaching the hub) is malformed, forged, tampered with,
  stale or replayed. It was refused and changed nothing here.
  :class:`ChannelProtocolError` and its children are this kind as the hub, relay or bucket sees
  a request it refuses; each carries the HTTP ``status`` and a stable ``code``.
* :class:`UsageError`: **the user's input**: a malformed URI, a bad argument or value. Fix the
  call. (Also a ``ValueError``.)
* :class:`ConfigError`: **the configuration**: config.toml, key files, an uninitialized storage
  directory.

Conditions that are nobody's fault derive from :class:`KacheryError` directly: content that is
not here (:class:`NotFoundError`), a daemon that does not answer (:class:`DaemonError`), a hub
that refused (:class:`HubRequestError`), a stored file gone bad (:class:`CorruptedFileError`), a
pickle that the safe loader refuses (:class:`UnsafePickleError`).

Nothing in the public API returns ``None`` to mean "it went wrong" (the original's most
reported surprise); a caller who wants to tolerate absence catches :class:`NotFoundError`.
Every class here is importable from ``kachery_node``.
"""

from __future__ import annotations

import kachery_feeds as kf
import kachery_feeds.filesystems as _feeds_filesystems
from kachery_feeds.errors import short_repr  # noqa: F401  (kachery_node's messages use it too)


class KacheryError(Exception):
    """Base class of every error raised by kachery_node."""


# ----------------------------------------------------------------------------- whose fault
class InternalError(KacheryError):
    """Ours: kachery itself did something wrong (a bug). The daemon reports unexpected failures
    with this kind (``"kind": "InternalError"``)."""


class LocalProtocolError(InternalError):
    """Ours: a protocol core was driven wrongly by its driver (an event in a state that cannot
    take it, an action asked for twice). Never caused by a peer's data."""


class RemoteProtocolError(KacheryError):
    """The peer's: data from elsewhere is malformed, forged, tampered with, stale or replayed.
    It was refused, and nothing was changed because of it."""


class TamperedDataError(RemoteProtocolError):
    """Bytes read from elsewhere (an object of a channel's bucket, a chunk) do not hash to what
    they were asked for: tampered with or broken on the way. Nothing was stored."""


class UsageError(KacheryError, ValueError):
    """The user's input: a value or argument that cannot be used as given."""


class ConfigError(KacheryError):
    """The configuration: the node's config.toml is unreadable or holds a bad value, a key file
    is missing or malformed, the storage directory is not set up."""


class InsecureUrlError(ConfigError):
    """A secret (a bearer token, a signed request or upload, a channel's cloud secret) would go
    over plain HTTP to another machine; refused before connecting. ``url`` is the refused URL.
    Use https, or ``--insecure-http`` / ``KACHERY_INSECURE_HTTP=1`` if you really mean it."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class NetworkFileSystemError(ConfigError, _feeds_filesystems.NetworkFileSystemError):
    """A storage's or hub's SQLite databases would be on a network file system (NFS, SMB,
    sshfs, Lustre, …), where WAL mode is unsafe; the message says where to put them instead
    (see :mod:`kachery_feeds.filesystems`; ``KACHERY_ALLOW_NETWORK_FS=1`` overrides)."""


# ----------------------------------------------------------------------------- usage
class InvalidUriError(UsageError, kf.InvalidUriError):
    """A URI is malformed: a ``sha1://`` URI (hash length, non-hex, bad query parameter), or a
    feed URI (this is also a :class:`kachery_feeds.InvalidUriError`: one concept, one class to
    catch)."""


class InvalidDataError(UsageError):
    """A value or argument is not acceptable: NaN in JSON, an object array for .npy, text
    that is not UTF-8, a byte range outside the file, ..."""


# ----------------------------------------------------------------------------- configuration
class NotInitializedError(ConfigError):
    """The storage directory has no identity or config yet: run ``kachery init``."""


class ChannelNotJoinedError(ConfigError):
    """A channel was named (``channel=``, ``--channel``) that this node has not joined
    (``kachery node join CHANNEL``)."""


# ----------------------------------------------------------------------------- conditions
class NotFoundError(KacheryError, LookupError):
    """The content (or mutable key) is not available here.

    ``uri`` names what was asked for when it is a file.
    """

    def __init__(self, message: str, *, uri: str | None = None) -> None:
        super().__init__(message)
        self.uri = uri


class SubfeedNotFoundError(NotFoundError):
    """A subfeed of another node could not be read from anywhere: not in the local store, and
    neither the daemon (if one runs) nor any channel's bucket delivered a message. ``attempts``
    lists what was tried, one line each (also in the message), for example
    ``"channel lab's bucket: nothing published (no head)"``.

    Catch it to tolerate absence, or ask for a live wait (``load_subfeed(uri, live=True)``)."""

    def __init__(self, message: str, *, uri: str | None = None, attempts: list[str] | None = None) -> None:
        super().__init__(message, uri=uri)
        self.attempts = list(attempts or [])


class BucketDataRejectedError(TamperedDataError):
    """What a channel's bucket holds for a subfeed failed verification (a tampered or malformed
    segment or head), and no other source delivered it. Nothing of it was stored. ``attempts``
    lists what was tried, as in :class:`SubfeedNotFoundError`."""

    def __init__(self, message: str, *, uri: str | None = None, attempts: list[str] | None = None) -> None:
        super().__init__(message)
        self.uri = uri
        self.attempts = list(attempts or [])


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


# ----------------------------------------------------------------------------- the local daemon
class DaemonError(KacheryError):
    """The daemon answered with an error, or could not be started or stopped. ``status`` is the
    HTTP status of its answer and ``reason`` its own message, when there was one."""

    def __init__(self, message: str, *, status: int | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class DaemonNotRunningError(DaemonError):
    """No daemon answers for this storage directory: start one with `kachery node start`."""


class DaemonConnectionLostError(DaemonError):
    """The daemon dropped the connection before answering (it was stopped or killed meanwhile)."""


class RestoreNotCaughtUpError(KacheryError):
    """A feed restored from a key backup could not be caught up with the network (no daemon, a
    channel unreachable, messages still missing at the deadline): it stays restoring, and
    appends stay refused (spec/feeds.md §8)."""


# ----------------------------------------------------------------------------- channels (hub, relay, bucket)
class HubRequestError(KacheryError):
    """The hub, relay or bucket refused a request: ``status``, ``code`` and its message."""

    def __init__(self, status: int, code: str, message: str, details: dict | None = None) -> None:
        # status 0: no HTTP answer at all (the host could not be reached): no "HTTP 0" to show
        super().__init__(f"{message} ({code}, HTTP {status})" if status else message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}  # a refusal's machine-readable extras (a witness's size, proof)


class ChannelProtocolError(RemoteProtocolError):
    """A request that the hub, relay or bucket refuses: the requester's fault as the refusing side
    sees it. The hub answers it with ``status`` and ``{"error": {"code": code, "message": ...}}``
    and changes nothing; the requester then gets a :class:`HubRequestError`."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


class MalformedRequestError(ChannelProtocolError):
    """The request is not valid JSON, lacks a field, or a field has the wrong type or form."""

    status, code = 400, "malformed_request"


class InvalidChannelNameError(MalformedRequestError):
    """A channel name breaks the naming rules (3-40 characters, dot-separated segments)."""

    code = "invalid_channel_name"


class InvalidPathError(MalformedRequestError):
    """An object path is empty, absolute, contains ``..``, backslashes, NUL or other bad parts."""

    code = "invalid_path"


class BadSignatureError(ChannelProtocolError):
    """A signature is missing, malformed or does not verify."""

    status, code = 401, "bad_signature"


class StaleRequestError(ChannelProtocolError):
    """The request's time is too far from the hub's clock (replay window is ±60 s)."""

    status, code = 401, "stale_request"


class ReplayedRequestError(ChannelProtocolError):
    """The request's nonce was already used by this signer within the replay window."""

    status, code = 409, "replayed_request"


class UnknownNodeError(ChannelProtocolError):
    """The node is not registered on this hub (or its owner no longer exists)."""

    status, code = 403, "unknown_node"


class NotAllowedError(ChannelProtocolError):
    """The signer is known but may not do this (not the owner, role not effective, ...)."""

    status, code = 403, "not_allowed"


class UnknownChannelError(ChannelProtocolError):
    """No channel of that name exists on this hub."""

    status, code = 404, "unknown_channel"


class ConflictError(ChannelProtocolError):
    """The request conflicts with existing state (channel exists, node owned by someone else)."""

    status, code = 409, "conflict"


class WitnessRefusedError(ConflictError):
    """A witness will not cosign a checkpoint (spec/witness.md §4): ``details`` says why in
    ``reason`` and carries the witness's ``size`` or a fork ``proof``."""

    code = "witness_refused"

    def __init__(self, message: str, details: dict) -> None:
        super().__init__(message)
        self.details = details

    def to_json(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class InvalidTokenError(ChannelProtocolError):
    """A pub-sub token is malformed, signed by another key, or for another hub."""

    status, code = 401, "invalid_token"


class ExpiredError(ChannelProtocolError):
    """A token or signed URL is past its expiry."""

    status, code = 401, "expired"


class CapabilityError(ChannelProtocolError):
    """Publishing or subscribing on a band the token does not allow."""

    status, code = 403, "capability_denied"


class TooLargeError(ChannelProtocolError):
    """A message or upload is larger than allowed."""

    status, code = 413, "too_large"


class HashMismatchError(ChannelProtocolError):
    """Uploaded content does not hash to the SHA-1 its ``sha1/`` path names."""

    status, code = 422, "hash_mismatch"


class QuotaExceededError(ChannelProtocolError):
    """A bucket write does not fit in the channel's quota on the hub, even after evicting every
    re-fetchable object (spec/bucket.md §6)."""

    status, code = 507, "quota_exceeded"


class RateLimitedError(ChannelProtocolError):
    """Too many messages on one connection; slow down."""

    status, code = 429, "rate_limited"


class UnsupportedVersionError(ChannelProtocolError):
    """The peer speaks another version of the protocol (a pub-sub v1 client at a v2 relay)."""

    status, code = 426, "unsupported_version"

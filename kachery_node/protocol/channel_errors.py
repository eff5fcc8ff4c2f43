"""Errors of the channel protocol: each carries the HTTP status and a stable code.

Like h11's ``LocalProtocolError`` / ``RemoteProtocolError``, the class says whose fault it is:
every error here is the *requester's* fault (bad input, missing rights); the hub answers it
with ``status`` and ``{"error": {"code": code, "message": ...}}`` and changes nothing.
:class:`HubRequestError` is what a client raises when the hub (or relay, or bucket) refused.
"""

from __future__ import annotations

from ..errors import KacheryError


class ChannelProtocolError(KacheryError):
    """Base class: a request that the hub, relay or bucket refuses."""

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


class HubRequestError(KacheryError):
    """The hub, relay or bucket refused a request: ``status``, ``code`` and its message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        # status 0: no HTTP answer at all (the host could not be reached): no "HTTP 0" to show
        super().__init__(f"{message} ({code}, HTTP {status})" if status else message)
        self.status = status
        self.code = code
        self.message = message

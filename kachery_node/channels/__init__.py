"""Channels: names, roles and bands, signed requests, tokens, signed URLs and membership.

Pure protocol logic (no network, no clocks of its own), shared by the hub, the relay, the bucket
and the node. See spec/hub.md and spec/pubsub.md.
"""

from .envelope import MAX_SKEW_MS, make_body, sign_body, verify_request
from .errors import (
    BadSignatureError,
    CapabilityError,
    ChannelProtocolError,
    ConflictError,
    ExpiredError,
    HashMismatchError,
    HubRequestError,
    InvalidChannelNameError,
    InvalidPathError,
    InvalidTokenError,
    MalformedRequestError,
    NotAllowedError,
    RateLimitedError,
    ReplayedRequestError,
    StaleRequestError,
    TooLargeError,
    UnknownChannelError,
    UnknownNodeError,
)
from .membership import MEMBERSHIP_SUBFEED, Membership, MembershipError, import_segment
from .names import validate_channel_name
from .roles import BANDS, ROLE_BANDS, ROLES, band_name, capabilities, effective_roles, upload_role
from .signed_urls import UploadGrant, sign_upload_url, validate_object_key, verify_upload
from .tokens import DEFAULT_TOKEN_TTL_MS, TokenClaims, issue_token, verify_token

__all__ = [
    "BANDS", "DEFAULT_TOKEN_TTL_MS", "MAX_SKEW_MS", "MEMBERSHIP_SUBFEED", "ROLES", "ROLE_BANDS",
    "BadSignatureError", "CapabilityError", "ChannelProtocolError", "ConflictError", "ExpiredError",
    "HashMismatchError", "HubRequestError", "InvalidChannelNameError", "InvalidPathError",
    "InvalidTokenError", "MalformedRequestError", "Membership", "MembershipError", "NotAllowedError",
    "RateLimitedError", "ReplayedRequestError", "StaleRequestError", "TokenClaims", "TooLargeError",
    "UnknownChannelError", "UnknownNodeError", "UploadGrant", "band_name", "capabilities",
    "effective_roles", "import_segment", "issue_token", "make_body", "sign_body", "sign_upload_url",
    "upload_role", "validate_channel_name", "validate_object_key", "verify_request", "verify_token",
    "verify_upload",
]

"""One error tree (kachery_node/errors.py) whose branches say whose fault a failure is."""

from __future__ import annotations

import pytest

import kachery_feeds as kf
import kachery_node as kn
from kachery_node.protocol.feed_bucket import HeadError, parse_head
from kachery_node.protocol.membership import MembershipError
from kachery_node.protocol.node_messages import EnvelopeError

#: Every error class kachery_node had before the tree (kachery_node/errors.py,
#: protocol/channel_errors.py, daemon/errors.py), with the HTTP status and code of the channel
#: errors: all still importable from kachery_node, all with the same status and code.
CHANNEL_ERRORS = {
    "ChannelProtocolError": (400, "bad_request"), "MalformedRequestError": (400, "malformed_request"),
    "InvalidChannelNameError": (400, "invalid_channel_name"), "InvalidPathError": (400, "invalid_path"),
    "BadSignatureError": (401, "bad_signature"), "StaleRequestError": (401, "stale_request"),
    "ReplayedRequestError": (409, "replayed_request"), "UnknownNodeError": (403, "unknown_node"),
    "NotAllowedError": (403, "not_allowed"), "UnknownChannelError": (404, "unknown_channel"),
    "ConflictError": (409, "conflict"), "InvalidTokenError": (401, "invalid_token"),
    "ExpiredError": (401, "expired"), "CapabilityError": (403, "capability_denied"),
    "TooLargeError": (413, "too_large"), "HashMismatchError": (422, "hash_mismatch"),
    "RateLimitedError": (429, "rate_limited"),
}
OTHER_ERRORS = ["HubRequestError", "KacheryError", "NotFoundError", "InvalidUriError",
                "CorruptedFileError", "LinkedFileChangedError", "UnsafePickleError",
                "PickleTooLargeError", "InvalidDataError", "NotInitializedError", "ConfigError",
                "DaemonError", "DaemonNotRunningError", "DaemonConnectionLostError"]


@pytest.mark.parametrize("name", sorted(CHANNEL_ERRORS) + OTHER_ERRORS)
def test_every_former_error_class_is_importable_from_kachery_node(name):
    cls = getattr(kn, name)
    assert issubclass(cls, kn.KacheryError) and name in kn.__all__
    if name in CHANNEL_ERRORS:
        err = cls("why")
        assert (err.status, err.code) == CHANNEL_ERRORS[name]
        assert err.to_json() == {"error": {"code": CHANNEL_ERRORS[name][1], "message": "why"}}


def test_the_four_faults_are_four_branches():
    faults = [kn.InternalError, kn.RemoteProtocolError, kn.UsageError, kn.ConfigError]
    for i, a in enumerate(faults):
        for b in faults[i + 1:]:
            assert not issubclass(a, b) and not issubclass(b, a)
    assert issubclass(kn.LocalProtocolError, kn.InternalError)
    assert issubclass(kn.UsageError, ValueError)  # bad arguments stay ValueErrors


def test_whose_fault_each_error_is():
    for remote in (EnvelopeError, HeadError, MembershipError, kn.ChannelProtocolError, kn.BadSignatureError):
        assert issubclass(remote, kn.RemoteProtocolError), remote
    for usage in (kn.InvalidUriError, kn.InvalidDataError):
        assert issubclass(usage, kn.UsageError), usage
    from kachery_node.identity import IdentityError

    for config in (kn.NotInitializedError, IdentityError):
        assert issubclass(config, kn.ConfigError), config


def test_one_invalid_uri_error_for_files_and_feeds():
    """kachery_node.InvalidUriError is a kachery_feeds.InvalidUriError: a caller catching either
    catches both kinds of bad URI."""
    assert issubclass(kn.InvalidUriError, kf.InvalidUriError)
    with pytest.raises(kf.InvalidUriError):
        kn.parse_uri("sha1://not-hex")
    with pytest.raises(kn.UsageError):
        kn.parse_uri("sha1://not-hex")


def test_a_malformed_bucket_head_is_the_peers_fault():
    with pytest.raises(kn.RemoteProtocolError):
        parse_head(b"{}")
    with pytest.raises(ValueError):  # as before
        parse_head(b"[]")

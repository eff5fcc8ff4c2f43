"""The original kachery's signed subfeed messages, and its rules for verifying them.

Theory of operation
-------------------
The original daemon stored each message of a subfeed as the canonical JSON
(:mod:`.original_canonical_json`) of a *SignedSubfeedMessage*::

    {"body": {"message": <payload>, "messageNumber": n, "previousSignature": <128 hex>,
              "timestamp": <ms>},
     "signature": <128 hex>}

``previousSignature`` is absent for message 0 (never ``null``); ``metaData`` (an object) may
appear in ``body``; no other keys are allowed anywhere. The signature is Ed25519 by the feed's
key (the feed ID is its public key) over ``SHA-1(UTF-8(canonical_json(body)))``, the 20 raw
bytes; signatures from kachery-p2p sign the canonical JSON bytes themselves ("legacy" form), and
a faithful verifier accepts both (spec/legacy.md §1).

Rules (:func:`verify_chain`), all of them checked, for a whole subfeed read from position 0:

1. each message has the shape above (strict keys; ``messageNumber`` and ``timestamp`` integers
   ≥ 0; ``message`` an object or array; signatures 128 hex characters);
2. message *i* has ``messageNumber == i``;
3. message 0 has no ``previousSignature``; message *i > 0* has that of message *i − 1*;
4. every signature verifies under the feed ID, in the SHA-1 form or the legacy form.

A subfeed that breaks any rule is refused whole (:class:`OriginalMessageError` names the
message and the rule): the original daemon, too, refused to load such a subfeed.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import nacl.bindings
import nacl.exceptions

from ..errors import KacheryError
from .original_canonical_json import NotCanonicalizableError, canonical_json

_HEX128 = re.compile(r"[0-9a-fA-F]{128}")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_BODY_KEYS = {"message", "messageNumber", "previousSignature", "timestamp", "metaData"}
_REQUIRED_BODY_KEYS = {"message", "messageNumber", "timestamp"}


class OriginalMessageError(KacheryError):
    """A message of an original subfeed breaks the original's rules (``position`` says which)."""

    def __init__(self, message: str, *, position: int | None = None) -> None:
        super().__init__(message)
        self.position = position


@dataclass(frozen=True)
class OriginalMessage:
    """One verified message of an original subfeed."""

    number: int
    payload: Any
    timestamp_ms: int
    signature: str
    #: "sha1" (the original daemon's signatures) or "legacy" (kachery-p2p's, without the SHA-1)
    scheme: str
    #: the exact text the signature covers, canonical_json(body)
    body_text: str


def signing_digest(body: dict[str, Any]) -> bytes:
    """The 20 bytes the original signs: ``SHA-1(UTF-8(canonical_json(body)))``."""
    return hashlib.sha1(canonical_json(body).encode("utf-8", "surrogatepass")).digest()


def sign_body(seed: bytes, body: dict[str, Any]) -> str:
    """The original daemon's signature of ``body`` by the key with 32-byte ``seed`` (128 hex).
    For tests and test vectors: this node never signs in the original's format."""
    _pk, sk = nacl.bindings.crypto_sign_seed_keypair(seed)
    return nacl.bindings.crypto_sign(signing_digest(body), sk)[:64].hex()


def signature_scheme(feed_id: str, body: dict[str, Any], signature: str) -> str | None:
    """``"sha1"`` or ``"legacy"`` if ``signature`` is the feed's signature of ``body`` in that
    form, else None."""
    if not (isinstance(feed_id, str) and _HEX64.fullmatch(feed_id)
            and isinstance(signature, str) and _HEX128.fullmatch(signature)):
        return None
    public_key, sig = bytes.fromhex(feed_id), bytes.fromhex(signature)
    try:
        text = canonical_json(body).encode("utf-8", "surrogatepass")
    except NotCanonicalizableError:
        return None
    for scheme, signed in (("sha1", hashlib.sha1(text).digest()), ("legacy", text)):
        try:
            nacl.bindings.crypto_sign_open(sig + signed, public_key)
            return scheme
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
            continue
    return None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_shape(signed: Any, position: int) -> None:
    """Rule 1: the SignedSubfeedMessage shape, strictly."""
    def fail(why: str) -> OriginalMessageError:
        return OriginalMessageError(f"message {position}: {why}", position=position)

    if not isinstance(signed, dict) or set(signed) != {"body", "signature"}:
        raise fail("not a signed message ({body, signature} and nothing else)")
    body = signed["body"]
    if not isinstance(body, dict):
        raise fail("its body is not an object")
    extra, missing = set(body) - _BODY_KEYS, _REQUIRED_BODY_KEYS - set(body)
    if extra or missing:
        raise fail(f"its body has unexpected keys {sorted(extra)} or lacks {sorted(missing)}")
    if not isinstance(signed["signature"], str) or not _HEX128.fullmatch(signed["signature"]):
        raise fail("its signature is not 128 hex characters")
    if not _is_count(body["messageNumber"]) or not _is_count(body["timestamp"]):
        raise fail("messageNumber and timestamp must be integers >= 0")
    if not isinstance(body["message"], dict | list):
        raise fail("its message is not an object")
    if "previousSignature" in body and not (
            isinstance(body["previousSignature"], str) and _HEX128.fullmatch(body["previousSignature"])):
        raise fail("previousSignature is not 128 hex characters (absent, not null, for message 0)")
    if "metaData" in body and not isinstance(body["metaData"], dict):
        raise fail("metaData is not an object")


class ChainVerifier:
    """Verifies an original subfeed message by message, from number 0 on (the rules of the module
    docstring), keeping only the last signature: a subfeed of any length in bounded memory."""

    def __init__(self, feed_id: str) -> None:
        if not isinstance(feed_id, str) or not _HEX64.fullmatch(feed_id):
            raise OriginalMessageError(f"not an original feed ID (64 hex): {feed_id!r}")
        self.feed_id = feed_id.lower()
        self.count = 0
        self.last_signature: str | None = None

    def add(self, signed: Any) -> OriginalMessage:
        """Verify the next message; raise :class:`OriginalMessageError` if it breaks a rule."""
        i = self.count
        check_shape(signed, i)
        body, signature = signed["body"], signed["signature"]
        if body["messageNumber"] != i:
            raise OriginalMessageError(
                f"message {i}: it says it is message {body['messageNumber']}", position=i)
        prev = body.get("previousSignature")
        if (prev.lower() if prev else None) != self.last_signature:
            raise OriginalMessageError(
                f"message {i}: its previousSignature does not link to message {i - 1}"
                if i else "message 0: it has a previousSignature", position=i)
        scheme = signature_scheme(self.feed_id, body, signature)
        if scheme is None:
            raise OriginalMessageError(
                f"message {i}: its signature does not verify under feed {self.feed_id}", position=i)
        self.last_signature = signature.lower()
        self.count += 1
        return OriginalMessage(i, body["message"], body["timestamp"], self.last_signature, scheme,
                               canonical_json(body))


def verify_chain(feed_id: str, signed_messages: list[Any]) -> list[OriginalMessage]:
    """Verify a whole original subfeed (its messages from number 0, in order) under the rules of
    the module docstring; return them, or raise :class:`OriginalMessageError` for the first
    message that breaks one."""
    verifier = ChainVerifier(feed_id)
    return [verifier.add(m) for m in signed_messages]

"""The signing core under both kinds of signed envelope: node messages on pub-sub bands
(:mod:`.node_messages`) and requests to the hub (:mod:`.hub_requests`).

Theory of operation
-------------------
Both kinds sign the SHA-256 of exact bytes behind a *context* that names the purpose::

    signature = Ed25519(key, CONTEXT || SHA-256(signed bytes))

so a signature made for one purpose (a node message, a node's hub request, a person's hub
request, a feed message) cannot stand in for another. Both carry the signer's ID and the
signature as lowercase hex, a time (``time_ms``, the sender's clock) and a nonce; a receiver
refuses anything more than :data:`MAX_SKEW_MS` from its own clock and remembers each
``(signer, nonce)`` for :data:`REPLAY_WINDOW_MS` (twice the skew: long enough that a message
accepted at one end of the window cannot come back at the other).

Rules
-----
* Pure: no clock, no I/O. Callers pass ``now_ms``; the replay ledger is a value they own.
* Checks answer ``True``/``False`` (or the skew); each envelope kind raises its own error,
  so that a hub request fails with an HTTP status and a node message is merely dropped.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict

from kachery_feeds.jsontext import MAX_SAFE_INTEGER

from ..identity import Keypair, verify_signature

#: How far a signed time may be from the receiver's clock, either way.
MAX_SKEW_MS = 60_000
#: How long a receiver remembers a (signer, nonce): a replay must be older than this to get past
#: the ledger, and then it is also too old for the skew check.
REPLAY_WINDOW_MS = 2 * MAX_SKEW_MS
ID_HEX_CHARS = 64  # an Ed25519 public key: node ID, user ID, hub ID
SIGNATURE_HEX_CHARS = 128

_HEX = frozenset("0123456789abcdef")
_NONCE = re.compile(r"[A-Za-z0-9_-]+")


def signing_input(context: bytes, data: bytes) -> bytes:
    """What is signed: ``context || SHA-256(data)`` (the raw 32-byte digest)."""
    return context + hashlib.sha256(data).digest()


def sign(keypair: Keypair, context: bytes, data: bytes) -> bytes:
    """The 64-byte Ed25519 signature of ``data`` for the purpose ``context``."""
    return keypair.sign(signing_input(context, data))


def verify(signer_hex: str, context: bytes, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is ``signer_hex``'s signature of ``data`` for ``context``."""
    return verify_signature(signer_hex, signing_input(context, data), signature)


def is_lower_hex(value: str | bytes, length: int) -> bool:
    """Whether ``value`` is exactly ``length`` characters of ``0-9a-f`` (no uppercase: one
    spelling per key, so that IDs compare as strings)."""
    if isinstance(value, bytes | bytearray):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return False
    return isinstance(value, str) and len(value) == length and _HEX.issuperset(value)


def is_id(value: object) -> bool:
    """Whether ``value`` is a 64-hex key ID (node, user or hub)."""
    return isinstance(value, str | bytes) and is_lower_hex(value, ID_HEX_CHARS)


def is_signature_hex(value: object) -> bool:
    """Whether ``value`` is a 128-hex Ed25519 signature."""
    return isinstance(value, str | bytes) and is_lower_hex(value, SIGNATURE_HEX_CHARS)


def is_nonce(value: object, min_chars: int, max_chars: int = 64) -> bool:
    """Whether ``value`` is a nonce: ``min_chars``-``max_chars`` characters of ``[A-Za-z0-9_-]``."""
    return (type(value) is str and min_chars <= len(value) <= max_chars
            and _NONCE.fullmatch(value) is not None)


def is_time_ms(value: object) -> bool:
    """Whether ``value`` is a JSON integer time in milliseconds, in [0, 2^53-1]."""
    return type(value) is int and 0 <= value <= MAX_SAFE_INTEGER


def skew_ms(time_ms: int, now_ms: int) -> int:
    """How far a signed time is from the receiver's clock (positive: in its future)."""
    return time_ms - now_ms


def is_fresh(time_ms: int, now_ms: int, max_skew_ms: int = MAX_SKEW_MS) -> bool:
    """Whether ``time_ms`` is within ``max_skew_ms`` of ``now_ms``, either way."""
    return abs(skew_ms(time_ms, now_ms)) <= max_skew_ms


class ReplayLedger:
    """The (signer, nonce) pairs seen in the last :data:`REPLAY_WINDOW_MS`, in memory and bounded
    (a node's pub-sub receiver). The hub keeps the same ledger in its database
    (:meth:`kachery_node.hub.state.HubState.use_nonce`), with the same window, so that it
    survives a restart.

    >>> ledger = ReplayLedger()
    >>> ledger.record("a" * 64, "nonce123", now_ms=1000)
    True
    >>> ledger.record("a" * 64, "nonce123", now_ms=2000)
    False
    """

    def __init__(self, window_ms: int = REPLAY_WINDOW_MS, max_entries: int = 200_000) -> None:
        self._seen: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._window_ms = window_ms
        self._max = max_entries

    def record(self, signer: str, nonce: str, *, now_ms: int) -> bool:
        """Remember ``(signer, nonce)``; False if it was already seen within the window (a
        replay). Pairs older than the window, or beyond ``max_entries``, are forgotten first."""
        while self._seen and (
            len(self._seen) >= self._max or next(iter(self._seen.values())) < now_ms - self._window_ms
        ):
            self._seen.popitem(last=False)
        key = (signer, nonce)
        if key in self._seen:
            return False
        self._seen[key] = now_ms
        return True

    def __len__(self) -> int:
        return len(self._seen)

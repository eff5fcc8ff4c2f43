"""Checkpoints of subfeeds and witnesses' cosignatures on them (spec/witness.md).

A **checkpoint** says "subfeed S of feed F had N messages, the last of which hashes to H". Its
text follows C2SP tlog-checkpoint (three LF-terminated lines: origin, size, hash)::

    kachery-feed/<feed ID>/<subfeed hash>
    <N>
    <H, 64 lowercase hex>

The owner vouches for it with the signature already on message ``N - 1`` (every stored count
ends at a signed message), so a checkpoint is *derived* from that wire line, which travels with
it as ``last``; no separate owner signature exists.

A **cosignature** is C2SP tlog-cosignature v1 (Ed25519): a witness signs
``"cosignature/v1\\ntime <t>\\n" + checkpoint text`` and writes the note signature line
``— kachery-witness/<key hex> base64(key ID || u64 t || signature)``.

A **witnessed checkpoint** (the bucket's ``.../checkpoint`` object, the ``subfeedCheckpoint``
message) is the JSON object ``{"type":"kachery-witnessed-checkpoint","v":1,"checkpoint":…,
"last":…,"cosignatures":[…]}``. Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing
import orjson

from .errors import VerificationError
from .jsontext import MAX_SAFE_INTEGER, JsonTextError
from .jsontext import loads as loads_json
from .messages import parse_message, signature_is_valid

ORIGIN_PREFIX = "kachery-feed/"
COSIGNATURE_HEADER = b"cosignature/v1\n"
WITNESS_NAME_PREFIX = "kachery-witness/"
ED25519_KEY_TYPE = b"\x04"  # C2SP signed-note signature type of Ed25519 cosignatures
MAX_TIMESTAMP = 2**63 - 1
_SIG_LINE = re.compile(r"\u2014 kachery-witness/([0-9a-f]{64}) ([A-Za-z0-9+/]{102}==)")
_CHECKPOINT = re.compile(
    r"kachery-feed/([0-9a-f]{64})/([0-9a-f]{40})\n(0|[1-9][0-9]{0,15})\n([0-9a-f]{64})\n")
_OBJECT_KEYS = frozenset({"type", "v", "checkpoint", "last", "cosignatures"})
MAX_COSIGNATURES = 64


class CheckpointError(VerificationError):
    """A checkpoint, cosignature or witnessed checkpoint is malformed or does not verify."""


@dataclass(frozen=True)
class Checkpoint:
    """Subfeed ``subfeed_hash`` of feed ``feed_id`` had ``size`` messages, message ``size - 1``
    hashing to ``last_hash`` (32 raw bytes)."""

    feed_id: str
    subfeed_hash: str
    size: int
    last_hash: bytes

    def text(self) -> bytes:
        """The checkpoint's note body (three LF-terminated lines)."""
        return (f"{ORIGIN_PREFIX}{self.feed_id}/{self.subfeed_hash}\n{self.size}\n"
                f"{self.last_hash.hex()}\n").encode()


def parse_checkpoint(text: bytes | str) -> Checkpoint:
    """Parse a checkpoint's text exactly (spec/witness.md §1); raises :class:`CheckpointError`."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError("checkpoint is not UTF-8") from None
    m = _CHECKPOINT.fullmatch(text)
    if m is None:
        raise CheckpointError("malformed checkpoint: expected 'kachery-feed/<64 hex>/<40 hex>', the "
                              "size in decimal and the hash in 64 hex, each line ending in LF")
    size = int(m.group(3))
    if not 1 <= size <= MAX_SAFE_INTEGER:
        raise CheckpointError("checkpoint size must be in [1, 2^53-1]")
    return Checkpoint(m.group(1), m.group(2), size, bytes.fromhex(m.group(4)))


def checkpoint_from_last(feed_id: str, subfeed_hash: str, last: bytes) -> Checkpoint:
    """The checkpoint that the signed wire line ``last`` (message ``N - 1``) vouches for; raises
    :class:`CheckpointError` unless it is a valid, *signed* message of that subfeed."""
    try:
        m = parse_message(last, feed_id, subfeed_hash)
    except VerificationError as exc:
        raise CheckpointError(f"checkpoint's last message: {exc}") from None
    if m.signature is None:
        raise CheckpointError("a checkpoint's last message must be signed")
    if not signature_is_valid(bytes.fromhex(feed_id), m.hash, m.signature):
        raise CheckpointError("the checkpoint's last message has an invalid signature")
    return Checkpoint(feed_id, subfeed_hash, m.number + 1, m.hash)


# ----------------------------------------------------------------------------- cosignatures
def witness_name(public_key_hex: str) -> str:
    """A witness's C2SP key name: ``kachery-witness/<its Ed25519 public key, 64 hex>``."""
    return WITNESS_NAME_PREFIX + public_key_hex


def key_id(public_key_hex: str) -> bytes:
    """C2SP tlog-cosignature key ID: SHA-256(name || LF || 0x04 || public key)[:4]."""
    return hashlib.sha256(witness_name(public_key_hex).encode() + b"\n" + ED25519_KEY_TYPE
                          + bytes.fromhex(public_key_hex)).digest()[:4]


def cosigned_message(checkpoint: Checkpoint, timestamp: int) -> bytes:
    """The bytes a witness signs: ``cosignature/v1``, ``time <t>``, then the checkpoint text."""
    return COSIGNATURE_HEADER + f"time {timestamp}\n".encode() + checkpoint.text()


@dataclass(frozen=True)
class Cosignature:
    """A witness's (``witness``: its public key, 64 hex) statement that at ``timestamp``
    (POSIX seconds) ``checkpoint`` was the largest consistent one it had seen."""

    witness: str
    timestamp: int
    signature: bytes

    def line(self) -> str:
        """The C2SP note signature line (no LF)."""
        blob = key_id(self.witness) + self.timestamp.to_bytes(8, "big") + self.signature
        return f"\u2014 {witness_name(self.witness)} {base64.b64encode(blob).decode()}"


def cosign(signing_key: nacl.signing.SigningKey, checkpoint: Checkpoint, timestamp: int) -> Cosignature:
    """Cosign ``checkpoint`` at ``timestamp`` (seconds) with a witness's Ed25519 key."""
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise ValueError("timestamp out of range")
    sig = signing_key.sign(cosigned_message(checkpoint, timestamp)).signature
    return Cosignature(signing_key.verify_key.encode().hex(), timestamp, sig)


def parse_cosignature_line(line: str) -> Cosignature:
    """Parse a note signature line of a kachery witness (the key ID must match its name)."""
    m = _SIG_LINE.fullmatch(line) if isinstance(line, str) else None
    if m is None:
        raise CheckpointError("malformed cosignature line: expected "
                              "'\u2014 kachery-witness/<64 hex> <base64 of 76 bytes>'")
    witness, blob = m.group(1), base64.b64decode(m.group(2), validate=True)
    if len(blob) != 76 or base64.b64encode(blob).decode() != m.group(2):
        raise CheckpointError("malformed cosignature: not 4 + 8 + 64 bytes in canonical base64")
    if blob[:4] != key_id(witness):
        raise CheckpointError("cosignature key ID does not match its witness name")
    timestamp = int.from_bytes(blob[4:12], "big")
    if timestamp > MAX_TIMESTAMP:
        raise CheckpointError("cosignature timestamp exceeds 2^63-1")
    return Cosignature(witness, timestamp, blob[12:])


def verify_cosignature(checkpoint: Checkpoint, cosignature: Cosignature) -> bool:
    """Whether ``cosignature`` is a valid signature of ``checkpoint`` by its witness."""
    try:
        nacl.signing.VerifyKey(bytes.fromhex(cosignature.witness)).verify(
            cosigned_message(checkpoint, cosignature.timestamp), cosignature.signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        return False
    return True


# ----------------------------------------------------------------------------- witnessed checkpoints
@dataclass(frozen=True)
class WitnessedCheckpoint:
    """A checkpoint, the owner-signed last message that derives it, and the cosignatures that
    verified (by witness key; at most one each, the latest)."""

    checkpoint: Checkpoint
    last: bytes
    cosignatures: tuple[Cosignature, ...]

    def witnesses(self) -> list[str]:
        return [c.witness for c in self.cosignatures]

    def encode(self) -> bytes:
        return orjson.dumps({"type": "kachery-witnessed-checkpoint", "v": 1,
                             "checkpoint": self.checkpoint.text().decode(),
                             "last": self.last.decode("utf-8"),
                             "cosignatures": [c.line() for c in self.cosignatures]})

    def merged(self, other: WitnessedCheckpoint) -> WitnessedCheckpoint:
        """This checkpoint with ``other``'s cosignatures added (same checkpoint only); for each
        witness the latest cosignature is kept."""
        if other.checkpoint != self.checkpoint:
            raise ValueError("can only merge cosignatures of the same checkpoint")
        return witnessed(self.checkpoint, self.last, [*self.cosignatures, *other.cosignatures])


def witnessed(checkpoint: Checkpoint, last: bytes, cosignatures: list[Cosignature]) -> WitnessedCheckpoint:
    """A :class:`WitnessedCheckpoint` keeping, per witness, its latest valid cosignature."""
    best: dict[str, Cosignature] = {}
    for c in cosignatures:
        newer = c.witness not in best or c.timestamp > best[c.witness].timestamp
        if newer and verify_cosignature(checkpoint, c):
            best[c.witness] = c
    return WitnessedCheckpoint(checkpoint, last, tuple(sorted(best.values(), key=lambda c: c.witness)))


def parse_witnessed_checkpoint(data: bytes) -> WitnessedCheckpoint:
    """Parse and verify a witnessed checkpoint object (spec/witness.md §3): exactly its keys,
    ``last`` derives ``checkpoint``, every cosignature line well formed. Cosignatures that do
    not verify are dropped (as C2SP clients ignore lines they cannot verify); the caller counts
    the witnesses it trusts. Raises :class:`CheckpointError`."""
    try:
        d = loads_json(data)
    except JsonTextError as exc:
        raise CheckpointError(f"malformed witnessed checkpoint: {exc}") from None
    if type(d) is not dict or d.keys() != _OBJECT_KEYS:
        raise CheckpointError("malformed witnessed checkpoint: expected exactly the keys "
                              f"{sorted(_OBJECT_KEYS)}")
    if d["type"] != "kachery-witnessed-checkpoint" or type(d["v"]) is not int or d["v"] != 1:
        raise CheckpointError("not a kachery witnessed checkpoint (v1)")
    if type(d["checkpoint"]) is not str or type(d["last"]) is not str:
        raise CheckpointError("malformed witnessed checkpoint: 'checkpoint' and 'last' must be strings")
    lines = d["cosignatures"]
    if type(lines) is not list or len(lines) > MAX_COSIGNATURES:
        raise CheckpointError(f"'cosignatures' must be a list of at most {MAX_COSIGNATURES} lines")
    checkpoint = parse_checkpoint(d["checkpoint"])
    last = d["last"].encode("utf-8")
    derived = checkpoint_from_last(checkpoint.feed_id, checkpoint.subfeed_hash, last)
    if derived != checkpoint:
        raise CheckpointError("the checkpoint is not the one its last message vouches for")
    return witnessed(checkpoint, last, [parse_cosignature_line(x) for x in lines])

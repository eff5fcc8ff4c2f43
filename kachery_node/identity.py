"""Who this node is and who owns it: Ed25519 keys kept in files only their owner can read.

A kachery node has two keys:

* the **node key**, in ``<storage>/node.key``: its public half (64 hex) is the node ID;
* the **user key** of the person who runs it, in ``$KACHERY_USER_DIR/user.key``
  (default ``~/.kachery-user``): its public half is the user ID. A person uses the same
  user key for all their nodes and to sign in to a hub; as in the original's security model a
  node is trusted only together with its owner.

Both files hold the 32-byte Ed25519 seed as 64 lowercase hex characters and a newline, with
mode 0600. Loading refuses a key file that group or others can read.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.signing

from .errors import ConfigError

NODE_KEY_FILENAME = "node.key"
USER_KEY_FILENAME = "user.key"


class IdentityError(ConfigError):
    """A key file is missing, unreadable, malformed or too widely readable (a configuration
    problem: fix the file or run ``kachery init``)."""


@dataclass(frozen=True)
class Keypair:
    """An Ed25519 key pair. ``public_hex`` is the 64-hex ID (node ID, user ID)."""

    signing_key: nacl.signing.SigningKey

    @property
    def public_hex(self) -> str:
        return self.signing_key.verify_key.encode().hex()

    def sign(self, data: bytes) -> bytes:
        """Return the 64-byte detached Ed25519 signature of ``data``."""
        return self.signing_key.sign(data).signature

    @classmethod
    def generate(cls) -> Keypair:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed_hex(cls, seed_hex: str) -> Keypair:
        try:
            seed = bytes.fromhex(seed_hex)
        except ValueError as exc:
            raise IdentityError("key is not hex") from exc
        if len(seed) != 32:
            raise IdentityError("key must be 32 bytes (64 hex characters)")
        return cls(nacl.signing.SigningKey(seed))

    def seed_hex(self) -> str:
        return self.signing_key.encode().hex()


def verify_signature(public_hex: str, data: bytes, signature: bytes) -> bool:
    """True if ``signature`` is a valid Ed25519 signature of ``data`` by ``public_hex``."""
    try:
        key = nacl.signing.VerifyKey(bytes.fromhex(public_hex))
        key.verify(data, signature)
        return True
    except (ValueError, TypeError, nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
        return False


def default_user_dir() -> Path:
    return Path(os.environ.get("KACHERY_USER_DIR") or Path.home() / ".kachery-user")


def write_key_file(path: Path, keypair: Keypair) -> None:
    """Write a key file readable only by its owner; refuses to overwrite an existing key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(keypair.seed_hex() + "\n")


def read_key_file(path: Path) -> Keypair:
    """Load a key file written by :func:`write_key_file`."""
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise IdentityError(f"no key at {path}: run `kachery init` first") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            f"{path} can be read by other users; run `chmod 600 {path}` and try again"
        )
    return Keypair.from_seed_hex(path.read_text().strip())


def load_or_create_key(path: Path) -> tuple[Keypair, bool]:
    """Return the key at ``path``, creating it first if missing; the flag says it was created."""
    if path.exists():
        return read_key_file(path), False
    keypair = Keypair.generate()
    try:
        write_key_file(path, keypair)
    except FileExistsError:
        return read_key_file(path), False  # another process created it first
    return keypair, True


def load_node_key(storage_dir: Path) -> Keypair:
    return read_key_file(Path(storage_dir) / NODE_KEY_FILENAME)


def load_user_key(user_dir: Path | None = None) -> Keypair:
    return read_key_file(Path(user_dir or default_user_dir()) / USER_KEY_FILENAME)

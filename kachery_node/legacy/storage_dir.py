"""Recognising a storage directory of the original kachery, without changing anything in it.

The original daemon kept in ``$KACHERY_STORAGE_DIR`` (spec/legacy.md): ``sha1/``
(files, and ``.link`` files), ``feeds.db``, ``mutables.db``, ``private.pem`` and
``public.pem`` (the node key), ``kachery-node-id``, ``owner``, ``client-auth`` and
``kachery.yaml`` (``maxCacheSizeGiB``). What this node does with each (spec/legacy.md §2):

* ``sha1/``: used as it is (same layout); ``.link`` files are followed;
* ``mutables.db``: used as it is, in its own table ``(sha1, key, value)``
  (storage/mutables.py), so the original's values stay readable by both;
* ``feeds.db``: the original's feed database cannot hold this node's feeds; it is left
  unchanged and feed operations say so until ``kachery feed import-legacy`` imports it;
* ``private.pem``: ``kachery init`` takes the node key from it, so the node keeps its ID;
* ``kachery.yaml``: ``kachery init`` copies ``maxCacheSizeGiB`` to ``config.toml``.

Databases are opened read-only here (``mode=ro``): reading never converts them or switches them
to WAL.
"""

from __future__ import annotations

import base64
import os
import re
import sqlite3
import stat
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import KacheryError

FEEDS_DB = "feeds.db"
MUTABLES_DB = "mutables.db"
PRIVATE_PEM = "private.pem"
NODE_ID_FILE = "kachery-node-id"
CACHE_CONFIG = "kachery.yaml"
#: Where ``kachery feed import-legacy`` moves the original feeds.db (unchanged) before importing.
ORIGINAL_FEEDS_DB = "feeds.original.db"

# PKCS#8 DER of an Ed25519 private key: this prefix, then the 32-byte seed (§1.1).
_PKCS8_ED25519_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
_CACHE_CAP = re.compile(r"^\s*maxCacheSizeGiB\s*:\s*([0-9]+(?:\.[0-9]+)?)\s*(?:#.*)?$", re.M)


class OriginalStorageError(KacheryError):
    """Something the original kachery left cannot be used as it is; the message says what to do."""


class OriginalFeedsDatabaseError(OriginalStorageError):
    """``<storage>/feeds.db`` is the original kachery's: this node's feeds cannot live in it."""


def read_only(path: Path) -> sqlite3.Connection:
    """A connection that cannot write ``path`` (nor create it, nor change its journal mode)."""
    uri = "file:" + urllib.parse.quote(str(Path(path).absolute())) + "?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


@dataclass(frozen=True)
class OriginalFeedsDb:
    """What an original ``feeds.db`` holds."""

    path: Path
    feeds: int
    subfeeds: int
    messages: int


def original_feeds_db(path: Path) -> OriginalFeedsDb | None:
    """The summary of ``path`` if it is the original's feeds database, else None (absent, empty,
    this node's own store, or not SQLite)."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return None
        conn = read_only(path)
    except (OSError, sqlite3.Error):
        return None
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] != 0:
            return None
        if not {"feeds", "subfeeds", "subfeedMessages"} <= _tables(conn):
            return None
        counts = [conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                  for t in ("feeds", "subfeeds", "subfeedMessages")]
        return OriginalFeedsDb(path, *counts)
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def feeds_db_error(storage_dir: Path, found: OriginalFeedsDb) -> OriginalFeedsDatabaseError:
    """The error feed operations raise while ``feeds.db`` is the original's."""
    return OriginalFeedsDatabaseError(
        f"{found.path} is the original kachery's feed database ({found.feeds} feeds, "
        f"{found.subfeeds} subfeeds, {found.messages} messages); this node's feeds cannot be "
        "stored in it, and it was left unchanged. Run `kachery feed import-legacy` (with "
        f"KACHERY_STORAGE_DIR={storage_dir}): it checks every signature, moves the file to "
        f"{ORIGINAL_FEEDS_DB} (unchanged) and imports its subfeeds into a new feeds.db. Or move "
        "the file elsewhere yourself to start with no feeds.")


def is_original_mutables_table(conn: sqlite3.Connection) -> bool:
    """Whether ``conn`` holds the original's ``mutables(sha1, key, value)`` table."""
    columns = {r[1] for r in conn.execute("PRAGMA table_info(mutables)")}
    return {"sha1", "key", "value"} <= columns


def node_seed_from_private_pem(path: Path) -> bytes:
    """The 32-byte Ed25519 seed of the original's node key file (PKCS#8 PEM, one base64 line).
    Raises :class:`OriginalStorageError` saying what is wrong (mode, format)."""
    path = Path(path)
    st = path.stat()
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise OriginalStorageError(
            f"{path} (the original's node key) can be read by other users, so it may be known "
            f"to them; the original refused it too. Run `chmod 600 {path}` and `kachery init` "
            "again to keep this node's ID, or move it away to give the node a new ID.")
    lines = [line.strip() for line in path.read_text(errors="replace").strip().splitlines()]
    body = "".join(lines[1:-1]) if len(lines) >= 3 else ""
    try:
        der = base64.b64decode(body, validate=True)
    except ValueError:
        der = b""
    if (len(lines) < 3 or lines[0] != "-----BEGIN PRIVATE KEY-----"
            or lines[-1] != "-----END PRIVATE KEY-----" or len(der) != 48
            or not der.startswith(_PKCS8_ED25519_PREFIX)):
        raise OriginalStorageError(
            f"{path} is not an Ed25519 private key in the original's format (PKCS#8 PEM); move "
            "it away and run `kachery init` again to give the node a new ID")
    return der[len(_PKCS8_ED25519_PREFIX):]


def original_cache_cap_gib(storage_dir: Path) -> float | None:
    """``maxCacheSizeGiB`` from the original's ``kachery.yaml`` (decimal GB), if set."""
    try:
        text = (Path(storage_dir) / CACHE_CONFIG).read_text(errors="replace")
    except OSError:
        return None
    m = _CACHE_CAP.search(text)
    return float(m.group(1)) if m and float(m.group(1)) > 0 else None


@dataclass
class OriginalStorage:
    """What ``kachery init`` found of the original kachery in a storage directory."""

    directory: Path
    found: list[str] = field(default_factory=list)
    feeds_db: OriginalFeedsDb | None = None
    mutables_entries: int | None = None
    node_key_pem: bool = False
    cache_cap_gib: float | None = None

    @property
    def is_original(self) -> bool:
        return bool(self.found)

    def notes(self, *, node_id_kept: bool | None) -> list[str]:
        """One line per thing found, saying what this node does with it."""
        d = self.directory
        out = []
        if (d / "sha1").is_dir():
            out.append("sha1/: used as it is (same layout; .link files are followed)")
        if self.mutables_entries is not None:
            out.append(f"{MUTABLES_DB}: {self.mutables_entries} values, used as they are in the "
                       "original's table (not converted, not switched to WAL)")
        if self.feeds_db is not None:
            f = self.feeds_db
            out.append(f"{FEEDS_DB}: the original's ({f.feeds} feeds, {f.subfeeds} subfeeds, "
                       f"{f.messages} messages), left unchanged; feeds on this node need "
                       "`kachery feed import-legacy`")
        if self.node_key_pem:
            out.append(f"{PRIVATE_PEM}: " + (
                "the node key was taken from it, so the node ID is the original's; the file is "
                "left as it is" if node_id_kept else
                "not used (this node already had its own node.key)"))
        if self.cache_cap_gib is not None:
            out.append(f"{CACHE_CONFIG}: maxCacheSizeGiB {self.cache_cap_gib:g} (see config.toml's "
                       "max_cache_size_gib)")
        return out


def inspect_storage(storage_dir: Path) -> OriginalStorage:
    """Look for what the original kachery leaves in ``storage_dir``; read-only."""
    d = Path(storage_dir)
    found = OriginalStorage(d)
    found.feeds_db = original_feeds_db(d / FEEDS_DB)
    if found.feeds_db is not None:
        found.found.append(FEEDS_DB)
    if (d / MUTABLES_DB).exists():
        try:
            conn = read_only(d / MUTABLES_DB)
            try:
                if is_original_mutables_table(conn):
                    found.mutables_entries = conn.execute("SELECT count(*) FROM mutables").fetchone()[0]
                    found.found.append(MUTABLES_DB)
            finally:
                conn.close()
        except sqlite3.Error:
            pass
    if (d / PRIVATE_PEM).exists():
        found.node_key_pem = True
        found.found.append(PRIVATE_PEM)
    found.cache_cap_gib = original_cache_cap_gib(d)
    if found.cache_cap_gib is not None:
        found.found.append(CACHE_CONFIG)
    return found


def write_text_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace ``path`` with ``text`` (a temporary file renamed over it)."""
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)

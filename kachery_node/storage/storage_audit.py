"""Auditing a storage directory (``Storage.verify``, ``kachery fsck``), and repairing it from a
channel.

A stored file is rehashed on load only when its stat signature changed since it was last
verified, and feeds are never re-verified on read (spec/storage.md §4): silent rot or an edit
that keeps the stat goes unnoticed until another node refuses the bytes. The audit reads
everything back and reports what is wrong, changing nothing:

* the SQLite files (``files.db``, ``mutables.db``): ``PRAGMA quick_check``; every mutable
  value is JSON;
* every file in the index: present under ``sha1/``, of the recorded size, its manifest (when it
  has one) stored and describing it; with ``hashes=True`` its bytes hash to its SHA-1 and its
  chunks to the manifest's;
* with ``hashes=True``, files under ``sha1/`` the index does not know (e.g. copied from an
  original kachery storage): their bytes hash to their name;
* every link: the linked file is still there and unchanged (or, with ``hashes=True``, still
  hashes the same);
* the feeds (``kachery_feeds.Store.verify``).

:func:`repair` then deletes each bad stored copy and has the daemon fetch it again from a
channel; a subfeed this node follows (but does not own) is cut back before its first bad
message and fetched again the same way. The owner's own feeds cannot be repaired from a
channel by this node's daemon (it never follows its own feeds); they are reported.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CorruptedFileError, KacheryError
from .file_index import hash_file, stat_signature
from .file_uris import build_uri, is_sha1_hex
from .manifest import parse_manifest

if TYPE_CHECKING:
    import kachery_feeds

    from .node_storage import Storage


@dataclass(frozen=True)
class StorageProblem:
    """Something wrong in the storage: ``kind`` is ``database``, ``file``, ``manifest``,
    ``link`` or ``mutable``; ``sha1`` the content at fault, ``path`` where."""

    kind: str
    message: str
    sha1: str | None = None
    path: str | None = None

    def __str__(self) -> str:
        where = f"sha1://{self.sha1}" if self.sha1 else (self.path or self.kind)
        return f"{self.kind} {where}: {self.message}"


@dataclass
class StorageReport:
    """What :func:`verify_storage` found. ``ok`` when neither it nor the feeds report a problem."""

    directory: str
    hashes: bool
    files: int = 0
    bytes_hashed: int = 0
    links: int = 0
    mutables: int = 0
    problems: list[StorageProblem] = field(default_factory=list)
    feeds: kachery_feeds.StoreReport | None = None

    @property
    def ok(self) -> bool:
        return not self.problems and (self.feeds is None or self.feeds.ok)

    def bad_files(self) -> list[str]:
        """SHA-1s of stored copies that are missing or wrong (what :func:`repair` re-fetches)."""
        return sorted({p.sha1 for p in self.problems if p.kind in ("file", "manifest") and p.sha1})

    def to_json(self) -> dict:
        return {"directory": self.directory, "ok": self.ok, "hashes": self.hashes,
                "files": self.files, "bytes_hashed": self.bytes_hashed, "links": self.links,
                "mutables": self.mutables,
                "problems": [{"kind": p.kind, "message": p.message, "sha1": p.sha1, "path": p.path}
                             for p in self.problems],
                "feeds": self.feeds.to_json() if self.feeds is not None else None}


def verify_storage(storage: Storage, *, hashes: bool = False, feeds: bool = True) -> StorageReport:
    """Check ``storage`` (see the module docstring); ``hashes=True`` rereads every stored and
    linked file. Changes nothing."""
    report = StorageReport(str(storage.directory), hashes)
    for name in ("files.db", "mutables.db"):
        if (storage.directory / name).exists():
            _quick_check(storage.directory / name, report)
    _check_mutables(storage.directory / "mutables.db", report)
    indexed = _check_indexed_files(storage, report, hashes)
    if hashes:
        _check_unindexed_files(storage, report, indexed)
    _check_links(storage, report, hashes)
    if feeds and (storage.directory / "feeds.db").exists():
        from ..legacy.storage_dir import OriginalFeedsDatabaseError

        try:
            report.feeds = storage.feeds.verify()
        except OriginalFeedsDatabaseError as exc:  # not ours to check; import-legacy verifies it
            report.problems.append(StorageProblem("database", str(exc),
                                                  path=str(storage.directory / "feeds.db")))
    return report


def _read_only(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.execute("PRAGMA query_only = 1")
    return conn


def _quick_check(path: Path, report: StorageReport) -> None:
    conn = _read_only(path)
    try:
        result = [row[0] for row in conn.execute("PRAGMA quick_check").fetchall()]
    except sqlite3.DatabaseError as exc:
        result = [str(exc)]
    finally:
        conn.close()
    if result != ["ok"]:
        report.problems.append(StorageProblem("database", "; ".join(result[:5]), path=str(path)))


def _check_mutables(path: Path, report: StorageReport) -> None:
    if not path.exists():
        return
    conn = _read_only(path)
    try:
        for key, value in conn.execute("SELECT key, value FROM mutables"):
            report.mutables += 1
            try:
                json.loads(key)
                json.loads(value)
            except (TypeError, ValueError, RecursionError):
                report.problems.append(StorageProblem(
                    "mutable", f"key or value is not JSON: {str(key)[:80]!r}", path=str(path)))
    except sqlite3.DatabaseError as exc:
        report.problems.append(StorageProblem("database", str(exc), path=str(path)))
    finally:
        conn.close()


def _check_indexed_files(storage: Storage, report: StorageReport, hashes: bool) -> set[str]:
    rows = storage.index._query("SELECT sha1, size, manifest_sha1 FROM files ORDER BY sha1")
    for sha1, size, manifest_sha1 in rows:
        report.files += 1
        found = _check_indexed_file(storage, report, sha1, size, manifest_sha1, hashes)
        if found is not None:
            kind, message = found
            report.problems.append(StorageProblem(kind, message, sha1=sha1,
                                                  path=str(storage.path_for(sha1))))
    return {row[0] for row in rows}


def _check_indexed_file(storage: Storage, report: StorageReport, sha1: str, size: int,
                        manifest_sha1: str | None, hashes: bool) -> tuple[str, str] | None:
    """(kind, message) of what is wrong with one indexed file, or None."""
    if not is_sha1_hex(sha1):
        return "file", "the index names a file by something that is not a SHA-1"
    path = storage.path_for(sha1)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "file", "in the index but not stored (deleted behind kachery's back?)"
    if st.st_size != size:
        return "file", f"{st.st_size} bytes stored; the index says {size}"
    manifest = None
    if manifest_sha1 is not None:
        try:
            manifest = parse_manifest(storage.path_for(manifest_sha1).read_bytes(),
                                      expected_sha1=sha1)
        except (OSError, CorruptedFileError) as exc:
            return "manifest", f"its manifest sha1://{manifest_sha1} is missing or wrong: {exc}"
        if manifest.size != size:
            return "manifest", f"its manifest describes {manifest.size} bytes, not {size}"
    if hashes:
        digest = hash_file(path, chunked=manifest is not None)
        report.bytes_hashed += digest.size
        if digest.sha1 != sha1:
            return "file", f"its bytes hash to {digest.sha1}: the stored copy is corrupted"
        if manifest is not None and digest.manifest is not None and (
                digest.manifest.chunks != manifest.chunks):
            return "manifest", f"its chunks do not match its manifest sha1://{manifest_sha1}"
    return None


def _check_unindexed_files(storage: Storage, report: StorageReport, indexed: set[str]) -> None:
    root = storage.directory / "sha1"
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            if name in indexed or not is_sha1_hex(name):
                continue
            path = Path(dirpath) / name
            if path != storage.path_for(name):
                continue  # not where kachery would look for it: never served
            report.files += 1
            digest = hash_file(path, chunked=False)
            report.bytes_hashed += digest.size
            if digest.sha1 != name:
                report.problems.append(StorageProblem(
                    "file", f"not in the index, and its bytes hash to {digest.sha1}",
                    sha1=name, path=str(path)))


def _check_links(storage: Storage, report: StorageReport, hashes: bool) -> None:
    for sha1, path, size, _manifest, recorded in storage.index._query(
            "SELECT sha1, path, size, manifest_sha1, stat FROM links ORDER BY path"):
        report.links += 1
        try:
            st = os.stat(path)
        except FileNotFoundError:
            report.problems.append(StorageProblem("link", "the linked file was deleted",
                                                  sha1=sha1, path=path))
            continue
        if stat_signature(st) == recorded and not hashes:
            continue
        if st.st_size != size or hash_file(Path(path), chunked=False).sha1 != sha1:
            report.bytes_hashed += st.st_size if st.st_size == size else 0
            report.problems.append(StorageProblem(
                "link", "the linked file changed since it was linked (it is no longer served)",
                sha1=sha1, path=path))
        else:
            report.bytes_hashed += size


# ----------------------------------------------------------------------------- repair
@dataclass
class RepairResult:
    """What :func:`repair` did: files fetched again, subfeeds fetched again, and what it could not."""

    refetched_files: list[str] = field(default_factory=list)
    refetched_subfeeds: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"refetched_files": self.refetched_files,
                "refetched_subfeeds": self.refetched_subfeeds, "failed": self.failed}


def repair(storage: Storage, report: StorageReport, *, channel: str,
           feed_timeout: float = 60.0) -> RepairResult:
    """Fix what ``report`` found from ``channel``, through the running daemon of ``storage``.

    Bad stored copies are deleted and fetched again. A subfeed this node follows but does not
    own is cut back before its first bad message (or to its sound messages when only its
    records are off) and fetched again. Raises :class:`~kachery_node.DaemonNotRunningError` if no
    daemon serves the storage (nothing is deleted then).
    """
    from .. import remote_reads as remote
    from ..errors import DaemonNotRunningError

    if remote.daemon_for(storage.directory) is None:
        raise DaemonNotRunningError(
            f"repair fetches from the channel through the daemon, and none runs for "
            f"{storage.directory}: start it with `kachery node start`")
    result = RepairResult()
    for sha1 in report.bad_files():
        record = storage.index.get_file(sha1)
        uri = build_uri(sha1, None, record.manifest_sha1 if record else None)
        with contextlib.suppress(FileNotFoundError):
            storage.path_for(sha1).unlink()
        storage.index.delete_file(sha1)
        try:
            remote.fetch_file(storage.directory, uri, channel=channel)
            result.refetched_files.append(sha1)
        except KacheryError as exc:
            result.failed.append(f"sha1://{sha1}: {exc}")
    if report.feeds is not None:
        _repair_feeds(storage, report.feeds, channel, feed_timeout, result)
    return result


def _repair_feeds(storage: Storage, feeds_report: kachery_feeds.StoreReport, channel: str,
                  timeout: float, result: RepairResult) -> None:
    from kachery_feeds.audit import cut_subfeed_for_repair
    from kachery_feeds.schema import SUBFEED_COUNT

    from .. import remote_reads as remote

    store = storage.feeds
    for (feed_id, sh), problems in feeds_report.by_subfeed().items():
        if feed_id is None or sh is None:
            result.failed.append("; ".join(str(p) for p in problems))
            continue
        uri = f"feed://{feed_id}/~{sh}"
        if store.has_private_key(feed_id):
            result.failed.append(f"{uri}: this node owns the feed, so its daemon fetches it from "
                                 "no channel; restore feeds.db from a backup")
            continue
        (stored,) = store._conn.execute(  # as the file is now (not a cached subfeed row id)
            f"SELECT coalesce((SELECT {SUBFEED_COUNT} FROM subfeeds WHERE feed_id=? AND "
            "subfeed_hash=?), 0)", (feed_id, sh)).fetchone()
        cut_subfeed_for_repair(store, feed_id, sh, feeds_report.first_bad_position(feed_id, sh))
        try:
            remote.follow_subfeed(storage.directory, uri, channel)
        except KacheryError as exc:
            result.failed.append(f"{uri}: {exc}")
            continue
        if _wait_for_sound_subfeed(store, feed_id, sh, stored, timeout):
            result.refetched_subfeeds.append(uri)
        else:
            result.failed.append(f"{uri}: not fetched again within {timeout:.0f} s")


def _wait_for_sound_subfeed(store: kachery_feeds.Store, feed_id: str, sh: str, count: int,
                            timeout: float) -> bool:
    """Wait until the daemon has brought the subfeed back to ``count`` messages that verify;
    True if it did in time."""
    deadline = time.monotonic() + timeout
    subfeed = store.load_subfeed(f"feed://{feed_id}/~{sh}")
    with store.watcher() as watcher:
        while True:
            if subfeed.get_num_local_messages() >= count and store.verify((feed_id, sh)).ok:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            watcher.wait(min(remaining, 1.0))

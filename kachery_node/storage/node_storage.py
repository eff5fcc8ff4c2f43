"""A node's local storage: content-addressed files, links, data objects, mutables and feeds.

Layout of the storage directory (spec/storage.md)::

    config.toml  node.key        identity and settings (kachery init)
    sha1/aa/bb/cc/<sha1>         stored files, read-only and private (0400), as in the original
    tmp/                         files being stored (renamed into sha1/ when complete)
    files.db                     index: stored files, links, hashes of source paths
    mutables.db  feeds.db        key-value store; feeds (kachery_feeds)

Rules:

1. Every file is identified by the SHA-1 of its bytes; whatever is served under a SHA-1 has
   been verified to have it (at store time, or by rehashing when its stat changed since).
2. Failures raise :mod:`.errors` exceptions; nothing returns ``None`` to mean "not here".
3. A file the user stored is never deleted by the cache; only files marked fetchable are.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import NodeConfig, default_storage_dir, load_node_config, max_cache_bytes
from ..errors import (
    CorruptedFileError,
    InvalidDataError,
    InvalidUriError,
    KacheryError,
    LinkedFileChangedError,
    NotFoundError,
)
from ..local_filesystem import require_local_storage
from . import cache_limit as cache
from . import data_objects
from .file_index import (
    _THREADED_MIN_SIZE,
    ContentHasher,
    Digest,
    FileIndex,
    Progress,
    TempFile,
    hash_file,
    sha1_of_range,
    stat_signature,
)
from .file_uris import FileUri, build_uri, parse_uri
from .manifest import Chunk, Manifest, needs_manifest, parse_manifest
from .mutables import Mutables
from .partial_files import IncomingFile
from .private_files import STORED_FILE_MODE, make_private_dirs

if TYPE_CHECKING:
    import kachery_feeds

    from .storage_audit import StorageReport


@dataclass(frozen=True)
class LocalFile:
    """Where the content of ``sha1`` is on this machine."""

    sha1: str
    path: Path
    size: int
    linked: bool
    signature: str


@dataclass(frozen=True)
class VouchedFile:
    """A stored or linked file whose bytes this storage hashed at the stat it has now: its
    ``path`` and that stat's ``signature`` (:func:`~.file_index.stat_signature`)."""

    path: Path
    signature: str

    def unchanged(self, st: os.stat_result) -> bool:
        """Whether ``st`` (an fstat of the open file) is still the stat its bytes were hashed at."""
        return stat_signature(st) == self.signature


@dataclass(frozen=True)
class StorageUsage:
    """What ``kachery info`` reports about disk use."""

    stored_files: int
    stored_bytes: int
    linked_files: int
    linked_bytes: int
    max_cache_bytes: int | None
    database_bytes: int  # files.db, feeds.db, mutables.db with their WAL files


def _as_key(uri: str | FileUri) -> FileUri:
    return uri if isinstance(uri, FileUri) else parse_uri(uri)


class Storage:
    """One storage directory. Cheap to create; opens its databases on first use.

    Example::

        s = Storage("/tmp/ks")
        uri = s.store_text("hello")          # 'sha1://aaf4c6…/file.txt'
        s.load_text(uri)                     # 'hello'
    """

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self.directory = Path(directory or default_storage_dir()).expanduser().absolute()
        self._lock = threading.Lock()
        self._index: FileIndex | None = None
        self._mutables: Mutables | None = None
        self._feeds: kachery_feeds.Store | None = None
        # Before anything is written: its databases are WAL SQLite, unsafe on NFS & co.
        require_local_storage(self.directory)

    def __repr__(self) -> str:
        return f"Storage({str(self.directory)!r})"

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def index(self) -> FileIndex:
        with self._lock:
            if self._index is None:
                self._index = FileIndex(self.directory / "files.db")
                self._remove_stale_tmp_files()
            return self._index

    def _remove_stale_tmp_files(self, max_age_s: float = 24 * 3600) -> None:
        """Partial files left by processes that died while storing (a day old: surely dead)."""
        now = time.time()
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.directory / "tmp"):
                with contextlib.suppress(OSError):
                    if now - entry.stat().st_mtime > max_age_s:
                        os.unlink(entry.path)

    @property
    def mutables(self) -> Mutables:
        """The local key-value store (see :mod:`.mutables`)."""
        with self._lock:
            if self._mutables is None:
                self._mutables = Mutables(self.directory / "mutables.db")
            return self._mutables

    @property
    def feeds(self) -> kachery_feeds.Store:
        """The kachery_feeds store in ``<storage>/feeds.db``. Raises
        :class:`~kachery_node.legacy.storage_dir.OriginalFeedsDatabaseError` (saying what to do)
        while that file is the original kachery's, which is left unchanged."""
        with self._lock:
            if self._feeds is None:
                import kachery_feeds

                path = self.directory / "feeds.db"
                try:
                    self._feeds = kachery_feeds.open_store(path)
                except kachery_feeds.NotAStoreError:
                    from ..legacy.storage_dir import feeds_db_error, original_feeds_db

                    found = original_feeds_db(path)
                    if found is None:
                        raise
                    raise feeds_db_error(self.directory, found) from None
            return self._feeds

    def close(self) -> None:
        """Close the databases (they reopen on next use)."""
        with self._lock:
            for db in (self._index, self._mutables, self._feeds):
                if db is not None and hasattr(db, "close"):
                    db.close()
            self._index = self._mutables = self._feeds = None

    def config(self) -> NodeConfig:
        """The node's config; raises :class:`NotInitializedError` before ``kachery init``."""
        return load_node_config(self.directory)

    def path_for(self, sha1: str) -> Path:
        """``<storage>/sha1/aa/bb/cc/<sha1>``, the original's layout."""
        return self.directory / "sha1" / sha1[0:2] / sha1[2:4] / sha1[4:6] / sha1

    # -- storing -------------------------------------------------------------------------------
    def _ingest(
        self,
        feed: Callable[[ContentHasher], None],
        *,
        chunked: bool,
        fetchable: bool,
        progress: Progress | None = None,
        expected_sha1: str | None = None,
        manifest_sha1: str | None = None,
    ) -> tuple[Digest, str | None]:
        """Stream content into tmp/ while hashing, then move it into place. Returns the
        digest and the manifest's SHA-1 (None for files of one chunk). ``manifest_sha1``: a
        manifest already stored for this content (then ``chunked`` may be False)."""
        tmp = TempFile(self.directory / "tmp")
        try:
            hasher = ContentHasher(chunked=chunked, sink=tmp.file, progress=progress)
            feed(hasher)
            tmp.file.close()
            digest = hasher.finish()
            if expected_sha1 is not None and digest.sha1 != expected_sha1:
                raise CorruptedFileError(
                    f"received content has SHA-1 {digest.sha1}, not the expected "
                    f"{expected_sha1}; it was not stored"
                )
            os.chmod(tmp.path, STORED_FILE_MODE)  # read-only and private (private_files)
            dest = self.path_for(digest.sha1)
            make_private_dirs(dest.parent)
            # Replacing an existing copy is harmless (same bytes) and heals a damaged one.
            os.replace(tmp.path, dest)
        except BaseException:
            tmp.discard()
            raise
        if digest.manifest:
            manifest_sha1 = self._store_manifest(digest.manifest, fetchable)
        self.index.put_file(digest.sha1, digest.size, manifest_sha1,
                            stat_signature(os.stat(dest)), fetchable=fetchable)
        self.enforce_cache_limit(keep={digest.sha1, manifest_sha1 or ""})
        return digest, manifest_sha1

    def _store_manifest(self, manifest: Manifest, fetchable: bool) -> str:
        data = manifest.to_bytes()
        digest, _ = self._ingest(lambda h: h.write(data), chunked=False, fetchable=fetchable)
        return digest.sha1

    def store_file(
        self,
        path: str | os.PathLike,
        basename: str | None = None,
        *,
        progress: Progress | None = None,
        fetchable: bool = False,
    ) -> str:
        """Copy a file into the storage; return ``sha1://<sha1>/<basename>[?manifest=…]``.

        Reads the file once. Storing the same unchanged path again (same size, mtime, ctime,
        inode) neither rehashes nor copies. ``fetchable=True`` (used by the daemon for
        downloads) lets the cache cap evict the copy later; files stored by a user never are.
        """
        real = os.path.realpath(path)
        st = os.stat(real)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(f"{path} is not a regular file")
        basename = basename or Path(path).name
        sig = stat_signature(st)
        cached = self.index.cached_path_hash(real, sig)
        if cached is not None:
            sha1, size, manifest_sha1 = cached
            if self._have_stored(sha1) and (manifest_sha1 is None or self._have_stored(manifest_sha1)):
                if not fetchable:  # the user's own copy now: pin it (and its manifest)
                    self.index.mark_fetchable(sha1, False)
                    if manifest_sha1 is not None:
                        self.index.mark_fetchable(manifest_sha1, False)
                self.index.touch(sha1)
                if progress:
                    progress(size)
                return build_uri(sha1, basename, manifest_sha1)
        big = st.st_size >= _THREADED_MIN_SIZE

        def copy(h: ContentHasher) -> None:
            # In-kernel copy, hashing what was written, where the filesystem allows it.
            if not (big and h.copy_from_file(f.fileno())):
                h.pump(f, threaded=big)

        with open(real, "rb", buffering=0) as f:
            digest, manifest_sha1 = self._ingest(
                copy, chunked=needs_manifest(st.st_size), fetchable=fetchable, progress=progress)
        if stat_signature(os.stat(real)) == sig:  # unchanged while we read it
            self.index.put_path_hash(real, sig, digest, manifest_sha1)
        return build_uri(digest.sha1, basename, manifest_sha1)

    def store_bytes(self, data: bytes, basename: str | None = None, *,
                    fetchable: bool = False) -> str:
        """Store bytes held in memory; return the URI."""
        digest, manifest_sha1 = self._ingest(
            lambda h: h.write(data), chunked=needs_manifest(len(data)), fetchable=fetchable)
        return build_uri(digest.sha1, basename, manifest_sha1)

    def store_stream(
        self,
        src: Any,
        basename: str | None = None,
        *,
        fetchable: bool = False,
        expected_sha1: str | None = None,
        progress: Progress | None = None,
    ) -> str:
        """Store everything read from a binary file object (``readinto``). With
        ``expected_sha1`` the content is verified before it is stored (for downloads):
        a mismatch raises :class:`CorruptedFileError` and stores nothing."""
        digest, manifest_sha1 = self._ingest(
            lambda h: h.pump(src), chunked=True, fetchable=fetchable, progress=progress,
            expected_sha1=expected_sha1)
        return build_uri(digest.sha1, basename, manifest_sha1)

    def store_chunks(self, paths: list[Path], *, expected_sha1: str, manifest_sha1: str,
                     fetchable: bool = True) -> str:
        """Concatenate chunk files, each already verified against the stored manifest
        ``manifest_sha1``, into the storage: an in-kernel copy, hashing only the whole file from
        the bytes written. CorruptedFileError (nothing stored) if they do not make
        ``expected_sha1``."""

        def copy(h: ContentHasher) -> None:
            for path in paths:
                with open(path, "rb", buffering=0) as f:
                    if not h.copy_from_file(f.fileno()):
                        h.pump(f)

        digest, _ = self._ingest(copy, chunked=False, fetchable=fetchable,
                                 expected_sha1=expected_sha1, manifest_sha1=manifest_sha1)
        return build_uri(digest.sha1, None, manifest_sha1)

    def store_assembled(self, path: str | os.PathLike, *, expected_sha1: str, manifest_sha1: str,
                        fetchable: bool = True, read_sha1: str | None = None) -> str:
        """Move a complete file assembled inside ``<storage>/tmp/`` (the daemon's partial
        fetches) into the storage without copying it: check its SHA-1, then rename it into place.
        Its manifest ``manifest_sha1`` must be stored already. CorruptedFileError (nothing
        stored, the file left where it is) if it does not hash to ``expected_sha1``.

        ``read_sha1``: the file's SHA-1 as the caller already computed it by reading the file
        itself (the daemon does while the chunks arrive); it is then not read again."""
        path = self._inside_tmp(path)
        sha1 = read_sha1 if read_sha1 is not None else hash_file(path, chunked=False).sha1
        if sha1 != expected_sha1:
            raise CorruptedFileError(
                f"received content has SHA-1 {sha1}, not the expected {expected_sha1}; "
                "it was not stored")
        return self.adopt_verified(path, sha1=sha1, manifest_sha1=manifest_sha1,
                                   fetchable=fetchable)

    def adopt_verified(self, path: str | os.PathLike, *, sha1: str,
                       manifest_sha1: str | None = None, fetchable: bool = True) -> str:
        """Move a complete file from ``<storage>/tmp/`` into the storage by renaming it: no copy,
        and no second read. The caller vouches that ``sha1`` is the SHA-1 of the file's bytes
        because it hashed them as it wrote them (the daemon's downloads:
        :class:`~.partial_files.IncomingFile`). A file above 20 MB without a stored manifest
        (``manifest_sha1``) is read once more to make its manifest. Returns the URI."""
        path = self._inside_tmp(path)
        size = os.stat(path).st_size
        if manifest_sha1 is None and needs_manifest(size):
            digest = hash_file(path, chunked=True)  # rare: a large file fetched without ?manifest=
            if digest.sha1 != sha1:
                raise CorruptedFileError(f"{path} hashes to {digest.sha1}, not {sha1}; not stored")
            assert digest.manifest is not None
            manifest_sha1 = self._store_manifest(digest.manifest, fetchable)
        os.chmod(path, STORED_FILE_MODE)
        dest = self.path_for(sha1)
        make_private_dirs(dest.parent)
        os.replace(path, dest)  # same filesystem; replacing an existing copy heals it
        self.index.put_file(sha1, size, manifest_sha1,
                            stat_signature(os.stat(dest)), fetchable=fetchable)
        self.enforce_cache_limit(keep={sha1, manifest_sha1 or ""})
        return build_uri(sha1, None, manifest_sha1)

    def _inside_tmp(self, path: str | os.PathLike) -> Path:
        path = Path(path).absolute()
        if self.directory / "tmp" not in path.parents:
            raise ValueError(f"{path} is not inside {self.directory / 'tmp'}")
        return path

    def _have_stored(self, sha1: str) -> bool:
        return self.path_for(sha1).is_file()

    def link_file(self, path: str | os.PathLike, basename: str | None = None, *,
                  progress: Progress | None = None) -> str:
        """Register a file in place, without copying; return its URI.

        The file is hashed once (not again while it is unchanged). If it is later modified,
        loading it raises :class:`LinkedFileChangedError` instead of serving other content.
        The file keeps its place and its mode: kachery never changes a user's file, so who
        may read it is the user's business (the storage's own files are private).
        """
        real = os.path.realpath(path)
        st = os.stat(real)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(f"{path} is not a regular file")
        sig = stat_signature(st)
        cached = self.index.cached_path_hash(real, sig)
        if cached is not None and (cached[2] is None or self._have_stored(cached[2])):
            sha1, size, manifest_sha1 = cached
            if progress:
                progress(size)
        else:
            digest = hash_file(Path(real), progress=progress)
            if stat_signature(os.stat(real)) != sig:
                raise KacheryError(f"{path} changed while it was being linked; try again")
            sha1, size = digest.sha1, digest.size
            manifest_sha1 = (self._store_manifest(digest.manifest, fetchable=False)
                             if digest.manifest else None)
            self.index.put_path_hash(real, sig, digest, manifest_sha1)
        self.index.put_link(sha1, real, size, manifest_sha1, sig)
        return build_uri(sha1, basename or Path(path).name, manifest_sha1)

    def mark_fetchable(self, uri_or_sha1: str, fetchable: bool = True) -> bool:
        """Say whether a stored file can be fetched again from elsewhere, so that the cache cap
        may evict it. For the daemon (files downloaded from a channel). False if not stored."""
        sha1 = uri_or_sha1 if "://" not in uri_or_sha1 else parse_uri(uri_or_sha1).sha1
        return self.index.mark_fetchable(sha1, fetchable)

    # -- finding and verifying -------------------------------------------------------------------
    def locate(self, uri: str | FileUri) -> LocalFile:
        """Where the content is (stored copy first, then links), without verifying a stored
        copy. Raises NotFoundError, or LinkedFileChangedError if only changed links remain."""
        key = _as_key(uri)
        if key.chunk_of is not None:
            return self._locate_chunk(key, str(uri))
        dest = self.path_for(key.sha1)
        try:
            st = os.stat(dest)
            return LocalFile(key.sha1, dest, st.st_size, False, stat_signature(st))
        except FileNotFoundError:
            pass
        changed: list[str] = []
        for rec in self.index.links_for(key.sha1):
            try:
                st = os.stat(rec.path)
            except FileNotFoundError:
                changed.append(f"{rec.path} (deleted)")
                continue
            sig = stat_signature(st)
            if sig == rec.stat:
                return LocalFile(key.sha1, Path(rec.path), st.st_size, True, sig)
            # Touched, copied over or chmod-ed: serve it only if the bytes are still the same.
            if st.st_size == rec.size and hash_file(Path(rec.path), chunked=False).sha1 == key.sha1:
                self.index.put_link(key.sha1, rec.path, rec.size, rec.manifest_sha1, sig)
                return LocalFile(key.sha1, Path(rec.path), st.st_size, True, sig)
            changed.append(rec.path)
        original = self._locate_original_link(key.sha1, changed)
        if original is not None:
            return original
        if changed:
            raise LinkedFileChangedError(
                f"sha1://{key.sha1} was linked from {', '.join(changed)}, which changed after it "
                "was linked, so it is not served. Link or store the file again (its new content "
                "gets a new URI), or restore the original content."
            )
        raise NotFoundError(
            f"sha1://{key.sha1} is not in the local storage {self.directory} (never stored "
            "or linked here, or evicted from the cache). Store it with `kachery store`, or check "
            "KACHERY_STORAGE_DIR.", uri=str(uri))

    def _locate_chunk(self, key: FileUri, uri: str) -> LocalFile:
        """A ``?chunkOf=<file>~<start>~<end>`` URI: the chunk stored as a file of its own, else
        cut from its file if that is here (verified by the chunk's SHA-1, then stored as its own
        file, evictable). NotFoundError if neither is here; InvalidUriError if the file's bytes
        there do not hash to the chunk's SHA-1 (a wrong URI)."""
        assert key.chunk_of is not None
        c = key.chunk_of
        try:
            return self.locate(FileUri(key.sha1))
        except NotFoundError:
            pass
        try:
            parent = self.locate(FileUri(c.file_sha1))
        except NotFoundError:
            raise NotFoundError(
                f"{uri}: neither the chunk sha1://{key.sha1} nor its file sha1://{c.file_sha1} is "
                f"in the local storage {self.directory}", uri=uri) from None
        if c.end > parent.size:
            raise InvalidUriError(f"{uri}: the range ends past sha1://{c.file_sha1} ({parent.size} bytes)")
        incoming = IncomingFile(self.directory / "tmp", key.sha1, c.end - c.start)
        try:
            with open(parent.path, "rb", buffering=0) as f:
                pos = c.start
                while pos < c.end:
                    piece = os.pread(f.fileno(), min(1 << 20, c.end - pos), pos)
                    if not piece:
                        break
                    incoming.write_blocking(piece)
                    pos += len(piece)
            why = incoming.commit()
            if why is not None:
                raise InvalidUriError(f"{uri}: bytes {c.start}-{c.end} of sha1://{c.file_sha1} are not "
                                      f"that chunk: {why}")
            self.adopt_verified(incoming.path, sha1=key.sha1, fetchable=True)
        finally:
            incoming.discard()
        return self.locate(FileUri(key.sha1))

    def _locate_original_link(self, sha1: str, changed: list[str]) -> LocalFile | None:
        """A file the original kachery linked (``sha1/aa/bb/cc/<sha1>.link``, see
        :mod:`~kachery_node.legacy.link_files`), hashed once and then kept in the index like a
        link of ours; None if there is no such link. A target that no longer hashes to ``sha1``
        is added to ``changed`` (never served). The ``.link`` file is left as it is."""
        from ..legacy.link_files import link_file_path, read_link_file

        link_path = link_file_path(self.path_for(sha1))
        link = read_link_file(link_path)
        if link is None:
            return None
        real = os.path.realpath(link.path)
        try:
            st = os.stat(real)
        except OSError:
            changed.append(f"{link.path} (deleted; linked by {link_path})")
            return None
        sig = stat_signature(st)
        if not stat.S_ISREG(st.st_mode) or hash_file(Path(real), chunked=False).sha1 != sha1:
            changed.append(f"{link.path} (linked by {link_path})")
            return None
        manifest_sha1 = link.manifest_sha1
        if manifest_sha1 is not None and not self._have_stored(manifest_sha1):
            manifest_sha1 = None
        self.index.put_link(sha1, real, st.st_size, manifest_sha1, sig)
        return LocalFile(sha1, Path(real), st.st_size, True, sig)

    def _discard_corrupted(self, lf: LocalFile, actual: str) -> CorruptedFileError:
        with contextlib.suppress(FileNotFoundError):
            lf.path.unlink()
        self.index.delete_file(lf.sha1)
        return CorruptedFileError(
            f"the stored copy of sha1://{lf.sha1} was corrupted (its content now hashes to "
            f"{actual}); the bad copy {lf.path} has been deleted. Store the file again, or load "
            "it from where it came from."
        )

    def _verify_whole(self, lf: LocalFile) -> None:
        """Rehash a stored file unless it is unchanged since it was last verified."""
        rec = self.index.get_file(lf.sha1)
        if rec is not None and rec.verified_stat == lf.signature:
            return
        digest = hash_file(lf.path, chunked=rec is None)
        if digest.sha1 != lf.sha1:
            raise self._discard_corrupted(lf, digest.sha1)
        if rec is None:  # a file we did not store ourselves (e.g. an original kachery storage)
            manifest_sha1 = (self._store_manifest(digest.manifest, fetchable=False)
                             if digest.manifest else None)
            self.index.put_file(lf.sha1, lf.size, manifest_sha1, lf.signature, fetchable=False)
        else:
            self.index.set_verified(lf.sha1, lf.signature)

    def _manifest_for(self, key: FileUri) -> Manifest | None:
        rec = self.index.get_file(key.sha1)
        manifest_sha1 = key.manifest_sha1 or (rec.manifest_sha1 if rec else None)
        if manifest_sha1 is None:
            return None
        try:
            data = Path(self.load_file(build_uri(manifest_sha1))).read_bytes()
        except (NotFoundError, CorruptedFileError):
            return None  # fall back to verifying the whole file
        return parse_manifest(data, expected_sha1=key.sha1)

    # -- loading -------------------------------------------------------------------------------
    def load_file(self, uri: str | FileUri, *, dest: str | os.PathLike | None = None) -> str:
        """The local path of the content (verified), or a copy of it at ``dest``.

        Raises :class:`NotFoundError` when the content is not here,
        :class:`CorruptedFileError` when the stored copy no longer matches its hash (the copy is
        deleted), :class:`LinkedFileChangedError` for a linked file changed since it was linked.
        """
        lf = self.locate(uri)
        if not lf.linked:
            self._verify_whole(lf)
            self.index.touch(lf.sha1)
        if dest is not None:
            shutil.copyfile(lf.path, dest)
            return str(dest)
        return str(lf.path)

    def load_bytes(self, uri: str | FileUri, start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of the content (``end=None``: to the end of the file).

        Reading a range of a stored file that changed since it was last verified rehashes only
        the 20 MB chunks covering the range when the file has a manifest (else the whole file).
        """
        key = _as_key(uri)
        lf = self.locate(key)
        rec = None if lf.linked else self.index.get_file(lf.sha1)
        size = rec.size if rec is not None else lf.size
        if end is None:
            end = size
        if not (0 <= start <= end <= size):
            raise InvalidDataError(
                f"byte range [{start}, {end}) is outside sha1://{lf.sha1}, which has {size} bytes")
        if not lf.linked:
            if rec is not None and lf.size != rec.size:
                raise self._discard_corrupted(lf, f"a file of {lf.size} bytes, not {rec.size}")
            if rec is None or rec.verified_stat != lf.signature:
                manifest = self._manifest_for(key)
                if manifest is None:
                    self._verify_whole(lf)
                else:
                    for chunk in manifest.covering(start, end):
                        actual = sha1_of_range(lf.path, chunk.start, chunk.end)
                        if actual != chunk.sha1:
                            raise self._discard_corrupted(
                                lf, f"bytes {chunk.start}-{chunk.end} hashing to {actual}")
            self.index.touch(lf.sha1)
        with open(lf.path, "rb", buffering=0) as f:
            f.seek(start)
            data = f.read(end - start)
        if len(data) != end - start:
            raise KacheryError(f"{lf.path} is shorter than expected; was it truncated?")
        return data

    def load_chunk(self, uri: str | FileUri, start: int, end: int, chunk_sha1: str) -> bytes:
        """Bytes ``[start, end)`` of the content, which must hash to ``chunk_sha1`` (a
        requester's claim that they are a chunk of the file: what a provider uploads).

        Not hashed again when the file is unchanged since it was verified (its stat - size,
        mtime, ctime, inode - is the one recorded then, before and after the read) and its
        manifest, recorded by this storage, lists exactly this chunk: the bytes were hashed when
        stored or fetched. Otherwise the range is read as :meth:`load_bytes` reads it (a changed
        stored file is re-verified, and a corrupted copy deleted) and hashed. Raises
        :class:`KacheryError` if the bytes do not hash to ``chunk_sha1``."""
        key = _as_key(uri)
        vouched = self.vouched_chunk(key, start, end, chunk_sha1)
        if vouched is not None:
            with open(vouched.path, "rb", buffering=0) as f:
                before = os.fstat(f.fileno())  # the file locate() saw?
                f.seek(start)
                data = f.read(end - start)
                after = os.fstat(f.fileno())  # not written meanwhile?
            if vouched.unchanged(before) and vouched.unchanged(after) and len(data) == end - start:
                return data
        data = self.load_bytes(key, start, end)
        actual = hashlib.sha1(data).hexdigest()
        if actual != chunk_sha1:
            raise KacheryError(f"bytes [{start}, {end}) of sha1://{key.sha1} hash to "
                               f"{actual}, not the requested {chunk_sha1}")
        return data

    def vouched_chunk(self, uri: str | FileUri, start: int, end: int, chunk_sha1: str) -> VouchedFile | None:
        """The file that holds bytes ``[start, end)`` of the content, if they may be served as
        chunk ``chunk_sha1`` without hashing them: the file is unchanged since this storage
        verified it, and the manifest recorded then lists exactly that chunk. None if they must
        be hashed (:meth:`load_chunk` does). Whoever reads the range checks the open file with
        :meth:`VouchedFile.unchanged` before and after. Raises NotFoundError if the content is
        not here."""
        lf = self.locate(_as_key(uri))
        if not self._chunk_listed(lf, start, end, chunk_sha1):
            return None
        if not lf.linked:
            self.index.touch(lf.sha1)
        return VouchedFile(lf.path, lf.signature)

    def _chunk_listed(self, lf: LocalFile, start: int, end: int, chunk_sha1: str) -> bool:
        """Whether ``lf`` is verified at its current stat and the manifest this storage recorded
        for it lists the chunk ``[start, end)`` with SHA-1 ``chunk_sha1``."""
        if lf.linked:  # locate() served the link: its stat is the one recorded (or rehashed)
            manifest_sha1 = next((r.manifest_sha1 for r in self.index.links_for(lf.sha1)
                                  if r.path == str(lf.path) and r.stat == lf.signature), None)
        else:
            rec = self.index.get_file(lf.sha1)
            if rec is None or rec.verified_stat != lf.signature or rec.size != lf.size:
                return False
            manifest_sha1 = rec.manifest_sha1
        if manifest_sha1 is None:
            return False
        try:
            data = Path(self.load_file(build_uri(manifest_sha1))).read_bytes()
            manifest = parse_manifest(data, expected_sha1=lf.sha1)
        except (NotFoundError, CorruptedFileError, LinkedFileChangedError):
            return False
        return manifest.covering(start, end) == [Chunk(start, end, chunk_sha1)]

    def has_file(self, uri: str | FileUri) -> bool:
        """True if the content is here (a stored copy, or an unchanged link). Does not hash.
        A ``?chunkOf=`` URI is here if the chunk is stored, or its file (it is cut from it when
        loaded)."""
        key = _as_key(uri)
        if key.chunk_of is not None:
            return self.has_file(FileUri(key.sha1)) or self.has_file(FileUri(key.chunk_of.file_sha1))
        try:
            self.locate(uri)
            return True
        except (NotFoundError, LinkedFileChangedError):
            return False

    # -- data objects -------------------------------------------------------------------------------
    def store_text(self, text: str, basename: str | None = None) -> str:
        """Store a string as UTF-8; default basename ``file.txt``."""
        return self.store_bytes(data_objects.encode_text(text), basename or "file.txt")

    def store_json(self, obj: Any, basename: str | None = None) -> str:
        """Store a JSON value (numpy arrays and scalars allowed; NaN refused)."""
        return self.store_bytes(data_objects.encode_json(obj), basename or "file.json")

    def store_npy(self, array: Any, basename: str | None = None) -> str:
        """Store a numpy array in .npy format (streamed: no second copy in memory)."""
        digest, manifest_sha1 = self._ingest(
            lambda h: data_objects.write_npy(array, h), chunked=True, fetchable=False)
        return build_uri(digest.sha1, basename or "file.npy", manifest_sha1)

    def store_pkl(self, obj: Any, basename: str | None = None) -> str:
        """Store a pickle of plain data and numpy arrays (refuses what load_pkl would refuse)."""
        return self.store_bytes(data_objects.encode_pkl(obj), basename or "file.pkl")

    def load_text(self, uri: str) -> str:
        return data_objects.decode_text(Path(self.load_file(uri)).read_bytes())

    def load_json(self, uri: str) -> Any:
        return data_objects.decode_json(Path(self.load_file(uri)).read_bytes())

    def load_npy(self, uri: str) -> Any:
        return data_objects.read_npy(Path(self.load_file(uri)))

    def load_pkl(self, uri: str, *, max_bytes: int | None = None) -> Any:
        """Unpickle plain data and numpy arrays, allocating at most ``max_bytes`` (default: 64 MiB
        plus 16 times the file's size; :class:`PickleTooLargeError` beyond)."""
        return data_objects.decode_pkl(Path(self.load_file(uri)).read_bytes(), max_bytes)

    # -- mutables and feeds --------------------------------------------------------------------
    def set(self, key: Any, value: Any, *, overwrite: bool = True) -> bool:
        return self.mutables.set(key, value, overwrite=overwrite)

    def get(self, key: Any, *args: Any) -> Any:
        return self.mutables.get(key, *args)

    def delete(self, key: Any) -> bool:
        return self.mutables.delete(key)

    def create_feed(self) -> kachery_feeds.Feed:
        return self.feeds.create_feed()

    def load_feed(self, uri: str) -> kachery_feeds.Feed:
        return self.feeds.load_feed(uri)

    def load_subfeed(self, uri: str) -> kachery_feeds.Subfeed:
        return self.feeds.load_subfeed(uri)

    # -- audit -------------------------------------------------------------------------------------
    def verify(self, *, hashes: bool = False, feeds: bool = True) -> StorageReport:
        """Check the whole storage and change nothing: the databases, every indexed file (present,
        of its size, its manifest), links, mutables and (``feeds=True``) every feed's chains and
        signatures; ``hashes=True`` also rereads every stored and linked file and checks its
        SHA-1. See :mod:`.audit` (and ``kachery fsck``)."""
        from .storage_audit import verify_storage

        return verify_storage(self, hashes=hashes, feeds=feeds)

    # -- disk use and cache -------------------------------------------------------------------------
    def usage(self) -> StorageUsage:
        n, total = self.index.total_stored_bytes()
        ln, ltotal = self.index.link_totals()
        db_bytes = 0
        for name in ("files.db", "feeds.db", "mutables.db"):
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    db_bytes += os.stat(self.directory / (name + suffix)).st_size
        return StorageUsage(n, total, ln, ltotal, max_cache_bytes(self.directory), db_bytes)

    def enforce_cache_limit(self, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Apply the cache cap of config.toml now; return the SHA-1s deleted (see :mod:`.cache`)."""
        return cache.enforce_cache_limit(
            self.index, self.path_for, max_cache_bytes(self.directory), keep=keep)

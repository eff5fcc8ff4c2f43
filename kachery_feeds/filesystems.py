"""Which file system a directory is on, and refusing SQLite databases on network file systems.

SQLite in WAL mode keeps its lock state in a shared-memory file (``-shm``) mapped by every
process that opens the database, and relies on POSIX locks; on a network file system (NFS,
CIFS/SMB, sshfs, Lustre, GPFS, BeeGFS, …) neither holds across machines, and often not even on
one machine, so a database there can be corrupted silently (https://sqlite.org/wal.html, "WAL
does not work over a network filesystem"). A cluster's shared home directory is the usual
way a person ends up there. So every kachery database is opened only after
:func:`require_local_filesystem` found its directory on a local file system; the refusal
(:class:`NetworkFileSystemError`) says what to do instead.

The file system is found in ``/proc/self/mountinfo`` (Linux; elsewhere nothing is known and
nothing is refused): the mount whose mount point is the longest path prefix of the directory
wins, and of two mounts on one point the later one (it hides the earlier). :func:`parse_mountinfo`
and :func:`mount_of` are pure functions over the text.

Overrides: ``KACHERY_ALLOW_NETWORK_FS=1`` opens databases anyway (for those who know their
file system's locking works and that one machine at a time uses the storage);
``KACHERY_MOUNTINFO=<file>`` reads the mount table from another file (to check what kachery
would decide for a given table; the tests use it).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import FeedError

ALLOW_ENV = "KACHERY_ALLOW_NETWORK_FS"
MOUNTINFO_ENV = "KACHERY_MOUNTINFO"
DEFAULT_MOUNTINFO = "/proc/self/mountinfo"

#: File system types (mountinfo's field after " - ") that are shared over a network.
NETWORK_FS_TYPES = frozenset({
    "nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "ncpfs", "ncp", "afs", "openafs",
    "coda", "ceph", "glusterfs", "lustre", "gpfs", "beegfs", "fhgfs", "panfs", "pvfs2",
    "orangefs", "davfs", "sshfs", "wekafs", "quobyte",
})
# Not listed, on purpose: 9p and virtiofs (a VM's or sandbox's own root file system is often
# one of them, shared with its host only), and read-only network file systems (cvmfs).
#: FUSE subtypes (``fuse.<name>``) that are network file systems; other FUSE mounts (e.g.
#: fuse-overlayfs of rootless containers) are local.
NETWORK_FUSE_TYPES = frozenset({
    "sshfs", "glusterfs", "ceph-fuse", "cephfs", "s3fs", "gcsfuse", "rclone", "goofys",
    "juicefs", "mfs", "moosefs", "lizardfs", "davfs", "davfs2", "beegfs", "lustre", "gpfs",
    "smbnetfs", "seaweedfs", "alluxio-fuse", "blobfuse", "blobfuse2", "mountpoint-s3",
})

_OCTAL = re.compile(r"\\([0-7]{3})")


class NetworkFileSystemError(FeedError):
    """A database would be opened on a network file system, where SQLite in WAL mode is unsafe.

    ``path`` is the directory, ``mount`` the mount it is on."""

    def __init__(self, message: str, *, path: str, mount: Mount) -> None:
        super().__init__(message)
        self.path = path
        self.mount = mount


@dataclass(frozen=True)
class Mount:
    """One line of ``/proc/self/mountinfo``: where, what type, from where."""

    mount_point: str
    fs_type: str
    source: str

    @property
    def is_network(self) -> bool:
        """Whether this mount's file system is shared over a network (see the type lists)."""
        kind = self.fs_type.lower()
        if kind.startswith("fuse."):
            return kind[len("fuse."):] in NETWORK_FUSE_TYPES
        if kind.startswith("fuseblk") or kind == "fuse":
            return self.source.lower() in NETWORK_FUSE_TYPES  # plain "fuse": the source names it
        return kind in NETWORK_FS_TYPES


def _unescape(field: str) -> str:
    """The kernel writes space, tab, newline and backslash in paths as ``\\040`` etc."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of a ``/proc/<pid>/mountinfo`` text, in its order; malformed lines are skipped.

    Line format (proc(5)): ``id parent major:minor root mount_point options [optional
    fields…] - fs_type source super_options``.

    >>> parse_mountinfo("27 1 254:0 / /my\\\\040disk rw - ext4 /dev/vda rw")
    [Mount(mount_point='/my disk', fs_type='ext4', source='/dev/vda')]
    """
    mounts = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            dash = fields.index("-", 6)
        except ValueError:
            continue
        if dash + 1 >= len(fields) or not fields[dash + 1]:
            continue
        source = _unescape(fields[dash + 2]) if dash + 2 < len(fields) else ""
        mounts.append(Mount(_unescape(fields[4]), fields[dash + 1], source))
    return mounts


def _covers(mount_point: str, path: str) -> bool:
    mp = mount_point.rstrip("/")
    return mp == "" or path == mp or path.startswith(mp + "/")


def mount_of(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount an absolute, resolved ``path`` is on: the longest mount point that is a path
    prefix of it (component-wise: ``/data`` does not cover ``/database``), the later line on
    ties (it was mounted over the earlier). None if no mount covers it."""
    best: Mount | None = None
    for mount in mounts:
        if _covers(mount.mount_point, path) and (
                best is None or len(mount.mount_point.rstrip("/")) >= len(best.mount_point.rstrip("/"))):
            best = mount
    return best


def _existing_ancestor(directory: Path) -> Path:
    """``directory`` resolved (symlinks followed), or its nearest existing ancestor's: a
    database's directory may not exist yet, and will be created on its parent's file system."""
    path = directory.absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path.resolve()


def filesystem_of(directory: str | os.PathLike) -> Mount | None:
    """The mount ``directory`` is (or would be created) on, from this process's mount table
    (``$KACHERY_MOUNTINFO`` or ``/proc/self/mountinfo``); None where there is no such table."""
    table = os.environ.get(MOUNTINFO_ENV) or DEFAULT_MOUNTINFO
    try:
        with open(table, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except OSError:
        return None  # not Linux (or no /proc): nothing known, nothing refused
    return mount_of(str(_existing_ancestor(Path(directory))), parse_mountinfo(text))


def require_local_filesystem(directory: str | os.PathLike, what: str, fix: str) -> None:
    """Raise :class:`NetworkFileSystemError` if ``directory`` is on a network file system,
    unless ``$KACHERY_ALLOW_NETWORK_FS`` is ``1``.

    ``what`` names the database(s) for the message ("the feed store feeds.db"), ``fix`` says
    how to put them elsewhere ("set KACHERY_STORAGE_DIR to a directory on a local disk").
    """
    if os.environ.get(ALLOW_ENV) == "1":
        return
    mount = filesystem_of(directory)
    if mount is None or not mount.is_network:
        return
    raise NetworkFileSystemError(
        f"{what} in {directory} would be on a network file system ({mount.fs_type} "
        f"{mount.source} mounted at {mount.mount_point}), where SQLite databases in WAL mode are "
        f"unsafe (their locks and shared memory do not work across machines; they can be "
        f"corrupted). {fix}; on a cluster, use a node-local or scratch directory (such as "
        f"/scratch/$USER or a local disk of the machine) rather than the shared home. If you "
        f"know this file system's locking works and one machine at a time uses it, set "
        f"{ALLOW_ENV}=1.",
        path=str(directory), mount=mount)

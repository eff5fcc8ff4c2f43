"""Finding a directory's file system in a mount table, and refusing network ones (issue 13 item
6): pure functions over crafted ``/proc/self/mountinfo`` texts."""

from __future__ import annotations

import pytest

import kachery_feeds as kf
from kachery_feeds.filesystems import (
    Mount,
    filesystem_of,
    mount_of,
    parse_mountinfo,
    require_local_filesystem,
)

CLUSTER = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
40 27 0:45 / /home rw,relatime shared:20 - nfs4 fs01.lab.example:/export/home rw,vers=4.2,hard
41 40 0:46 / /home/alice/local\\040disk rw,relatime - xfs /dev/sdb1 rw
42 27 0:47 / /scratch rw,relatime - lustre 10.0.0.5@o2ib:/scratch rw,flock
43 27 0:48 / /data rw,relatime - ext4 /dev/sdc1 rw
44 27 0:49 / /database rw - cifs //nas/db rw,vers=3.0
45 27 0:50 / /mnt/remote rw,nosuid,nodev master:5 - fuse.sshfs alice@login:/home/alice rw,user_id=1000
46 27 0:51 / /run/user/1000/containers rw - fuse.fuse-overlayfs fuse-overlayfs rw
47 27 0:52 / /gpfs rw - gpfs gpfs0 rw
48 27 0:53 / /beegfs rw - beegfs beegfs_nodev rw
49 27 0:54 / /tmp rw - tmpfs tmpfs rw
50 49 0:55 / /tmp rw - nfs srv:/tmp rw
"""


def test_mountinfo_lines_are_parsed_with_escapes_and_optional_fields():
    mounts = parse_mountinfo(CLUSTER + "garbage line\n\n12 1 0:1 / /x rw - \n")
    assert mounts[2] == Mount("/home", "nfs4", "fs01.lab.example:/export/home")
    assert mounts[3] == Mount("/home/alice/local disk", "xfs", "/dev/sdb1")  # \040 is a space
    assert mounts[7] == Mount("/mnt/remote", "fuse.sshfs", "alice@login:/home/alice")  # after "master:5"
    assert len(mounts) == 13  # the malformed lines are skipped


@pytest.mark.parametrize(("path", "mount_point", "network"), [
    ("/home/alice/kachery-storage", "/home", True),
    ("/home/alice/local disk/storage", "/home/alice/local disk", False),  # longest prefix wins
    ("/home/alice/local diskette", "/home", True),  # component-wise: not under "local disk"
    ("/scratch/alice", "/scratch", True),
    ("/data/x", "/data", False),
    ("/database/x", "/database", True),  # /data is not a prefix of /database
    ("/mnt/remote/s", "/mnt/remote", True),
    ("/run/user/1000/containers/x", "/run/user/1000/containers", False),  # a local FUSE file system
    ("/gpfs/p", "/gpfs", True),
    ("/beegfs", "/beegfs", True),
    ("/tmp/x", "/tmp", True),  # mounted over: the later line wins
    ("/var/lib/kachery", "/", False),
])
def test_the_longest_mount_point_decides(path, mount_point, network):
    mount = mount_of(path, parse_mountinfo(CLUSTER))
    assert mount is not None and (mount.mount_point, mount.is_network) == (mount_point, network)


def test_refusal_says_what_to_do_and_the_override_works(tmp_path, monkeypatch):
    table = tmp_path / "mountinfo"
    table.write_text(f"27 1 254:0 / / rw - ext4 /dev/vda rw\n"
                     f"40 27 0:45 / {tmp_path}/nfs rw - nfs4 fs01:/export rw\n")
    monkeypatch.setenv("KACHERY_MOUNTINFO", str(table))
    monkeypatch.delenv("KACHERY_ALLOW_NETWORK_FS", raising=False)
    (tmp_path / "nfs").mkdir()  # the mount point (a mounted directory exists)
    mount = filesystem_of(tmp_path / "nfs" / "not" / "yet" / "made")
    assert mount == Mount(f"{tmp_path}/nfs", "nfs4", "fs01:/export")
    with pytest.raises(kf.NetworkFileSystemError) as exc:
        require_local_filesystem(tmp_path / "nfs" / "s", "the databases", "Use a local disk")
    message = str(exc.value)
    for words in ("nfs4 fs01:/export", "unsafe", "Use a local disk", "scratch", "KACHERY_ALLOW_NETWORK_FS=1"):
        assert words in message, message
    with pytest.raises(kf.NetworkFileSystemError):
        kf.open_store(tmp_path / "nfs" / "feeds.db")
    assert list((tmp_path / "nfs").iterdir()) == []  # refused before anything was created
    require_local_filesystem(tmp_path / "local", "x", "y")  # on "/": fine
    monkeypatch.setenv("KACHERY_ALLOW_NETWORK_FS", "1")
    kf.open_store(tmp_path / "nfs" / "feeds.db").close()


def test_no_mount_table_refuses_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("KACHERY_MOUNTINFO", str(tmp_path / "absent"))
    assert filesystem_of(tmp_path) is None
    require_local_filesystem(tmp_path, "x", "y")

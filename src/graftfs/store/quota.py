"""Per-image disk limits, where the store's filesystem can enforce them.

A create with ``--disk-limit-size-bytes`` gets its writable layer (the image directory: ``diff`` and the
overlay's ``workdir``) limited to the disk limit, less the image's own size unless
``--exclude-image-from-quota`` (GrootFS's semantics). Backends, chosen by ``init-store``'s probe:

* ``xfs``: the store is on XFS mounted with ``prjquota`` (``init-store --store-size-bytes`` makes such a
  filesystem in a loop-mounted file, as GrootFS does). Each image directory gets a project ID of its own
  (``meta/projectids/<n>``, inherited by everything created below it) with a hard block limit; ``stats``
  reads the project's usage;
* ``btrfs``: the image directory is a subvolume with a qgroup limit on its exclusive bytes; ``stats`` reads
  the qgroup. ``init-store`` enables quotas on the filesystem (``btrfs quota enable``), as GrootFS's btrfs
  driver did;
* ``none`` (measure only): the limit is checked against the image and recorded, and the container's writes
  are measured for ``stats``, but nothing stops them. Whether such a create is refused or only logged is
  the caller's choice (``create.unenforceable_disk_limit: refuse|warn``).

``xfs_quota`` (xfsprogs) and ``btrfs`` (btrfs-progs) are the interfaces to project quotas and qgroups, so
they are run as commands.
"""

from __future__ import annotations

import os
import subprocess

from ..errors import FailedPrecondition, KernelError, os_reason
from .fsutil import read_text

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .layout import Layout


# struct fsxattr (linux/fs.h): xflags, extsize, nextents, projid, cowextsize (u32 each), 8 bytes of padding;
# and its ioctls, _IOR('X', 31, struct fsxattr) and _IOW('X', 32, struct fsxattr).
FSXATTR_SIZE = 28
FSXATTR_PROJID = 12
FS_IOC_FSGETXATTR = 0x801C581F
FS_IOC_FSSETXATTR = 0x401C5820


def run(*argv: str) -> str:
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelError(f"{' '.join(argv)}: {os_reason(exc)}") from None
    if result.returncode != 0:
        detail = " ".join((result.stderr or result.stdout).split())
        raise KernelError(f"{' '.join(argv)}: {detail or f'exit status {result.returncode}'}")
    return result.stdout


def mount_of(path: str) -> tuple[str, str, str]:
    """(mount point, filesystem type, superblock options) of the mount holding ``path``."""
    best = ("", "unknown", "")
    real = os.path.realpath(path)
    for line in read_text("/proc/self/mountinfo", "").splitlines():
        fields = line.split(" ")
        try:
            point = fields[4].replace("\\040", " ")
            dash = fields.index("-")
            kind, options = fields[dash + 1], fields[dash + 3]
        except (IndexError, ValueError):
            continue
        if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(best[0]):
            best = (point, kind, options)
    return best


def probe(root: str) -> str:
    """The backend this store can use (enabling btrfs quotas on the way); only the host's root calls this."""
    import shutil

    _, fstype, options = mount_of(root)
    if fstype == "xfs" and {"prjquota", "pquota"} & set(options.split(",")) and shutil.which("xfs_quota"):
        return "xfs"
    if fstype == "btrfs" and shutil.which("btrfs"):
        try:
            run("btrfs", "quota", "enable", root)
        except KernelError:
            return "none"
        return "btrfs"
    return "none"


class Quota:
    def __init__(self, backend: str, layout: Layout) -> None:
        if backend not in ("none", "xfs", "btrfs"):
            raise FailedPrecondition(f"unknown quota backend `{backend}`")
        self.backend = backend
        self.layout = layout

    def make_image_dir(self, path: str) -> None:
        if self.backend == "btrfs":
            run("btrfs", "subvolume", "create", path)
            os.chmod(path, 0o700)
            return
        os.mkdir(path, 0o700)
        if self.backend == "xfs":
            project = self._allocate(path)
            # Sets the project ID and the inherit flag, so everything created below counts against it.
            self._xfs(f"project -s -p {path} {project}")

    def limit(self, path: str, size: int) -> None:
        if self.backend == "btrfs":
            run("btrfs", "qgroup", "limit", str(size), path)
        elif self.backend == "xfs":
            kib = -(-size // 1024)
            self._xfs(f"limit -p bhard={kib}k {self._project(path)}")

    def leave_out(self, path: str) -> None:
        """The file ``path``, in an image directory, counts against no image's limit (xfs: project 0)."""
        if self.backend != "xfs":
            return
        import fcntl
        import struct

        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            attr = bytearray(FSXATTR_SIZE)
            fcntl.ioctl(fd, FS_IOC_FSGETXATTR, attr)
            struct.pack_into("=I", attr, FSXATTR_PROJID, 0)
            fcntl.ioctl(fd, FS_IOC_FSSETXATTR, attr)
        finally:
            os.close(fd)

    def exclusive_bytes(self, path: str) -> int | None:
        """Bytes the image's writable layer holds, from the backend; ``None`` to measure instead."""
        if self.backend == "btrfs":
            # Qgroupid Referenced Exclusive ...; -f: only this subvolume's own qgroup.
            for line in run("btrfs", "qgroup", "show", "-f", "--raw", path).splitlines():
                fields = line.split()
                if len(fields) >= 3 and fields[0].startswith("0/") and fields[2].isdigit():
                    return int(fields[2])
        elif self.backend == "xfs":
            # <device> <used KiB> <soft> <hard> ...; -v: a project using nothing yet is listed too.
            fields = self._xfs(f"quota -v -p -N -b {self._project(path)}").split()
            if len(fields) >= 2 and fields[1].isdigit():
                return int(fields[1]) * 1024
        return None

    def release(self, path: str) -> None:
        """After the image directory is gone: free its project ID (xfs); qgroups go with the subvolume."""
        if self.backend != "xfs":
            return
        project = read_text(self.layout.project_pointer(path), "").strip()
        if project.isdigit():
            self._xfs(f"limit -p bhard=0 {project}")
            for record in (os.path.join(self.layout.projectids, project), self.layout.project_pointer(path)):
                try:
                    os.unlink(record)
                except FileNotFoundError:
                    pass

    # -- xfs -----------------------------------------------------------------------------------------------

    def _xfs(self, command: str) -> str:
        return run("xfs_quota", "-x", "-c", command, mount_of(self.layout.root)[0])

    def _project(self, path: str) -> str:
        project = read_text(self.layout.project_pointer(path), "").strip()
        if not project.isdigit():
            raise FailedPrecondition(f"{path} has no XFS project ID")
        return project

    def _allocate(self, path: str) -> int:
        """The lowest free project ID above the previous highest, claimed with an exclusive create; the
        image directory's name (its temp name while it is built, then its ID) points at it."""
        os.makedirs(self.layout.projectids, mode=0o755, exist_ok=True)
        taken = [int(n) for n in os.listdir(self.layout.projectids) if n.isdigit()]
        project = max(taken, default=0) + 1
        while True:
            try:
                fd = os.open(os.path.join(self.layout.projectids, str(project)), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                project += 1
                continue
            os.close(fd)
            break
        self.bind(path, project)
        return project

    def renamed(self, old: str, new: str) -> None:
        """The image directory ``old`` is now ``new`` (its commit): move the pointer to its project ID."""
        if self.backend == "xfs":
            pointer = self.layout.project_pointer(old)
            self.bind(new, read_text(pointer, "").strip())
            os.unlink(pointer)

    def bind(self, path: str, project: int | str) -> None:
        with open(self.layout.project_pointer(path), "w") as f:
            f.write(f"{project}\n")

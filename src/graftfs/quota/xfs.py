"""``xfs``: the store is on XFS mounted with ``prjquota`` (``init-store --store-size-bytes`` makes such a
filesystem in a loop-mounted file, as GrootFS does). Each image directory gets a project ID of its own
(``meta/projectids/<n>``, inherited by everything created below it) with a hard block limit; ``stats`` reads
the project's usage. The image directory's name (its temp name while it is built, then its ID) points at its
project ID (:meth:`Layout.quota_record`): that record is what tells a delete there is a project to free.
``xfs_quota`` (xfsprogs) is the interface to project quotas, so it is run as a command."""

from __future__ import annotations

import os

from ..errors import FailedPrecondition
from ..mount import kernel
from ..store.fsutil import read_text
from . import Backend as Base

# struct fsxattr (linux/fs.h): xflags, extsize, nextents, projid, cowextsize (u32 each), 8 bytes of padding;
# and its ioctls, _IOR('X', 31, struct fsxattr) and _IOW('X', 32, struct fsxattr).
FSXATTR_SIZE = 28
FSXATTR_PROJID = 12
FS_IOC_FSGETXATTR = 0x801C581F
FS_IOC_FSSETXATTR = 0x401C5820


class Backend(Base):
    name = "xfs"
    enforces = True

    @classmethod
    def probe(cls, root: str) -> bool:
        _, fstype, options = kernel.mount_of(root)
        return (
            fstype == "xfs"
            and bool({"prjquota", "pquota"} & set(options.split(",")))
            and kernel.which("xfs_quota") is not None
        )

    @classmethod
    def describe(cls, filesystem: str) -> str:
        return "XFS project quotas: each image's writable layer is a project with its limit"

    def make_image_dir(self, path: str) -> None:
        os.mkdir(path, 0o700)
        project = self._allocate(path)
        # Sets the project ID and the inherit flag, so everything created below counts against it.
        self._xfs(f"project -s -p {path} {project}")

    def limit(self, path: str, size: int) -> None:
        kib = -(-size // 1024)
        self._xfs(f"limit -p bhard={kib}k {self._project(path)}")

    def leave_out(self, path: str) -> None:
        """Project 0: the file counts against no image's limit."""
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

    def exclusive_bytes(self, path: str) -> int:
        # <device> <used KiB> <soft> <hard> ...; -v: a project using nothing yet is listed too.
        fields = self._xfs(f"quota -v -p -N -b {self._project(path)}").split()
        if len(fields) >= 2 and fields[1].isdigit():
            return int(fields[1]) * 1024
        return self.measured(path)

    def rename(self, old: str, new: str) -> None:
        """The project ID stays with the directory; its pointer moves to the new name."""
        os.rename(old, new)
        pointer = self.layout.quota_record(old)
        self._bind(new, read_text(pointer, "").strip())
        os.unlink(pointer)

    def release(self, path: str) -> None:
        """Lift the project's limit and free its ID and the pointer to it."""
        project = read_text(self.layout.quota_record(path), "").strip()
        if project.isdigit():
            self._xfs(f"limit -p bhard=0 {project}")
            for record in (os.path.join(self.layout.projectids, project), self.layout.quota_record(path)):
                try:
                    os.unlink(record)
                except FileNotFoundError:
                    pass

    def _xfs(self, command: str) -> str:
        return kernel.run("xfs_quota", "-x", "-c", command, kernel.mount_of(self.layout.root)[0])

    def _project(self, path: str) -> str:
        project = read_text(self.layout.quota_record(path), "").strip()
        if not project.isdigit():
            raise FailedPrecondition(f"{path} has no XFS project ID")
        return project

    def _allocate(self, path: str) -> int:
        """The lowest free project ID above the previous highest, claimed with an exclusive create."""
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
        self._bind(path, project)
        return project

    def _bind(self, path: str, project: int | str) -> None:
        with open(self.layout.quota_record(path), "w") as f:
            f.write(f"{project}\n")

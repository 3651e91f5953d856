"""``btrfs``: the image directory is a subvolume with a qgroup limit on its exclusive bytes; ``stats``
reads the qgroup. The store's probe enables quotas on the filesystem (``btrfs quota enable``), as GrootFS's
btrfs driver did. ``btrfs`` (btrfs-progs) is the interface to qgroups, so it is run as a command.

The qgroup goes with the subvolume: the image directory's removal (an ``rmdir`` of the emptied subvolume)
deletes it, and the kernel drops the subvolume's qgroup once the subvolume is cleaned up."""

from __future__ import annotations

import os

from ..errors import KernelError
from ..mount import kernel
from . import Backend as Base


class Backend(Base):
    name = "btrfs"
    enforces = True

    @classmethod
    def probe(cls, root: str) -> bool:
        if kernel.mount_of(root)[1] != "btrfs" or kernel.which("btrfs") is None:
            return False
        try:
            kernel.run("btrfs", "quota", "enable", root)
        except KernelError:
            return False
        return True

    @classmethod
    def describe(cls, filesystem: str) -> str:
        return "btrfs qgroups: each image's writable layer is a subvolume with its limit"

    def make_image_dir(self, path: str) -> None:
        kernel.run("btrfs", "subvolume", "create", path)
        os.chmod(path, 0o700)

    def limit(self, path: str, size: int) -> None:
        kernel.run("btrfs", "qgroup", "limit", str(size), path)

    def exclusive_bytes(self, path: str) -> int:
        # Qgroupid Referenced Exclusive ...; -f: only this subvolume's own qgroup.
        for line in kernel.run("btrfs", "qgroup", "show", "-f", "--raw", path).splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[0].startswith("0/") and fields[2].isdigit():
                return int(fields[2])
        return self.measured(path)

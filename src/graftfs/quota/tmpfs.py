"""``tmpfs``: an ephemeral image's directory, writable layer included, is a tmpfs of its own, which holds what
the container writes up to its limit, whatever the store's filesystem. Chosen by ``--ephemeral``, never by a
store's probe.

The image's records are on that tmpfs too, and tmpfs cannot leave a file out of its size: the limit is set
once they are written (a remount) as what they take plus the limit, in whole pages (tmpfs's unit), rounded
down so that the container never gets more than its limit; and what they take is not the container's usage.
"""

from __future__ import annotations

import os

from ..mount import kernel
from . import Backend as Base


class Backend(Base):
    name = "tmpfs"
    enforces = True

    @classmethod
    def probe(cls, root: str) -> bool:
        return False

    @classmethod
    def describe(cls, filesystem: str) -> str:
        return "tmpfs: each ephemeral image's writable layer is a tmpfs that holds at most its limit"

    def make_image_dir(self, path: str) -> None:
        os.mkdir(path, 0o700)
        try:
            kernel.mount_tmpfs(path, 0)
        except BaseException:
            os.rmdir(path)
            raise

    def limit(self, path: str, size: int) -> None:
        st = os.statvfs(path)
        kernel.resize_tmpfs(path, (st.f_blocks - st.f_bfree) * st.f_frsize + size // st.f_frsize * st.f_frsize)

    def rename(self, old: str, new: str) -> None:
        # A mount point cannot be renamed: the mount moves to a new directory, and the old one goes.
        os.mkdir(new, 0o700)
        try:
            kernel.move(old, new)
        except BaseException:
            os.rmdir(new)
            raise
        os.rmdir(old)

    def exclusive_bytes(self, path: str) -> int:
        """What the tmpfs holds, less the image's records (the files beside ``diff``)."""
        st = os.statvfs(path)
        records = 0
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    records += entry.stat(follow_symlinks=False).st_blocks * 512
        return (st.f_blocks - st.f_bfree) * st.f_frsize - records

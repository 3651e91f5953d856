"""``tmpfs``: an ephemeral image's directory, writable layer included, is a tmpfs of its own, as large as the
limit when there is one: the limit is tmpfs's size, whatever the store's filesystem. Chosen by
``--ephemeral``, never by a store's probe."""

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
        return "tmpfs: each ephemeral image's writable layer is a tmpfs as large as its limit"

    def make_image_dir(self, path: str, size: int) -> None:
        # Sized when mounted (not remounted by limit()): one mount call per create.
        os.mkdir(path, 0o700)
        try:
            kernel.mount_tmpfs(path, size)
        except BaseException:
            os.rmdir(path)
            raise

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
        st = os.statvfs(path)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

"""The one module that makes raw mount system calls.

ctypes is imported lazily: only the commands that mount or unmount pay for it.
"""

from __future__ import annotations

import errno as _errno
import os
import time

from ..errors import KernelError
from .spec import OverlaySpec

TYPE_CHECKING = False  # keep typing off the start-up path
if TYPE_CHECKING:
    from typing import Any

_libc: Any = None


def _c() -> Any:
    global _libc
    if _libc is None:
        import ctypes

        lib = ctypes.CDLL(None, use_errno=True)
        lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
        lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        _libc = (lib, ctypes)
    return _libc


def _fs(path: str) -> bytes:
    return os.fsencode(path)


def mount_overlay(spec: OverlaySpec) -> None:
    """Mount ``spec`` at its target. Relative layer paths are resolved from ``spec.cwd``, so the mount is
    made with the process's working directory there (and restored after)."""
    spec.check()
    lib, ctypes = _c()
    options = spec.options().encode()
    old = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.chdir(spec.cwd)
        rc = lib.mount(b"overlay", _fs(spec.target), b"overlay", 0, options)
        err = ctypes.get_errno()
    finally:
        os.fchdir(old)
        os.close(old)
    if rc != 0:
        raise KernelError(f"mounting overlay at {spec.target}: {os.strerror(err)}", err)


def unmount(target: str, retries: int = 50, interval: float = 0.1) -> None:
    """Unmount ``target``; not mounted is success. EBUSY is retried (bounded), as GrootFS does, because a
    container's last processes can take a moment to let go after the runtime kills them."""
    lib, ctypes = _c()
    for attempt in range(retries):
        if lib.umount2(_fs(target), 0) == 0:
            return
        err = ctypes.get_errno()
        if err in (_errno.EINVAL, _errno.ENOENT):  # not a mount point / already gone
            return
        if err != _errno.EBUSY or attempt == retries - 1:
            raise KernelError(f"unmounting {target}: {os.strerror(err)}", err)
        time.sleep(interval)


def is_mountpoint(path: str) -> bool:
    try:
        st = os.lstat(path)
        parent = os.lstat(os.path.join(path, ".."))
    except OSError:
        return False
    return st.st_dev != parent.st_dev or st.st_ino == parent.st_ino

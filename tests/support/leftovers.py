"""Clean-up shared by the fixtures that start servers and mount things: kill what is left, unmount what is left,
and reap what a killed process orphans (PID 1 on the test machines reaps nothing)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from graftfs.mount import kernel


def kill_until_gone(pids: Callable[[], list[int]], timeout: float = 10.0) -> None:
    """SIGKILL every process ``pids()`` names, then wait (up to ``timeout``) until it names none."""
    for pid in pids():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while pids() and time.monotonic() < deadline:
        time.sleep(0.05)


def unmount_under(path: Path) -> list[str]:
    """Lazily unmount every mount point below ``path``, deepest first; returns them (what was left mounted)."""
    prefix = str(path.resolve()) + "/"
    left = [m.point for m in kernel.mountinfo() if m.point.startswith(prefix)]
    for point in sorted(left, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)
    return left


_PR_SET_CHILD_SUBREAPER = 36


def _set_subreaper(on: bool) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


@contextmanager
def subreaper() -> Iterator[None]:
    """This process as the subreaper of its descendants for the block: a process orphaned meanwhile (the child
    of a child killed in the block) becomes this process's child, to be reaped by :func:`reap`, instead of
    PID 1's. PID 1 here (the VM's init) reaps no orphans: they stay zombies, and a zombie's PID still answers
    ``kill(pid, 0)``, so a daemon that checks a PID file takes a dead process for a live one."""
    _set_subreaper(True)
    try:
        yield
    finally:
        _set_subreaper(False)


def reap(pid: int, timeout: float = 30.0) -> None:
    """Wait for ``pid``, this process's child (adopted under :func:`subreaper`), to exit and reap it; SIGKILL it
    after ``timeout``. A PID that is not this process's child is left alone."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return
        time.sleep(0.02)

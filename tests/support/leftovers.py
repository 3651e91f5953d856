"""Clean-up shared by the fixtures that start servers and mount things: kill what is left, unmount what is left."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
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

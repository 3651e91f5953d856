"""A filesystem of a test's own: a sparse file, made with ``mkfs``, on a loop device this test attaches."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def loop_filesystem(workdir: Path, name: str, size: int, mkfs: Sequence[str]) -> Iterator[Path]:
    """``mkfs`` (its argv; the image's path is appended) on ``workdir/<name>.img`` of ``size`` bytes, mounted
    at ``workdir/<name>``. On exit everything below the mount point is unmounted, then the filesystem, and
    only the loop device attached here is detached."""
    image, mnt = workdir / f"{name}.img", workdir / name
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run([*mkfs, str(image)], check=True, capture_output=True)
    device = subprocess.run(
        ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        subprocess.run(["mount", device, str(mnt)], check=True)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", "-R", str(mnt)], check=False)
    finally:
        subprocess.run(["losetup", "-d", device], check=False)

"""What every benchmark shares: the XFS scratch filesystem, the environment tools run in, timing, summaries."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def xfs_scratch(size_mb: int = 2048) -> Iterator[Path]:
    """A fresh XFS filesystem on a loop device; detaches only the device it attached."""
    base = Path(tempfile.mkdtemp(prefix="graftfs-bench-"))
    image, mnt = base / "xfs.img", base / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(size_mb << 20)
    subprocess.run(["mkfs.xfs", "-q", str(image)], check=True)
    dev = subprocess.run(["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True)
    device = dev.stdout.strip()
    try:
        subprocess.run(["mount", "-o", "noatime", device, str(mnt)], check=True)
        try:
            yield mnt
        finally:
            unmount_under(mnt)
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", device], check=True)
        shutil.rmtree(base)


def unmount_under(path: Path) -> None:
    """Lazily unmount, newest first, whatever is mounted below ``path``.

    A tool stopped mid-run (Ctrl-C, a failure) can leave an overlay mounted in its store, which would keep the
    store from being removed and the scratch filesystem from being unmounted.
    """
    prefix = f"{path}/"
    with open("/proc/self/mountinfo") as f:
        # mountinfo escapes blanks in paths as octal (\040).
        targets = [line.split()[4].encode().decode("unicode_escape") for line in f]
    for target in reversed(targets):
        if target.startswith(prefix):
            subprocess.run(["umount", "--lazy", target], check=False)


# Measure an installed tool: bytecode compiled and cached (some shells export PYTHONDONTWRITEBYTECODE).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def graftfs_script() -> str:
    """The installed ``graftfs`` console script next to this interpreter, its package byte-compiled."""
    import graftfs as package

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(package.__file__).parent)], check=True)
    return str(Path(sys.executable).with_name("graftfs"))


def machine() -> str:
    return f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, kernel {platform.release()}"


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=ENV)
    return time.perf_counter() - start


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": statistics.median(ordered) * 1000,
        "p95_ms": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] * 1000,
        "runs": len(ordered),
    }

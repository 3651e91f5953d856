"""Per-image disk limits, where the store's filesystem can enforce them.

A create with ``--disk-limit-size-bytes`` gets its writable layer (the image directory: ``diff`` and the
overlay's ``workdir``) limited to the disk limit, less the image's own size unless
``--exclude-image-from-quota`` (GrootFS's semantics). Backends, chosen by ``init-store``'s probe:

* ``btrfs``: the image directory is a subvolume with a qgroup limit on its exclusive bytes; ``stats`` reads
  the qgroup instead of walking files. ``init-store`` enables quotas on the filesystem (``btrfs quota
  enable``), as GrootFS's btrfs driver did;
* ``none`` (measure only): the limit is checked against the image and recorded, and the container's writes
  are measured for ``stats``, but nothing stops them. Whether such a create is refused or only logged is
  the caller's choice (``create.unenforceable_disk_limit: refuse|warn``).

btrfs-progs' ``btrfs`` is the interface to subvolumes and qgroups, so it is run as a command.
"""

from __future__ import annotations

import os
import subprocess

from ..errors import FailedPrecondition, KernelError


def _btrfs(*args: str) -> str:
    try:
        result = subprocess.run(["btrfs", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelError(f"btrfs {' '.join(args)}: {exc}") from None
    if result.returncode != 0:
        detail = " ".join((result.stderr or result.stdout).split())
        raise KernelError(f"btrfs {' '.join(args)}: {detail or f'exit status {result.returncode}'}")
    return result.stdout


def probe_btrfs(root: str) -> bool:
    """Enable quotas on the btrfs filesystem holding ``root``; whether that worked."""
    import shutil

    if shutil.which("btrfs") is None:
        return False
    try:
        _btrfs("quota", "enable", root)
    except KernelError:
        return False
    return True


def make_image_dir(backend: str, path: str) -> None:
    if backend == "btrfs":
        _btrfs("subvolume", "create", path)
        os.chmod(path, 0o700)
    else:
        os.mkdir(path, 0o700)


def limit(backend: str, path: str, size: int) -> None:
    if backend == "btrfs":
        _btrfs("qgroup", "limit", str(size), path)
    elif backend != "none":
        raise FailedPrecondition(f"unknown quota backend `{backend}`")


def exclusive_bytes(backend: str, path: str) -> int | None:
    """Bytes the image's writable layer holds, from the quota backend; ``None`` to measure instead."""
    if backend != "btrfs":
        return None
    # Qgroupid Referenced Exclusive ...; -f: only this subvolume's own qgroup.
    for line in _btrfs("qgroup", "show", "-f", "--raw", path).splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0].startswith("0/") and fields[2].isdigit():
            return int(fields[2])
    return None

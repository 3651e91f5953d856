"""The quota conformance suite: the same cases for every quota backend (graftfs.quota), each run on the
filesystem that backend needs. The cases drive ``Images`` (create, usage, delete) with the backend directly,
in a store of their own under ``root``, and write as the container would, into the image's ``diff``.

tests/integration/test_quota_conformance.py runs them on this machine (btrfs on a loop device, tmpfs, ext4);
XFS project quotas need another kernel, so there the cases run inside the VM, all in the boot the XFS tests
share, through ``python -m tests.support.quota_conformance xfs ROOT`` (one line per case: ``conformance
<case> ok`` or ``conformance <case> FAIL <why>``).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Callable

from graftfs import quota
from graftfs.mount import kernel
from graftfs.store import features
from graftfs.store.images import Images
from graftfs.store.layout import Layout

MB = 1 << 20
# What a backend may count beyond the bytes written: btrfs counts its metadata nodes (16 KiB each) in a
# subvolume's exclusive bytes, and a few of them change with a write of megabytes.
SLACK = 64 * 1024


class Harness:
    """A store at ``root`` whose images use the backend ``name``."""

    def __init__(self, name: str, root: str) -> None:
        self.name = name
        self.layout = Layout(root)
        for directory in [*self.layout.directories(), self.layout.released]:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        # What a delete reads to find the backend that holds something for an image (tmpfs is per image).
        store_backend = "none" if name == quota.EPHEMERAL else name
        features.save(self.layout, features.Features(quota=store_backend))
        self.backend = quota.load(name, self.layout)
        self.images = Images(self.layout)
        self.made: list[str] = []

    def create(self, image_id: str, limit: int) -> str:
        self.made.append(image_id)
        return self.images.create(image_id, [], 0, quota=self.backend, quota_bytes=limit)

    def cleanup(self) -> None:
        """Delete what a failed case left (a case deletes its images itself: that is part of the case)."""
        for image_id in self.made:
            if os.path.lexists(self.layout.image(image_id)):
                self.images.delete(image_id)

    def exclusive(self, path: str) -> int:
        os.sync()  # btrfs accounts qgroups when a transaction commits
        return self.backend.exclusive_bytes(path)

    def empty_dir_usage(self) -> int:
        """What an image directory of this backend uses with nothing in it but its subdirectories."""
        path = os.path.join(self.layout.images, ".empty")
        self.backend.make_image_dir(path)
        try:
            for sub in ("diff", "workdir", "rootfs"):
                os.mkdir(os.path.join(path, sub))
            return self.exclusive(path)
        finally:
            self.images.unmount(path)
            subprocess.run(["rm", "-rf", "--one-file-system", path], check=True)
            self.backend.release(path)

    def held(self) -> set[str]:
        """What the backend holds outside the image directories: XFS project IDs and limits, btrfs qgroups
        (the kernel drops a deleted subvolume's once it is cleaned up), mounts."""
        found: set[str] = set()
        if os.path.isdir(self.layout.projectids):
            found |= {f"record {name}" for name in os.listdir(self.layout.projectids)}
        if self.name == "xfs":
            report = kernel.run("xfs_quota", "-x", "-c", "report -p -n -b", kernel.mount_of(self.layout.root)[0])
            # "#<project> <used> <soft> <hard> ...": a project with a hard limit is held.
            found |= {f"limit {f[0]}" for f in map(str.split, report.splitlines()) if f[:1] != ["#0"] and _limited(f)}
        if self.name == "btrfs":
            kernel.run("btrfs", "subvolume", "sync", self.layout.root)
            shown = kernel.run("btrfs", "qgroup", "show", "--raw", self.layout.root)
            found |= {f"qgroup {f[0]}" for f in map(str.split, shown.splitlines()) if f[:1] and f[0].startswith("0/")}
        images = os.path.realpath(self.layout.images)
        found |= {f"mount {point}" for point in kernel.mounts_under(images) if point != images}
        return found


def _limited(fields: list[str]) -> bool:
    return len(fields) >= 4 and fields[0].startswith("#") and fields[3].isdigit() and int(fields[3]) > 0


def write(path: str, size: int) -> OSError | None:
    """Write ``size`` bytes to the file ``path`` and fsync it: the error that stopped it, if any."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as exc:
        return exc
    try:
        chunk = b"\xa5" * min(size, MB)
        left = size
        while left > 0:
            left -= os.write(fd, chunk[:left])
        os.fsync(fd)
    except OSError as exc:
        return exc
    finally:
        os.close(fd)
    return None


def _stopped(error: OSError | None) -> bool:
    return error is not None and error.errno in (errno.EDQUOT, errno.ENOSPC)


def case_limit_is_enforced_or_only_measured(h: Harness) -> None:
    """A write past the limit fails with EDQUOT or ENOSPC; measure only: it succeeds and is measured."""
    path = h.create("past", MB)
    error = write(os.path.join(path, "diff", "data"), 2 * MB)
    if h.backend.enforces:
        assert _stopped(error), error
    else:
        assert error is None, error
        assert h.exclusive(path) >= 2 * MB
    h.images.delete("past")


def case_usage_matches_what_was_written(h: Harness) -> None:
    path = h.create("usage", 16 * MB)
    before = h.exclusive(path)
    assert write(os.path.join(path, "diff", "data"), 3 * MB) is None
    after = h.exclusive(path)
    assert 3 * MB <= after - before <= 3 * MB + SLACK, (before, after)
    h.images.delete("usage")


def case_records_do_not_count(h: Harness) -> None:
    """The image's records (image_info, image_quota) count neither in its usage nor against its limit."""
    empty = h.empty_dir_usage()
    path = h.create("records", 16 * MB)
    assert {"image_info", "image_quota"} <= set(os.listdir(path))
    assert h.exclusive(path) == empty, (h.exclusive(path), empty)
    h.images.delete("records")


def case_release_after_delete_frees_what_the_backend_held(h: Harness) -> None:
    before = h.held()
    h.create("released", 16 * MB)
    during = h.held()
    if h.backend.enforces:
        assert during != before, during  # something is held: the case would prove nothing otherwise
    h.images.delete("released")
    assert h.held() == before, (before, h.held())


def case_rename_keeps_the_limit(h: Harness) -> None:
    path = h.create("renamed", MB)  # made under a temporary name, renamed to its ID
    moved = path + "-moved"
    h.backend.rename(path, moved)
    try:
        error = write(os.path.join(moved, "diff", "data"), 2 * MB)
        assert _stopped(error) if h.backend.enforces else error is None, error
        assert h.exclusive(moved) >= (MB - SLACK if h.backend.enforces else 2 * MB)
    finally:
        h.backend.rename(moved, path)
    h.images.delete("renamed")


def case_a_limit_smaller_than_one_block(h: Harness) -> None:
    """Created (the records are not the image's to count), and not one byte more can be written."""
    empty = h.empty_dir_usage()
    path = h.create("tiny", 10)
    with open(os.path.join(path, "image_quota")) as f:
        assert f.read() == "10"
    assert h.exclusive(path) == empty
    error = write(os.path.join(path, "diff", "one"), 1)
    assert _stopped(error) if h.backend.enforces else error is None, error
    h.images.delete("tiny")


CASES: dict[str, Callable[[Harness], None]] = {
    name.removeprefix("case_"): func for name, func in globals().items() if name.startswith("case_")
}


def main(name: str, root: str) -> None:
    """Every case, each in a store of its own under ``root``; one line each (for the VM)."""
    os.environ["GRAFTFS_STATS_CACHE_SECONDS"] = "0"
    for case, func in CASES.items():
        harness = Harness(name, os.path.join(root, case))
        try:
            func(harness)
        except Exception as exc:
            print(f"conformance {case} FAIL {type(exc).__name__}: {' '.join(str(exc).split())}", flush=True)
        else:
            print(f"conformance {case} ok", flush=True)
        finally:
            harness.cleanup()


if __name__ == "__main__":
    main(*sys.argv[1:3])

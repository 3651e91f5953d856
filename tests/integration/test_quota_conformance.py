"""Every quota backend against the same cases (tests/support/quota_conformance.py), on the filesystem it
needs: btrfs qgroups on a btrfs loop device, tmpfs (ephemeral images) on this machine's own filesystem,
measure only on an ext4 loop device, XFS project quotas inside the VM (the boot the XFS tests share)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from graftfs import quota
from tests.support import quota_conformance
from tests.support.loopfs import loop_filesystem

MB = 1 << 20
BACKENDS = ("btrfs", "tmpfs", "none", "xfs")


def test_every_registered_backend_is_in_the_suite() -> None:
    assert set(quota.BACKENDS) == set(BACKENDS)


@pytest.fixture
def root(request: pytest.FixtureRequest, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on the filesystem the backend ``request.param`` needs, and that backend is the one the
    store's probe picks there."""
    monkeypatch.setenv("GRAFTFS_STATS_CACHE_SECONDS", "0")  # usage is measured again at every ask
    name = request.param
    if name == "btrfs":
        if not shutil.which("mkfs.btrfs"):
            pytest.skip("needs btrfs-progs")
        with loop_filesystem(workdir, "btrfs", 512 * MB, ["mkfs.btrfs", "-q"]) as mnt:
            assert quota.probe(str(mnt)) == "btrfs"  # and quotas are enabled
            yield mnt
    elif name == "none":
        with loop_filesystem(workdir, "ext4", 128 * MB, ["mkfs.ext4", "-q"]) as mnt:
            assert quota.probe(str(mnt)) == "none"
            yield mnt
    else:  # tmpfs: ephemeral images on whatever the store is on
        yield workdir


@pytest.mark.parametrize("case", list(quota_conformance.CASES))
@pytest.mark.parametrize("root", [b for b in BACKENDS if b != "xfs"], indirect=True)
def test_backend_conforms(root: Path, case: str, request: pytest.FixtureRequest) -> None:
    harness = quota_conformance.Harness(request.node.callspec.params["root"], str(root / "store"))
    try:
        quota_conformance.CASES[case](harness)
    finally:
        harness.cleanup()


@pytest.mark.parametrize("case", list(quota_conformance.CASES))
def test_xfs_conforms_in_the_vm(xfs_vm: dict[str, str], case: str) -> None:
    lines = xfs_vm["conformance"].splitlines()
    assert f"conformance {case} ok" in lines, xfs_vm["conformance"]

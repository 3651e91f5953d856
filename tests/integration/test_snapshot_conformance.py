"""The snapshotter conformance suite (tests/support/snapshot_conformance.py) against graftfs's Snapshotter:
containerd's cases, graftfs's own, and those across processes. Each case gets a fresh snapshotter on
``tmp_path/root`` and the play area ``tmp_path/work``, with the umask cleared as containerd's suite does."""

from __future__ import annotations

import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from graftfs.store.snapshots import Snapshotter
from tests.integration.conftest import Graftfs
from tests.support import snapshot_conformance as conformance
from tests.support.snapshot_conformance import CaseFn, Opener, ProcessCaseFn

#: containerd's t.Run names (core/snapshots/testsuite/testsuite.go): every one is ported.
CONTAINERD_CASES = [
    "Basic",
    "StatActive",
    "StatComitted",
    "TransitivityTest",
    "PreareViewFailingtest",
    "Update",
    "Remove",
    "Walk",
    "LayerFileupdate",
    "RemoveDirectoryInLowerLayer",
    "Chown",
    "DirectoryPermissionOnCommit",
    "RemoveIntermediateSnapshot",
    "DeletedFilesInChildSnapshot",
    "MoveFileFromLowerLayer",
    "ViewReadonly",
    "StatInWalk",
    "CloseTwice",
    "RootPermission",
    "Rename",
    "128LayersMount",
]


def test_every_containerd_case_is_ported() -> None:
    assert [name for name, _ in conformance.CASES] == CONTAINERD_CASES


def _unmount_left(tmp_path: Path) -> list[str]:
    """Unmount whatever is still mounted under ``tmp_path`` (deepest first); returns what was."""
    left = conformance.mounts_under(str(tmp_path))
    for point in left:
        try:
            conformance.unmount_all(point)  # every mount stacked there
        except Exception:
            subprocess.run(["umount", "-R", "-l", point], check=False)
    return left


@pytest.fixture(params=["bare", "store"])
def snapshotter(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Snapshotter, str]]:
    """A fresh Snapshotter on ``tmp_path/root`` and the empty ``tmp_path/work``; afterwards anything left
    mounted under ``tmp_path`` is unmounted and the snapshotter closed. A case that passed must have left
    nothing mounted. ``root`` is a bare directory the snapshotter makes, or a graftfs store made by
    ``init-store`` (whose probed overlay options the snapshotter then uses)."""
    work = tmp_path / "work"
    work.mkdir()
    failures = request.session.testsfailed
    root = tmp_path / "root"
    if request.param == "store":
        Graftfs(root).run("init-store")
    sn = Snapshotter(str(root))
    try:
        with conformance.cleared_umask():
            yield sn, str(work)
    finally:
        left = _unmount_left(tmp_path)
        sn.close()
    # The call's report is in before teardown: a count that grew means the case failed (left mounts then
    # are the failure's, already reported).
    assert request.session.testsfailed > failures or not left, f"the case left mounts behind: {left}"


@pytest.mark.parametrize(
    "case",
    [c for _, c in conformance.CASES + conformance.GRAFTFS_CASES],
    ids=[n for n, _ in conformance.CASES + conformance.GRAFTFS_CASES],
)
def test_conformance(case: CaseFn, snapshotter: tuple[Snapshotter, str]) -> None:
    sn, work = snapshotter
    case(sn, work)


@pytest.fixture
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Opener, str]]:
    """How the processes of a case open ``tmp_path/root`` (graftfs's Snapshotter), and the play area;
    cleaned up as :func:`snapshotter`'s."""
    work = tmp_path / "work"
    work.mkdir()
    failures = request.session.testsfailed
    try:
        with conformance.cleared_umask():
            yield Opener(str(tmp_path / "root")), str(work)
    finally:
        left = _unmount_left(tmp_path)
    assert request.session.testsfailed > failures or not left, f"the case left mounts behind: {left}"


@pytest.mark.parametrize(
    "case", [c for _, c in conformance.PROCESS_CASES], ids=[n for n, _ in conformance.PROCESS_CASES]
)
def test_across_processes(case: ProcessCaseFn, opener: tuple[Opener, str]) -> None:
    how, work = opener
    case(how, work)


def test_no_directory_of_the_root_is_writable_by_others_whatever_the_umask(tmp_path: Path) -> None:
    """The snapshotter makes its directories with modes of its own, not the umask's: under umask 0 (which
    containerd's suite runs with) a world-writable root or ``snapshots/`` would let anyone rename a snapshot's
    directory away and put their own tree in its place. Inside the snapshots' trees, modes are the caller's."""
    root = tmp_path / "deep" / "root"
    with conformance.cleared_umask():
        sn = Snapshotter(str(root))
        sn.prepare("a")
        sn.commit("c", "a")
        sn.prepare("b", "c")
        sn.view("v", "c")
        sn.close()
    writable = []
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o022 and path.name != "fs":
            writable.append(f"{stat.S_IMODE(st.st_mode):04o} {path.relative_to(tmp_path)}")
    assert not writable, "writable by group or others: " + ", ".join(writable)

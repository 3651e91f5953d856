"""The snapshot conformance cases that make sense through Docker's graphdriver protocol, run against a
``graftfs serve docker-graphdriver`` process through :class:`tests.support.graphdriver_wire.GraphdriverSnapshotter`
(``commit`` as ``docker commit`` does it: ``Diff`` against the parent, ``ApplyDiff`` to a new layer, so every
layer a case checks went through the plugin's overlay → tar → overlay round trip: whiteouts, opaque
directories, owners, modes, renames).

Left out, having no counterpart in the protocol: labels, ``stat``, ``update``, ``usage``, ``walk`` (Basic,
StatActive, StatComitted, TransitivityTest, Update, Remove, Walk, StatInWalk), ``close`` (CloseTwice), keys of
any string (the plugin takes dockerd's ids; the client hashes keys), and the cases across processes."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from graftfs.mount import kernel
from tests.support import snapshot_conformance as conformance
from tests.support.graphdriver_wire import GraphdriverSnapshotter, Plugin
from tests.support.snapshot_conformance import CaseFn

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts overlays")

CASES = [
    "PreareViewFailingtest",
    "LayerFileupdate",
    "RemoveDirectoryInLowerLayer",
    "Chown",
    "DirectoryPermissionOnCommit",
    "RemoveIntermediateSnapshot",
    "DeletedFilesInChildSnapshot",
    "MoveFileFromLowerLayer",
    "ViewReadonly",
    "RootPermission",
    "Rename",
    "128LayersMount",
]
BY_NAME = dict(conformance.CASES)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[GraphdriverSnapshotter, str]]:
    sock_dir = Path(tempfile.mkdtemp(prefix="gfs-gdc-"))
    work = tmp_path / "work"
    work.mkdir()
    plugin = Plugin(tmp_path / "store", sock_dir / "gd.sock", tmp_path / "plugin.log")
    sn = GraphdriverSnapshotter(plugin)
    try:
        with conformance.cleared_umask():
            yield sn, str(work)
    finally:
        sn.close()
        plugin.call("Cleanup")
        assert plugin.stop() == 0
        shutil.rmtree(sock_dir, ignore_errors=True)
        left = [m.point for m in kernel.mountinfo() if m.point.startswith(str(tmp_path) + "/")]
        for point in sorted(left, key=len, reverse=True):
            kernel.unmount(point)
        assert not left, f"left mounted: {left}"
        assert "unexpected-error" not in plugin.log.read_text()


@pytest.mark.parametrize("name", CASES)
def test_conformance_over_the_graphdriver_protocol(name: str, client: tuple[GraphdriverSnapshotter, str]) -> None:
    case: CaseFn = BY_NAME[name]
    sn, work = client
    case(sn, work)  # type: ignore[arg-type]

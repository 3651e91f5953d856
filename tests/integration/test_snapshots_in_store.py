"""The snapshot core inside a Garden store: the layers pulled for images are its committed snapshots
(``sha256:<chain id>``), shared with images, kept from clean while a snapshot stands on them."""

from __future__ import annotations

from pathlib import Path

import pytest

from graftfs.errors import FailedPrecondition, NotFound
from graftfs.mount import kernel
from graftfs.store.snapshots import KIND_ACTIVE, KIND_COMMITTED, Snapshotter
from tests.integration.conftest import Graftfs
from tests.support.images import TarBuilder, write_oci_layout


def test_pulled_layers_are_committed_snapshots_with_their_parents(gfs: Graftfs, workdir: Path) -> None:
    layers = [TarBuilder().file("a", b"a").build(), TarBuilder().file("b", b"b").whiteout("a").build()]
    image = write_oci_layout(workdir / "l", layers)
    gfs.create(image.url(), "img")
    sn = Snapshotter(str(gfs.store))
    bottom, top = image.chain_ids
    assert sn.stat(top).kind == KIND_COMMITTED and sn.stat(top).parent == bottom
    assert sn.stat(bottom).parent == ""
    assert {i.name for i in sn.walk("kind==committed")} == {bottom, top}
    assert sn.usage(top).inodes >= 1

    target = workdir / "rootfs"
    target.mkdir()
    mounts = sn.prepare("ns/1/container a", top, {"owner": "test"})
    kernel.mount_all(mounts, str(target))
    try:
        assert sorted(p.name for p in target.iterdir()) == ["b"]  # a's whiteout holds in the core's overlay too
        (target / "written").write_text("x")
    finally:
        kernel.unmount(str(target))
    assert sn.usage("ns/1/container a").inodes == 1

    # Neither the image's delete nor clean takes a layer a snapshot stands on.
    gfs.run("delete", "img")
    gfs.run("clean")
    assert sn.stat(top).kind == KIND_COMMITTED
    with pytest.raises(FailedPrecondition, match="clean removes it"):
        sn.remove(top)
    assert sn.stat("ns/1/container a").kind == KIND_ACTIVE

    sn.remove("ns/1/container a")
    gfs.run("clean")
    with pytest.raises(NotFound):
        sn.stat(top)
    assert list(sn.walk()) == []


def test_clean_removes_what_a_killed_snapshot_verb_left(gfs: Graftfs, workdir: Path) -> None:
    image = write_oci_layout(workdir / "l", [TarBuilder().file("a", b"a").build()])
    gfs.create(image.url(), "img")
    gfs.run("delete", "img")
    sn = Snapshotter(str(gfs.store))
    sn.prepare("kept", image.chain_ids[0])
    # A prepare killed before its commit point: a directory and a record no key reaches.
    orphan = gfs.store / "snapshots" / "0123456789"
    (orphan / "fs").mkdir(parents=True)
    record = gfs.store / "meta" / "dependencies" / "snapshot:0123456789.json"
    record.write_text(f'["{image.chain_ids[0].partition(":")[2]}"]')
    gfs.run("clean")
    assert not orphan.exists() and not record.exists()
    assert sn.stat(image.chain_ids[0]).kind == KIND_COMMITTED  # "kept" still stands on it
    sn.remove("kept")
    gfs.run("clean")
    assert gfs.volumes() == set()

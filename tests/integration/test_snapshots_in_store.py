"""The snapshot core inside a Garden store: the layers pulled for images are its committed snapshots
(``sha256:<chain id>``), shared with images, kept from clean while a snapshot stands on them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graftfs.errors import FailedPrecondition, InvalidArgument, NotFound
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


def test_a_layer_pulled_before_parents_were_recorded_takes_its_parent_from_an_image(
    gfs: Graftfs, workdir: Path
) -> None:
    image = write_oci_layout(
        workdir / "l", [TarBuilder().file("a", b"a").build(), TarBuilder().file("b", b"b").build()]
    )
    gfs.create(image.url(), "img")
    bottom, top = image.chain_ids
    record = gfs.store / "meta" / f"volume-{top.partition(':')[2]}"
    record.write_text(json.dumps({"Size": 1}))  # as an older graftfs (or GrootFS) wrote it
    sn = Snapshotter(str(gfs.store))
    assert sn.stat(top).parent == bottom  # from the image's commit record
    target = workdir / "t"
    target.mkdir()
    kernel.mount_all(sn.view("v", top), str(target))
    try:
        assert sorted(p.name for p in target.iterdir()) == ["a", "b"]
    finally:
        kernel.unmount(str(target))
    sn.remove("v")
    gfs.run("delete", "img")
    (gfs.store / "meta" / "released").rename(gfs.store / "meta" / "released-away")  # no record names it now
    with pytest.raises(FailedPrecondition, match="did not record the layer below it"):
        sn.prepare("k", top)
    (gfs.store / "meta" / "released-away").rename(gfs.store / "meta" / "released")


def test_a_deep_chain_of_pulled_layers_mounts_whole_and_a_bad_filter_fails_the_call(
    gfs: Graftfs, workdir: Path
) -> None:
    layers = [TarBuilder().file(f"f{i}", str(i).encode()).build() for i in range(100)]
    image = write_oci_layout(workdir / "l", layers)
    gfs.create(image.url(), "deep")
    sn = Snapshotter(str(gfs.store))
    target = workdir / "t"
    target.mkdir()
    kernel.mount_all(sn.view("v", image.chain_ids[-1]), str(target))
    try:
        assert len(list(target.iterdir())) == 100  # every layer: none cut off at the kernel's page
    finally:
        kernel.unmount(str(target))
    with pytest.raises(InvalidArgument):
        sn.walk("name==")  # at the call, not at the first next()
    sn.remove("v")
    gfs.run("delete", "deep")

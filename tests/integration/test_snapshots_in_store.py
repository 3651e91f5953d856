"""The snapshot core inside a Garden store: the layers pulled for images are its committed snapshots
(``sha256:<chain id>``), shared with images, kept from clean while a snapshot stands on them."""

from __future__ import annotations

import json
import os
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


def test_each_front_end_sees_walks_and_removes_only_its_own_namespace(gfs: Graftfs, workdir: Path) -> None:
    """The Python API (the default namespace), the containerd snapshotter's ``containerd`` and the graphdriver's
    ``docker`` share one store: the same key in each is three snapshots, each walk lists its own (the default's
    with the store's pulled layers, as before), a pulled layer is every namespace's parent, and a cleanup from
    any of them keeps the others' snapshots."""
    image = write_oci_layout(workdir / "l", [TarBuilder().file("a", b"a").build()])
    gfs.create(image.url(), "img")
    (layer,) = image.chain_ids
    python = Snapshotter(str(gfs.store))
    ctrd = Snapshotter(str(gfs.store), namespace="containerd")
    docker = Snapshotter(str(gfs.store), namespace="docker")
    for sn, label in ((python, "python"), (ctrd, "containerd"), (docker, "docker")):
        sn.prepare("same key", layer, {"who": label})  # on the store's pulled layer, from every namespace
        sn.commit("same name", "same key", {"who": label})
        sn.view("a view", "same name")
        assert sn.stat(layer).kind == KIND_COMMITTED  # shared: every namespace finds it
    for sn, label in ((python, "python"), (ctrd, "containerd"), (docker, "docker")):
        assert sn.stat("same name").labels == {"who": label}
        walked = {i.name for i in sn.walk()}
        assert walked == ({"same name", "a view", layer} if sn is python else {"same name", "a view"}), walked
    with pytest.raises(NotFound):
        ctrd.stat("python only")  # nothing of another namespace is visible
    python.prepare("python only")
    with pytest.raises(NotFound):
        ctrd.remove("python only")
    assert python.cleanup() == []
    assert ctrd.cleanup() == [] and docker.cleanup() == []
    gfs.run("clean")  # clean runs the core's cleanup too
    for sn in (python, ctrd, docker):
        assert {i.name for i in sn.walk("kind==view")} == {"a view"}
    # containerd's garbage collection: remove every snapshot its walk lists, leaves first.
    for name in ("a view", "same name"):
        ctrd.remove(name)
    assert list(ctrd.walk()) == []
    assert {i.name for i in python.walk()} == {"same name", "a view", "python only", layer}
    assert {i.name for i in docker.walk()} == {"same name", "a view"}
    for sn in (python, docker):
        for name in ("a view", "same name"):
            sn.remove(name)
    python.remove("python only")
    gfs.run("delete", "img")
    gfs.run("clean")
    assert gfs.volumes() == set()
    assert os.listdir(gfs.store / "snapshots") == ["keys"] and os.listdir(gfs.store / "snapshots" / "keys") == []


def test_a_store_from_before_namespaces_keeps_its_snapshots_and_each_front_end_adopts_its_own(
    gfs: Graftfs, workdir: Path
) -> None:
    """Records written before namespaces say none, and all keys were hashed alike: the Python API still sees
    them all; the containerd snapshotter, as it starts, takes those of containerd's shape (and only those), the
    graphdriver its ``docker/`` ones, each through a crash-safe move; a record that says its namespace is never
    moved again."""
    python = Snapshotter(str(gfs.store))
    python.prepare("default/3/extract-1 sha256:x")
    python.commit("default/4/sha256:x", "default/3/extract-1 sha256:x")
    python.prepare("default/5/container", "default/4/sha256:x")
    python.prepare("docker/rw/abc")
    python.prepare("mine")
    for record in (gfs.store / "snapshots").glob("*/info.json"):  # as a graftfs before namespaces wrote them
        data = json.loads(record.read_text())
        del data["namespace"]
        record.write_text(json.dumps(data))
    old_links = sorted(os.listdir(gfs.store / "snapshots" / "keys"))
    assert {i.name for i in python.walk()} == {
        "default/4/sha256:x",
        "default/5/container",
        "docker/rw/abc",
        "mine",
    }

    ctrd = Snapshotter(str(gfs.store), namespace="containerd")
    from graftfs.server.containerd import containerds

    assert sorted(ctrd.adopt(containerds)) == ["default/4/sha256:x", "default/5/container"]
    assert ctrd.stat("default/5/container").parent == "default/4/sha256:x"
    assert {i.name for i in ctrd.walk()} == {"default/4/sha256:x", "default/5/container"}
    from graftfs.log import LEVELS, Logger
    from graftfs.server.docker.driver import Driver

    with open(workdir / "log", "a") as log:
        driver = Driver(str(gfs.store), Logger(LEVELS["info"], log))
    assert driver.exists("abc") and {i.name for i in driver.sn.walk()} == {"docker/rw/abc"}
    assert {i.name for i in python.walk()} == {"mine"}
    assert ctrd.adopt(containerds) == []  # nothing left to take
    python.prepare("default/9/made-later")  # the default namespace's now, whatever its shape
    assert ctrd.adopt(containerds) == [] and python.stat("default/9/made-later").kind == KIND_ACTIVE
    links = sorted(os.listdir(gfs.store / "snapshots" / "keys"))
    assert len(links) == len(old_links) + 1 and links != old_links  # moved, none left behind
    assert python.cleanup() == [] and ctrd.cleanup() == []
    ctrd.remove("default/5/container")
    ctrd.remove("default/4/sha256:x")
    driver.remove("abc")
    python.remove("mine")
    python.remove("default/9/made-later")
    assert os.listdir(gfs.store / "snapshots") == ["keys"]

    # An old record beside a snapshot of the same name in containerd's namespace (an older graftfs wrote it
    # after the upgrade): never adopted over it; it stays the default namespace's.
    ctrd.prepare("default/7/k")
    Path(ctrd.tree("default/7/k"), "data").write_text("containerd's\n")
    python.prepare("default/7/k")
    (record,) = [r for r in (gfs.store / "snapshots").glob("*/info.json") if '"namespace":""' in r.read_text()]
    data = json.loads(record.read_text())
    del data["namespace"]
    record.write_text(json.dumps(data))
    assert ctrd.adopt(containerds) == []
    assert Path(ctrd.tree("default/7/k"), "data").read_text() == "containerd's\n"
    assert python.stat("default/7/k").kind == KIND_ACTIVE
    ctrd.remove("default/7/k")
    python.remove("default/7/k")
    assert python.cleanup() == [] and ctrd.cleanup() == []
    assert os.listdir(gfs.store / "snapshots") == ["keys"]


def test_an_adoption_killed_half_way_is_invisible_and_cleanup_finishes_it(gfs: Graftfs) -> None:
    """A move's commit point is its record: a kill before it leaves an extra link that points at a record of
    the default namespace (invisible to both), a kill after it a stale link in the default namespace
    (invisible too); cleanup removes either."""
    python = Snapshotter(str(gfs.store))
    python.prepare("default/1/k")
    (record,) = (gfs.store / "snapshots").glob("*/info.json")
    data = json.loads(record.read_text())
    del data["namespace"]
    record.write_text(json.dumps(data))
    ctrd = Snapshotter(str(gfs.store), namespace="containerd")
    before = set(os.listdir(gfs.store / "snapshots" / "keys"))
    # Killed after its first step: the containerd link made, the record not yet rewritten.
    ctrd._link(ctrd._key_path("default/1/k", "containerd"), record.parent.name)
    assert [i.name for i in python.walk()] == ["default/1/k"] and list(ctrd.walk()) == []
    assert len(python.cleanup()) == 1 and set(os.listdir(gfs.store / "snapshots" / "keys")) == before
    # Killed after its commit point: the record rewritten, the old link not yet removed.
    ctrd._link(ctrd._key_path("default/1/k", "containerd"), record.parent.name)
    data["namespace"] = "containerd"
    record.write_text(json.dumps(data))
    assert list(python.walk()) == [] and [i.name for i in ctrd.walk()] == ["default/1/k"]
    with pytest.raises(NotFound):
        python.stat("default/1/k")
    assert ctrd.cleanup() == [f"snapshots/keys/{name}" for name in before]
    ctrd.remove("default/1/k")

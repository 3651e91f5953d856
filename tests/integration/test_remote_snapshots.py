"""The snapshot core's remote layers (issue 15): containerd's remote-snapshot protocol over a store's layer
repository, called in-process. A ``prepare`` labelled with ``containerd.io/snapshot.ref`` and a layer digest
label whose layer is in the repository makes the committed snapshot from the repository and answers
AlreadyExists; the snapshots on it stack the repository's ``layerfs`` (between the lowers of its shim when its
whiteouts are DUCC's plain files). The repository is real: an erofs image mounted from a file, as in
test_layer_repository.py. The same protocol through containerd itself: test_containerd_remote.py."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest

from graftfs.errors import AlreadyExists, FailedPrecondition, NotFound
from graftfs.log import LEVELS, Logger
from graftfs.mount import kernel
from graftfs.store.snapshots import KIND_ACTIVE, KIND_COMMITTED, LABEL_REMOTE, LABEL_TARGET, Snapshotter
from tests.integration.conftest import Graftfs
from tests.support import ducc
from tests.support.images import OCIImageInfo, TarBuilder, busybox_layer, write_oci_layout
from tests.support.runc import traversable_tmpdir

pytestmark = pytest.mark.skipif(not Path(ducc.MKFS_EROFS).exists(), reason="needs mkfs.erofs (erofs-utils)")

CRI_DIGEST = "containerd.io/snapshot/cri.layer-digest"
STARGZ_DIGEST = "containerd.io/snapshot/remote/stargz.digest"
MAPPING = "0:100000:65536"


def _deleting() -> list[bytes]:
    """A base layer, one that deletes (whiteouts, an opaque directory) and one that puts a file back."""
    base = busybox_layer(
        TarBuilder()
        .file("etc/old.conf", b"deleted above\n")
        .file("etc/again", b"deleted, then put back\n")
        .dir("opt")
        .dir("opt/dir")
        .file("opt/dir/a", b"a\n")
        .dir("srv")
        .dir("srv/data")
        .file("srv/data/x", b"x\n")
        .file("srv/keep", b"kept\n")
    )
    middle = (
        TarBuilder()
        .dir("etc")
        .whiteout("etc/old.conf")
        .whiteout("etc/again")
        .dir("srv")
        .whiteout("srv/data")
        .dir("opt")
        .dir("opt/dir")
        .opaque("opt/dir")
        .file("opt/dir/c", b"c\n")
    )
    top = TarBuilder().dir("etc").file("etc/again", b"back\n")
    return [base, middle.build(), top.build()]


def _check(rootfs: Path) -> None:
    assert not (rootfs / "etc/old.conf").exists()
    assert (rootfs / "etc/again").read_text() == "back\n"
    assert not (rootfs / "srv/data").exists()
    assert sorted(os.listdir(rootfs / "opt/dir")) == ["c"]
    assert (rootfs / "etc/passwd").is_file()
    found = [n for _, dirs, files in os.walk(rootfs) for n in dirs + files]
    assert not [n for n in found if n.startswith(".wh.")]
    assert not (rootfs / ".cvmfscatalog").exists()


def _labels(image: OCIImageInfo, i: int, digest_label: str = STARGZ_DIGEST) -> dict[str, str]:
    """What containerd's unpacker sends for layer ``i`` (``ctr-remote images rpull``'s labels)."""
    return {
        LABEL_TARGET: image.chain_ids[i],
        digest_label: image.layer_digests[i],
        "containerd.io/snapshot/remote/stargz.reference": "registry.test/team/deleting:1",
    }


def _unpack(sn: Snapshotter, image: OCIImageInfo, ns: str, digest_label: str) -> None:
    """Each layer's prepare as containerd's unpacker sends it, each answered AlreadyExists: the target is then
    found with the filter containerd's metadata store sends."""
    parent = ""
    for i, target in enumerate(image.chain_ids):
        with pytest.raises(AlreadyExists, match=target):
            sn.prepare(f"{ns}/{i}/extract {target}", parent, _labels(image, i, digest_label))
        found = list(sn.walk(f'labels."{LABEL_TARGET}"=={target},parent=="{parent}"'))
        assert [(f.name, f.kind, f.parent) for f in found] == [(target, KIND_COMMITTED, parent)]
        parent = target
    assert not list(sn.walk("kind==active"))


def _mount_and_check(sn: Snapshotter, key: str, parent: str, target: Path) -> None:
    target.mkdir(exist_ok=True)
    kernel.mount_all(sn.prepare(key, parent), str(target))
    try:
        _check(target)
        (target / "etc/written").write_text("x\n")
    finally:
        kernel.unmount(str(target))


@pytest.fixture
def image(workdir: Path) -> tuple[OCIImageInfo, list[bytes]]:
    tars = _deleting()
    return write_oci_layout(workdir / "layout", tars), tars


@pytest.mark.parametrize("digest_label", [STARGZ_DIGEST, CRI_DIGEST], ids=["stargz", "cri"])
def test_every_layer_in_the_repository_is_a_remote_snapshot_and_mounts_right(
    workdir: Path, image: tuple[OCIImageInfo, list[bytes]], digest_label: str
) -> None:
    info, tars = image
    src = workdir / "repo-src"
    ducc.write_repository(src, list(zip(info.layer_digests, tars, strict=True)))
    with ducc.erofs(src, workdir / "repo.erofs", workdir / "repo") as repo:
        before = ducc.tree(repo)
        g = Graftfs(workdir / "store")
        g.run("init-store", "--layer-repository", str(repo))
        sn = Snapshotter(str(g.store))
        _unpack(sn, info, "ns1", digest_label)
        top = info.chain_ids[-1]
        st = sn.stat(top)
        assert st.kind == KIND_COMMITTED and st.parent == info.chain_ids[1] and st.labels[LABEL_REMOTE]
        assert sn.usage(top).size == 0
        # A second namespace finds the same snapshots (same parents): nothing more is made.
        _unpack(sn, info, "ns2", digest_label)
        assert len(list(sn.walk("kind==committed"))) == 3

        _mount_and_check(sn, "ns1/9/container", top, workdir / "rootfs")
        assert sn.usage("ns1/9/container").inodes == 2  # etc/, copied up, and the file
        # A view of it too (no upper: the overlay of the lowers alone).
        view = workdir / "view"
        view.mkdir()
        kernel.mount_all(sn.view("ns1/10/view", top), str(view))
        try:
            _check(view)
        finally:
            kernel.unmount(str(view))

        with pytest.raises(FailedPrecondition, match="parent of"):
            sn.remove(top)
        for key in ("ns1/10/view", "ns1/9/container", *reversed(info.chain_ids)):
            sn.remove(key)
        assert list(sn.walk()) == []
        g.run("clean")
        assert ducc.tree(repo) == before  # the repository untouched (read-only anyway)
        assert os.listdir(g.store / "snapshots") == ["keys"]


def test_a_layer_not_in_the_repository_is_an_ordinary_snapshot(
    workdir: Path, image: tuple[OCIImageInfo, list[bytes]]
) -> None:
    info, tars = image
    src = workdir / "repo-src"
    ducc.write_repository(src, [(info.layer_digests[0], tars[0])])
    with ducc.erofs(src, workdir / "repo.erofs", workdir / "repo") as repo:
        g = Graftfs(workdir / "store")
        g.run("init-store", "--layer-repository", str(repo))
        sn = Snapshotter(str(g.store))
        with pytest.raises(AlreadyExists, match="layer repository"):
            sn.prepare("ns/1/extract-0", "", _labels(info, 0))
        mounts = sn.prepare("ns/2/extract-1", info.chain_ids[0], _labels(info, 1))  # not there: as before
        assert sn.stat("ns/2/extract-1").kind == KIND_ACTIVE and mounts[0].type == "overlay"
        # No digest label (a plain `ctr images pull`): as before, even for a layer the repository has.
        sn.prepare("ns/3/extract-0", "", {LABEL_TARGET: "sha256:" + "0" * 64})
        assert sn.stat("ns/3/extract-0").kind == KIND_ACTIVE
        for key in ("ns/3/extract-0", "ns/2/extract-1", info.chain_ids[0]):
            sn.remove(key)


def test_a_layer_on_parents_of_different_namespaces_is_one_remote_snapshot_per_parent(
    workdir: Path, image: tuple[OCIImageInfo, list[bytes]]
) -> None:
    """Two containerd namespaces that unpacked the bottom layer themselves (it is not in the repository) each
    get the layer above it from the repository, on their own parent: the second under a name of its own,
    found as containerd finds it, by its labels and parent."""
    info, tars = image
    src = workdir / "repo-src"
    ducc.write_repository(src, [(info.layer_digests[1], tars[1])])
    with ducc.erofs(src, workdir / "repo.erofs", workdir / "repo") as repo:
        g = Graftfs(workdir / "store")
        g.run("init-store", "--layer-repository", str(repo))
        sn = Snapshotter(str(g.store))
        target = info.chain_ids[1]
        for ns in ("a", "b"):
            sn.prepare(f"{ns}/1/extract", "", _labels(info, 0))  # not in the repository: unpacked as usual
            sn.commit(f"{ns}/2/{info.chain_ids[0]}", f"{ns}/1/extract")
            parent = f"{ns}/2/{info.chain_ids[0]}"
            with pytest.raises(AlreadyExists, match=target):
                sn.prepare(f"{ns}/3/extract", parent, _labels(info, 1))
            (found,) = sn.walk(f'labels."{LABEL_TARGET}"=={target},parent=="{parent}"')
            assert found.kind == KIND_COMMITTED and found.parent == parent
        names = sorted(i.name for i in sn.walk(f'labels."{LABEL_TARGET}"=={target}'))
        assert names[0] == target and names[1].startswith(target + "@") and len(names) == 2
        for name in [*names, "a/2/" + info.chain_ids[0], "b/2/" + info.chain_ids[0]]:
            sn.remove(name)


def test_a_store_without_a_repository_ignores_the_labels(
    workdir: Path, image: tuple[OCIImageInfo, list[bytes]]
) -> None:
    info, _ = image
    g = Graftfs(workdir / "store")
    g.run("init-store")
    sn = Snapshotter(str(g.store))
    sn.prepare("k", "", _labels(info, 0))
    assert sn.stat("k").kind == KIND_ACTIVE


def test_a_store_with_id_mappings_unpacks_the_layer_as_usual(image: tuple[OCIImageInfo, list[bytes]]) -> None:
    """containerd's mounts cannot bind a repository layer idmapped: such a store downloads it, and says why."""
    info, tars = image
    with traversable_tmpdir() as base:
        src = base / "repo-src"
        ducc.write_repository(src, [(info.layer_digests[0], tars[0])])
        with ducc.erofs(src, base / "repo.erofs", base / "repo") as repo:
            g = Graftfs(base / "store")
            g.run("init-store", "--uid-mapping", MAPPING, "--gid-mapping", MAPPING, "--layer-repository", str(repo))
            out = io.StringIO()
            sn = Snapshotter(str(g.store), log=Logger(LEVELS["info"], out))
            sn.prepare("ns/1/extract-0", "", _labels(info, 0))
            assert sn.stat("ns/1/extract-0").kind == KIND_ACTIVE
            assert "remote-layer-not-used" in out.getvalue() and "ID mappings" in out.getvalue()
            sn.remove("ns/1/extract-0")


def test_a_layer_gone_from_the_repository_is_refused_by_name_never_mounted_empty(
    workdir: Path, image: tuple[OCIImageInfo, list[bytes]]
) -> None:
    info, tars = image
    src = workdir / "repo-src"
    ducc.write_repository(src, list(zip(info.layer_digests, tars, strict=True)))
    g = Graftfs(workdir / "store")
    with ducc.erofs(src, workdir / "repo.erofs", workdir / "repo") as repo:
        g.run("init-store", "--layer-repository", str(repo))
        sn = Snapshotter(str(g.store))
        _unpack(sn, info, "ns", STARGZ_DIGEST)
        top = info.chain_ids[-1]
        sn.prepare("running", top)
    # A new revision of the repository, without the base layer, where the old one was.
    gone = ducc.layer_dir(src, info.layer_digests[0])
    gone.rename(workdir / "elsewhere")
    with ducc.erofs(src, workdir / "repo2.erofs", workdir / "repo"):
        message = f"layer {info.layer_digests[0]} is gone from the layer repository"
        with pytest.raises(FailedPrecondition, match=message):
            sn.mounts("running")
        with pytest.raises(FailedPrecondition, match=message):
            sn.prepare("again", top)
        with pytest.raises(FailedPrecondition, match=message):
            sn.view("look", info.chain_ids[0])
        # Removing still works, and never reaches into the repository.
        sn.remove("running")
        for key in reversed(info.chain_ids):
            sn.remove(key)
        # With the layer gone, a new pull labels it again: it is unpacked as usual.
        sn.prepare("ns/5/extract-0", "", _labels(info, 0))
        assert sn.stat("ns/5/extract-0").kind == KIND_ACTIVE
        sn.remove("ns/5/extract-0")


def test_a_layer_garden_pulled_onto_a_repository_layer_stacks_on_its_remote_snapshot(workdir: Path) -> None:
    tars = [busybox_layer(), TarBuilder().file("top", b"t").build()]
    info = write_oci_layout(workdir / "layout", tars)
    src = workdir / "repo-src"
    ducc.write_repository(src, [(info.layer_digests[0], tars[0])])  # the base in place, the top pulled
    with ducc.erofs(src, workdir / "repo.erofs", workdir / "repo") as repo:
        g = Graftfs(workdir / "store")
        g.run("init-store", "--layer-repository", str(repo))
        g.create(info.url(), "c1")
        (top_volume,) = g.volumes()
        top = f"sha256:{top_volume}"
        sn = Snapshotter(str(g.store))
        shutil.rmtree(g.store / "meta" / "repository-chains")  # the create's record of the base: not this path
        with pytest.raises(FailedPrecondition, match="not in the store"):
            sn.prepare("k", top)  # nothing names the base layer now
        with pytest.raises(AlreadyExists):
            sn.prepare("ns/1/extract", "", _labels(info, 0))  # containerd pulls the base: a remote snapshot
        target = workdir / "rootfs"
        target.mkdir()
        kernel.mount_all(sn.prepare("k", top), str(target))
        try:
            assert (target / "top").read_bytes() == b"t"
            assert (target / "bin/busybox").is_file()
            assert not (target / ".cvmfscatalog").exists()
        finally:
            kernel.unmount(str(target))
        with pytest.raises(FailedPrecondition, match="parent of `k`"):
            sn.remove(info.chain_ids[0])  # the Garden layer's snapshot stands on it
        sn.remove("k")
        sn.remove(info.chain_ids[0])
        g.run("delete", "c1")


def test_a_remote_layer_is_its_namespaces_to_walk_and_remove_and_every_namespaces_parent(
    workdir: Path, image: tuple[OCIImageInfo, list[bytes]]
) -> None:
    """containerd's snapshotter (namespace ``containerd``) makes the remote layers; the Python API (the
    default namespace) finds them by name and prepares on them, but neither walks them nor removes them; while
    its snapshot stands on one, containerd's removal (its garbage collection) is refused. The same labels from
    the default namespace make its own remote layers, which containerd's walk does not list."""
    info, tars = image
    src = workdir / "repo-src"
    ducc.write_repository(src, list(zip(info.layer_digests, tars, strict=True)))
    with ducc.erofs(src, workdir / "repo.erofs", workdir / "repo") as repo:
        g = Graftfs(workdir / "store")
        g.run("init-store", "--layer-repository", str(repo))
        ctrd = Snapshotter(str(g.store), namespace="containerd")
        python = Snapshotter(str(g.store))
        _unpack(ctrd, info, "ns1", CRI_DIGEST)
        top = info.chain_ids[-1]
        assert list(python.walk()) == [] and python.stat(top).kind == KIND_COMMITTED
        _mount_and_check(python, "python's", top, workdir / "rootfs")
        with pytest.raises(FailedPrecondition, match="remote layer of namespace `containerd`"):
            python.remove(top)
        with pytest.raises(FailedPrecondition, match="parent of `python's`"):
            ctrd.remove(top)
        # The default namespace's own remote layers of the same layers: named apart, walked apart.
        parent = ""
        for i, target in enumerate(info.chain_ids):
            with pytest.raises(AlreadyExists, match=target):
                python.prepare(f"extract {i}", parent, _labels(info, i, CRI_DIGEST))
            (found,) = python.walk(f'labels."{LABEL_TARGET}"=={target},parent=="{parent}"')
            assert found.name.startswith(target + "@") and found.kind == KIND_COMMITTED
            parent = found.name
        assert len(list(ctrd.walk())) == 3 and len(list(python.walk())) == 4  # and python's active snapshot
        python.remove("python's")
        for name in reversed(info.chain_ids):
            ctrd.remove(name)
        for found in sorted(python.walk(), key=lambda f: f.created, reverse=True):
            python.remove(found.name)
        assert list(ctrd.walk()) == [] and list(python.walk()) == []
        g.run("clean")
        assert os.listdir(g.store / "snapshots") == ["keys"]


# -- thin images' layers (a layer whose tree is /thin.json only), as the Docker front end loads them ----------


def _thin_snapshot(sn: Snapshotter, name: str, parent: str, descriptor: bytes) -> None:
    """A committed snapshot whose tree holds ``thin.json`` only: what a thin image's layer unpacks to."""
    sn.prepare(name + "-extract", parent)
    Path(sn.tree(name + "-extract"), "thin.json").write_bytes(descriptor)
    sn.commit(name, name + "-extract")


def test_the_snapshots_on_a_thin_image_s_layer_stack_its_descriptor_s_layers(
    workdir: Path, image: tuple[OCIImageInfo, list[bytes]]
) -> None:
    from graftfs.errors import InvalidImage
    from graftfs.repository.thin import ThinImage, ThinLayer

    info, tars = image
    src = workdir / "repo-src"
    ducc.write_repository(src, list(zip(info.layer_digests, tars, strict=True)))
    descriptor = ThinImage([ThinLayer(d[7:], "") for d in info.layer_digests]).to_json()
    with ducc.erofs(src, workdir / "repo.erofs", workdir / "repo") as repo:
        g = Graftfs(workdir / "store")
        g.run("init-store", "--layer-repository", str(repo))
        sn = Snapshotter(str(g.store))
        _thin_snapshot(sn, "thin", "", descriptor)
        assert sn.thin("thin") == ThinImage([ThinLayer(d[7:], "") for d in info.layer_digests])
        _mount_and_check(sn, "container", "thin", workdir / "rootfs")
        assert sn.thin_layer("container") == "thin"
        # An ordinary layer above it stacks above the repository's layers, as usual.
        sn.prepare("above-extract", "thin")
        Path(sn.tree("above-extract"), "above").write_text("above\n")
        sn.commit("above", "above-extract")
        assert sn.thin("above") is None
        view = workdir / "view"
        view.mkdir()
        kernel.mount_all(sn.view("look", "above"), str(view))
        try:
            _check(view)
            assert (view / "above").read_text() == "above\n"
            assert not (view / "thin.json").exists()
        finally:
            kernel.unmount(str(view))
        assert sn.thin_layer("look") == "thin"
        with pytest.raises(FailedPrecondition, match="parent of"):
            sn.remove("thin")
        # A descriptor naming a layer the repository lacks: refused by name, nothing made.
        lacking = "ab" * 32
        _thin_snapshot(
            sn, "thin2", "thin", ThinImage([ThinLayer(info.layer_digests[0][7:]), ThinLayer(lacking)]).to_json()
        )
        with pytest.raises(NotFound, match=f"1 of its 2 layers not in the layer repository .*: {lacking}$"):
            sn.prepare("never", "thin2")
        _thin_snapshot(sn, "broken", "", b"not json\n")
        with pytest.raises(InvalidImage, match=r"thin\.json: not a thin image descriptor"):
            sn.prepare("never", "broken")
        assert sorted(i.name for i in sn.walk("name==never")) == []
        # A layer holding only /thin.json above an ordinary layer is an ordinary image's file (`COPY thin.json
        # /`), valid descriptor or not: stacked as it is, nothing taken from the repository.
        for name, content in (("copied", descriptor), ("copied-junk", b'{"config": 1}\n')):
            _thin_snapshot(sn, name, "above", content)
            assert sn.thin(name) is None and sn.thin_layer(name) == "thin"
            view = workdir / name
            view.mkdir()
            kernel.mount_all(sn.view(name + "-look", name), str(view))
            try:
                assert (view / "thin.json").read_bytes() == content
                assert (view / "above").read_text() == "above\n"
            finally:
                kernel.unmount(str(view))
            sn.remove(name + "-look")
            sn.remove(name)
        for key in ("look", "above", "container", "thin2", "broken", "thin"):
            sn.remove(key)

    # A store without a layer repository refuses it in one line.
    g2 = Graftfs(workdir / "store2")
    g2.run("init-store")
    sn2 = Snapshotter(str(g2.store))
    _thin_snapshot(sn2, "thin", "", descriptor)
    with pytest.raises(FailedPrecondition, match="has no layer repository to stack them from"):
        sn2.prepare("never", "thin")
    sn2.remove("thin")

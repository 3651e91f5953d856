"""A store's layer repository (issue 13 item 1): layers found in a read-only tree in CERN DUCC's layout are
used in place as overlay lowers, and only the others are downloaded.

The repository is real: the layers unpacked as DUCC's ingest leaves them (whiteouts as plain files, a
``.cvmfscatalog`` marker in each), made into an erofs image and mounted from the file, read-only. Images come
from a real registry (Debian's docker-registry), whose access log shows which blobs were asked for.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import graftfs
from graftfs.errors import FailedPrecondition
from graftfs.mount.kernel import mount_all, unmount
from graftfs.store.snapshots import Snapshotter
from tests.integration.conftest import GRAFTFS, Graftfs, mounts_under, snapshot
from tests.support import ducc
from tests.support.images import TarBuilder, busybox_layer, write_oci_layout
from tests.support.registry import REGISTRY, Registry, start_registry
from tests.support.runc import run_in_rootfs, runc_binary, traversable_tmpdir

pytestmark = [
    pytest.mark.skipif(
        not (Path(REGISTRY).exists() and shutil.which("skopeo")), reason="needs docker-registry and skopeo"
    ),
    pytest.mark.skipif(not Path(ducc.MKFS_EROFS).exists(), reason="needs mkfs.erofs (erofs-utils)"),
]

MAPPING = "0:100000:65536"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with start_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


class Pushed:
    def __init__(self, url: str, config: str, digests: list[str], tars: list[bytes]) -> None:
        self.url = url
        self.config = config
        self.digests = digests
        self.tars = tars

    def layers(self, *indexes: int) -> list[tuple[str, bytes]]:
        return [(self.digests[i], self.tars[i]) for i in indexes]


def _push(registry: Registry, work: Path, repo: str, tars: list[bytes]) -> Pushed:
    info = write_oci_layout(work / repo.replace("/", "_"), tars, tag="1")
    registry.push(info.path, "1", repo)
    return Pushed(registry.url(repo, "1"), info.config_digest, info.layer_digests, tars)


def _app_layers() -> list[bytes]:
    return [
        busybox_layer(TarBuilder().file("etc/motd", b"from the base\n")),
        TarBuilder().dir("app").file("app/run.sh", b"#!/bin/sh\necho running\n", mode=0o755).build(),
        TarBuilder().dir("etc").file("etc/motd", b"from the repository\n").build(),
        TarBuilder().dir("app").file("app/version", b"4\n").build(),
    ]


@pytest.fixture(scope="module")
def app(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    return _push(registry, tmp_path_factory.mktemp("app"), "team/app", _app_layers())


@pytest.fixture(scope="module")
def deleting(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    """A base layer; one on top that deletes files and a directory (whiteouts) and replaces a directory
    (opaque); and a third that puts a deleted file back."""
    base = busybox_layer(
        TarBuilder()
        .file("etc/old.conf", b"deleted above\n")
        .file("etc/again", b"deleted, then put back\n")
        .dir("opt")
        .dir("opt/dir")
        .file("opt/dir/a", b"a\n")
        .file("opt/dir/b", b"b\n")
        .dir("srv")
        .dir("srv/data")
        .file("srv/data/x", b"x\n")
        .file("srv/keep", b"kept\n")
    )
    middle = (
        TarBuilder()
        .dir("etc", mode=0o750, uid=5, gid=6)
        .whiteout("etc/old.conf")
        .whiteout("etc/again")
        .dir("srv")
        .whiteout("srv/data")
        .dir("opt")
        .dir("opt/dir")
        .opaque("opt/dir")
        .file("opt/dir/c", b"c\n")
    )
    top = TarBuilder().dir("etc", mode=0o750, uid=5, gid=6).file("etc/again", b"back\n")
    tars = [base, middle.build(), top.build()]
    return _push(registry, tmp_path_factory.mktemp("deleting"), "team/deleting", tars)


def _check_deleting(rootfs: Path) -> None:
    assert not (rootfs / "etc/old.conf").exists()
    assert (rootfs / "etc/again").read_text() == "back\n"
    assert not (rootfs / "srv/data").exists()
    assert (rootfs / "srv/keep").read_text() == "kept\n"
    assert sorted(os.listdir(rootfs / "opt/dir")) == ["c"]
    assert sorted(os.listdir(rootfs / "srv")) == ["keep"]
    found = [os.path.join(base, n) for base, dirs, files in os.walk(rootfs) for n in dirs + files]
    assert not [p for p in found if os.path.basename(p).startswith(".wh.")]
    assert not (rootfs / ".cvmfscatalog").exists()
    st = os.stat(rootfs / "etc")  # the directory as the layers say, not as the shim's lowers made it
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (5, 6, 0o750)
    assert (rootfs / "etc/passwd").is_file()  # the base layer, in place


def _blobs_asked(registry: Registry, since: int) -> set[str]:
    """The blob digests asked for in the registry's access log after byte ``since``."""
    text = registry.log.read_bytes()[since:].decode(errors="replace")
    return set(re.findall(r'"(?:GET|HEAD) /v2/[^ ]+/blobs/(sha256:[0-9a-f]{64})', text))


def _log_size(registry: Registry) -> int:
    return registry.log.stat().st_size


@pytest.fixture
def repo_src(workdir: Path) -> Path:
    path = workdir / "repo-src"
    path.mkdir()
    return path


def _create(g: Graftfs, registry: Registry, url: str, image_id: str, *flags: str) -> dict[str, object]:
    return g.create(url, image_id, "--insecure-registry", registry.host, *flags)


def _check_app(rootfs: Path) -> None:
    assert (rootfs / "etc/motd").read_text() == "from the repository\n"
    assert (rootfs / "app/version").read_text() == "4\n"
    assert (rootfs / "app/run.sh").stat().st_mode & 0o777 == 0o755
    # DUCC's nested-catalog marker is in every layer of the repository, and hidden in the image.
    assert not (rootfs / ".cvmfscatalog").exists()


def test_an_image_whose_layers_are_all_in_the_repository_downloads_no_blob_and_runs(
    workdir: Path, registry: Registry, app: Pushed, repo_src: Path
) -> None:
    ducc.write_repository(repo_src, app.layers(0, 1, 2, 3))
    with ducc.erofs(repo_src, workdir / "repo.erofs", workdir / "repo") as repo:
        g = Graftfs(workdir / "store")
        g.run("init-store", "--layer-repository", str(repo))
        before = _log_size(registry)
        _create(g, registry, app.url, "c1")
        assert _blobs_asked(registry, before) == {app.config}  # the manifest and config only: no layer
        assert g.volumes() == set()
        _check_app(g.rootfs("c1"))
        if runc_binary() is not None:
            out = run_in_rootfs(g.rootfs("c1"), ["/bin/sh", "-c", "cat /etc/motd; /app/run.sh; ls -a /"]).stdout
            assert out.startswith("from the repository\nrunning\n")
            assert ".cvmfscatalog" not in out.split()
        # Written in the container, seen in its writable layer only: the repository is read-only anyway.
        (g.rootfs("c1") / "etc/motd").write_text("changed\n")
        assert (ducc.layer_dir(repo, app.digests[2]) / "etc/motd").read_text() == "from the repository\n"
        g.run("delete", "c1")
        assert mounts_under(g.store) == []


def test_with_half_of_the_layers_in_the_repository_only_the_others_are_downloaded(
    workdir: Path, registry: Registry, app: Pushed, repo_src: Path
) -> None:
    ducc.write_repository(repo_src, app.layers(0, 2))
    with ducc.erofs(repo_src, workdir / "repo.erofs", workdir / "repo") as repo:
        g = Graftfs(workdir / "store")
        g.run("init-store", "--layer-repository", str(repo))
        before = _log_size(registry)
        _create(g, registry, app.url, "c1")
        assert _blobs_asked(registry, before) == {app.config, app.digests[1], app.digests[3]}
        assert len(g.volumes()) == 2
        _check_app(g.rootfs("c1"))
        if runc_binary() is not None:
            out = run_in_rootfs(g.rootfs("c1"), ["/bin/sh", "-c", "cat /etc/motd /app/version; /app/run.sh"]).stdout
            assert out == "from the repository\n4\nrunning\n"
        # A second create downloads nothing at all (the config too was kept, by the first).
        before = _log_size(registry)
        _create(g, registry, app.url, "c2")
        assert _blobs_asked(registry, before) == set()
        _check_app(g.rootfs("c2"))
        for image_id in ("c1", "c2"):
            g.run("delete", image_id)


def test_a_repository_layer_with_whiteouts_and_opaque_directories_gives_the_right_rootfs(
    workdir: Path, registry: Registry, deleting: Pushed, repo_src: Path
) -> None:
    """DUCC keeps ``.wh.`` entries as plain files, which overlayfs would show and not apply: such a layer is
    stacked between the two lowers of a shim the store makes once (overlay whiteouts deleting below it,
    hiding its markers above it), and nothing is downloaded."""
    ducc.write_repository(repo_src, deleting.layers(0, 1, 2))
    middle = ducc.layer_dir(repo_src, deleting.digests[1])
    assert (middle / "etc/.wh.old.conf").is_file() and (middle / "opt/dir/.wh..wh..opq").is_file()  # as DUCC's
    with ducc.erofs(repo_src, workdir / "repo.erofs", workdir / "repo") as repo:
        g = Graftfs(workdir / "store")
        g.run("init-store", "--layer-repository", str(repo))
        before = _log_size(registry)
        _create(g, registry, deleting.url, "c1")
        assert _blobs_asked(registry, before) == {deleting.config}
        assert g.volumes() == set()
        _check_deleting(g.rootfs("c1"))
        # The verdict is kept per layer: a warm create reads it, and walks no layer again.
        verdicts = g.store / "meta" / "repository-layers"
        assert sorted(os.listdir(verdicts)) == sorted(d.split(":")[1] for d in deleting.digests)
        assert (verdicts / deleting.digests[1].split(":")[1]).read_text() == "shim,hide"
        stamps = {name: (verdicts / name).stat().st_mtime_ns for name in os.listdir(verdicts)}
        shim = g.store / "r" / (deleting.digests[1][7:19] + ".shim")
        shim_stamp = shim.stat().st_mtime_ns
        _create(g, registry, deleting.url, "c2")
        assert {name: (verdicts / name).stat().st_mtime_ns for name in os.listdir(verdicts)} == stamps
        assert shim.stat().st_mtime_ns == shim_stamp
        _check_deleting(g.rootfs("c2"))
        if runc_binary() is not None:
            out = run_in_rootfs(g.rootfs("c2"), ["/bin/sh", "-c", "ls -a /etc /opt/dir /srv; cat /etc/again"]).stdout
            assert "old.conf" not in out and ".wh." not in out and "data" not in out
            assert out.endswith("back\n")
        for image_id in ("c1", "c2"):
            g.run("delete", image_id)
    # The middle layer pulled (its whiteouts the kernel's, in the store), the others in place: the same rootfs.
    src2 = workdir / "repo-src2"
    ducc.write_repository(src2, deleting.layers(0, 2))
    with ducc.erofs(src2, workdir / "repo2.erofs", workdir / "repo2") as repo2:
        g2 = Graftfs(workdir / "store2")
        g2.run("init-store", "--layer-repository", str(repo2))
        before = _log_size(registry)
        _create(g2, registry, deleting.url, "c3")
        assert _blobs_asked(registry, before) == {deleting.config, deleting.digests[1]}
        _check_deleting(g2.rootfs("c3"))
        g2.run("delete", "c3")


def test_a_mapped_store_stacks_shims_with_shifted_owners(registry: Registry, deleting: Pushed) -> None:
    with traversable_tmpdir() as base:
        src = base / "repo-src"
        src.mkdir()
        ducc.write_repository(src, deleting.layers(0, 1))
        with ducc.erofs(src, base / "repo.erofs", base / "repo") as repo:
            g = Graftfs(base / "store")
            g.run("init-store", "--uid-mapping", MAPPING, "--gid-mapping", MAPPING, "--layer-repository", str(repo))
            before = _log_size(registry)
            _create(g, registry, deleting.url, "c1")
            assert _blobs_asked(registry, before) == {deleting.config, deleting.digests[2]}
            rootfs = g.rootfs("c1")
            assert not (rootfs / "etc/old.conf").exists()
            assert sorted(os.listdir(rootfs / "opt/dir")) == ["c"]
            assert not [n for n in os.listdir(rootfs / "etc") if n.startswith(".wh.")]
            st = os.stat(rootfs / "etc")
            assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (100005, 100006, 0o750)
            assert os.stat(rootfs / "opt/dir/c")[4:6] == (100000, 100000)
            g.run("delete", "c1")
            assert mounts_under(g.store) == []


def test_clean_delete_and_delete_store_never_touch_the_repository(
    workdir: Path, registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A repository on a writable filesystem, root's only (so a change would be possible, and seen)."""
    tars = [
        TarBuilder().dir("etc").file("etc/a", b"a\n").build(),
        TarBuilder().dir("etc").file("etc/b", b"b\n").build(),
        TarBuilder().dir("etc").file("etc/c", b"c\n").build(),
    ]
    small = _push(registry, tmp_path_factory.mktemp("small"), "team/small", tars)
    repo = ducc.write_repository(workdir / "repo", small.layers(0, 2))
    before = ducc.tree(repo)
    g = Graftfs(workdir / "store")
    g.run("init-store", "--layer-repository", str(repo))
    _create(g, registry, small.url, "c1", "--without-mount")
    _create(g, registry, small.url, "c2")
    assert sorted(os.listdir(g.rootfs("c2") / "etc")) == ["a", "b", "c"]
    g.run("delete", "c2")
    g.run("clean")
    assert g.volumes()  # c1 still uses the pulled layer
    g.run("delete", "c1")
    g.run("clean")
    assert g.volumes() == set()
    assert ducc.tree(repo) == before
    g.run("delete-store")
    assert not g.store.exists()
    assert ducc.tree(repo) == before


@pytest.mark.parametrize("problem", ["missing", "not-a-repository", "world-writable", "users-own", "relative"])
def test_init_store_refuses_a_repository_that_is_missing_or_writable_by_others(
    workdir: Path, problem: str, repo_src: Path
) -> None:
    repo = repo_src
    (repo / ".layers").mkdir()
    if problem == "missing":
        repo = workdir / "nowhere"
    elif problem == "not-a-repository":
        shutil.rmtree(repo / ".layers")
    elif problem == "world-writable":
        (repo / ".layers").chmod(0o777)
    elif problem == "users-own":
        os.chown(repo, 1000, 1000)
    arg = "repo-src" if problem == "relative" else str(repo)
    expected = {
        "missing": f"layer repository {repo}: no such file or directory",
        "not-a-repository": f"layer repository {repo} has no .layers directory",
        "world-writable": f"layer repository {repo} is writable by users other than root",
        "users-own": f"layer repository {repo} is writable by users other than root",
        "relative": "layer repository `repo-src` must be an absolute path",
    }[problem]
    # A new store is not made at all.
    g = Graftfs(workdir / "store")
    assert g.fails("init-store", "--layer-repository", arg).startswith(expected)
    assert not g.store.exists()
    # An existing store stays as it was.
    g.run("init-store")
    state = snapshot(g.store)
    assert g.fails("init-store", "--layer-repository", arg).startswith(expected)
    assert snapshot(g.store) == state


def test_the_config_file_key_and_a_repository_that_goes_away_after_init_store(
    workdir: Path, registry: Registry, app: Pushed, repo_src: Path
) -> None:
    ducc.write_repository(repo_src, app.layers(0, 1, 2, 3))
    config = workdir / "config.yml"
    g = Graftfs(workdir / "store")
    with ducc.erofs(repo_src, workdir / "repo.erofs", workdir / "repo") as repo:
        config.write_text(f"init:\n  layer_repository: {repo}\n")
        g.run("--config", str(config), "init-store")
        assert json.loads((g.store / "meta" / "layer-repository.json").read_text())["path"] == str(repo)
        # Another repository for this store: refused, the store unchanged.
        other = ducc.write_repository(workdir / "other", [])
        assert "cannot change" in g.fails("init-store", "--layer-repository", str(other))
    # Unmounted: the mount point is an empty directory. The create fails in one line and leaves nothing.
    state = snapshot(g.store)
    line = g.fails("create", "--insecure-registry", registry.host, app.url, "c1")
    assert line.startswith(f"layer repository {repo} has no .layers directory: not mounted")
    assert snapshot(g.store) == state
    # Made writable by a user: refused too.
    (workdir / "repo" / ".layers").mkdir()
    os.chown(workdir / "repo", 1000, 1000)
    line = g.fails("create", "--insecure-registry", registry.host, app.url, "c1")
    assert f"layer repository {repo} is writable by users other than root" in line


def test_a_store_with_id_mappings_mounts_repository_layers_idmapped(
    registry: Registry, app: Pushed, tmp_path: Path
) -> None:
    with traversable_tmpdir() as base:
        src = base / "repo-src"
        src.mkdir()
        ducc.write_repository(src, app.layers(0, 1, 2))
        with ducc.erofs(src, base / "repo.erofs", base / "repo") as repo:
            g = Graftfs(base / "store")
            flags = ["--uid-mapping", MAPPING, "--gid-mapping", MAPPING]
            g.run("init-store", *flags, "--layer-repository", str(repo))
            before = _log_size(registry)
            _create(g, registry, app.url, "c1")
            assert _blobs_asked(registry, before) == {app.config, app.digests[3]}
            rootfs = g.rootfs("c1")
            _check_app(rootfs)
            # Shifted by the idmapped mounts (repository layers) as by the unpacking (the pulled one).
            assert os.stat(rootfs / "etc/motd")[4:6] == (100000, 100000)
            assert os.stat(rootfs / "app/version")[4:6] == (100000, 100000)
            assert os.stat(rootfs / "bin/busybox")[4:6] == (100000, 100000)
            lowers = [p for p in mounts_under(g.store) if "/lowers/" in p]
            assert len(lowers) == 3
            if runc_binary() is not None:
                mapped = [(0, 100000, 65536)]
                out = run_in_rootfs(
                    rootfs,
                    ["/bin/sh", "-c", "stat -c '%u %g' /etc/motd /app/version; cat /etc/motd"],
                    uid_mappings=mapped,
                    gid_mappings=mapped,
                ).stdout
                assert out == "0 0\n0 0\nfrom the repository\n"
            # --without-mount cannot express idmapped binds: the repository's layers are pulled then.
            g.log_level = "info"
            result = g.run("create", "--insecure-registry", registry.host, "--without-mount", app.url, "c2")
            assert "layer-repository-not-used" in result.stderr
            g.run("delete", "c1")
            g.run("delete", "c2")
            assert mounts_under(g.store) == []


def test_a_mapped_store_on_a_repository_that_refuses_idmapped_mounts_pulls_and_says_why(
    registry: Registry, app: Pushed
) -> None:
    """CernVM-FS is a FUSE filesystem, which takes no idmapped mount: served here by a FUSE daemon too."""
    if shutil.which("fuse-overlayfs") is None or not os.path.exists("/dev/fuse"):
        pytest.skip("needs fuse-overlayfs and /dev/fuse")
    with traversable_tmpdir() as base:
        src = base / "repo-src"
        src.mkdir()
        ducc.write_repository(src, app.layers(0, 1, 2, 3))
        with ducc.fuse_mount(src, base / "repo") as repo:
            g = Graftfs(base / "store", log_level="info")
            flags = ["--uid-mapping", MAPPING, "--gid-mapping", MAPPING]
            g.run("init-store", *flags, "--layer-repository", str(repo))
            record = json.loads((g.store / "meta" / "layer-repository.json").read_text())
            assert record["idmapped"] is False and "idmapped" in record["why"]
            before = _log_size(registry)
            result = g.run("create", "--insecure-registry", registry.host, app.url, "c1")
            assert _blobs_asked(registry, before) == {app.config, *app.digests}
            why = [json.loads(line) for line in result.stderr.splitlines() if "layer-repository-not-used" in line]
            assert len(why) == 1 and "cannot be idmapped" in why[0]["data"]["reason"], result.stderr
            assert os.stat(g.rootfs("c1") / "etc/motd")[4:6] == (100000, 100000)
            _check_app(g.rootfs("c1"))
            g.run("delete", "c1")


def test_the_python_api_uses_the_repository(workdir: Path, registry: Registry, app: Pushed, repo_src: Path) -> None:
    ducc.write_repository(repo_src, app.layers(0, 1, 2, 3))
    with ducc.erofs(repo_src, workdir / "repo.erofs", workdir / "repo") as repo:
        store = graftfs.Store(str(workdir / "store"))
        store.init(layer_repository=str(repo))
        before = _log_size(registry)
        image = store.create(app.url, "c1", graftfs.CreateOptions(insecure_registries=(registry.host,)))
        assert image.layers_built == 0
        assert _blobs_asked(registry, before) == {app.config}
        _check_app(Path(image.rootfs))
        store.delete("c1")


def test_a_store_without_a_repository_imports_nothing_of_it(gfs: Graftfs, registry: Registry, app: Pushed) -> None:
    _create(gfs, registry, app.url, "first")
    argv = [sys.executable, "-X", "importtime", *GRAFTFS, "--store", str(gfs.store), "create"]
    result = subprocess.run(
        [*argv, "--insecure-registry", registry.host, app.url, "second"], capture_output=True, text=True, check=True
    )
    imported = {line.rpartition("|")[2].strip() for line in result.stderr.splitlines() if line.startswith("import")}
    assert not {name for name in imported if name.startswith("graftfs.repository")}
    for image_id in ("first", "second"):
        gfs.run("delete", image_id)


# -- crash safety and concurrency (oci:// layouts: their layers are named by manifest digest too) ---------------


def _local_image(workdir: Path) -> tuple[str, list[tuple[str, bytes]]]:
    tars = [busybox_layer(), TarBuilder().file("top", b"t").build()]
    info = write_oci_layout(workdir / "layout", tars)
    return info.url(), list(zip(info.layer_digests, tars, strict=True))


@pytest.mark.parametrize("mapped", [False, True], ids=["plain", "mapped"])
def test_create_killed_at_random_points_in_a_repository_store_is_either_whole_or_gone(
    workdir: Path, repo_src: Path, mapped: bool
) -> None:
    """The store protocol's rule holds with repository layers (short links, verdicts, idmapped binds): a
    create killed anywhere leaves the image whole or absent, the next create completes, clean leaves
    nothing behind, and no mount is left."""
    from tests.integration.test_nothing_lost import kill_fifty_times, leftovers

    url, found = _local_image(workdir)
    ducc.write_repository(repo_src, found[:1])  # the base in place, the top pulled
    with ducc.erofs(repo_src, workdir / "repo.erofs", workdir / "repo") as repo:
        g = Graftfs(workdir / "store")
        flags = ["--uid-mapping", MAPPING, "--gid-mapping", MAPPING] if mapped else []
        g.run("init-store", *flags, "--layer-repository", str(repo))
        g.create(url, "warm")

        def check(where: str) -> None:
            if str(g.store / "images" / "v") in g.run("list").stdout.split():
                assert (g.rootfs("v") / "top").read_bytes() == b"t", f"listed but not mounted ({where})"
                assert (g.rootfs("v") / "bin/busybox").is_file(), where
            else:
                g.create(url, "v")
            g.run("delete", "v")
            assert not [p for p in mounts_under(g.store) if "/images/v/" in p + "/"], where

        kill_fifty_times([*GRAFTFS, "--store", str(g.store), "create", url, "v"], lambda: None, check)
        g.run("delete", "warm")
        g.run("clean")
        assert leftovers(g.store) == []
        assert mounts_under(g.store) == []


def test_concurrent_cold_creates_in_a_repository_store(workdir: Path, repo_src: Path) -> None:
    url, found = _local_image(workdir)
    ducc.write_repository(repo_src, found[:1])
    with ducc.erofs(repo_src, workdir / "repo.erofs", workdir / "repo") as repo:
        g = Graftfs(workdir / "store")
        g.run("init-store", "--layer-repository", str(repo))
        procs = [
            subprocess.Popen(
                [*GRAFTFS, "--store", str(g.store), "create", url, f"c{i}"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(8)
        ]
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, (out, err)
        assert len(g.volumes()) == 1  # the top layer, pulled once; the base in place for all
        assert sorted(os.listdir(g.store / "r")) == [".hide", found[0][0][7:19]]
        for i in range(8):
            assert (g.rootfs(f"c{i}") / "top").read_bytes() == b"t"
            g.run("delete", f"c{i}")


def test_the_snapshot_core_stacks_a_pulled_layer_standing_on_a_repository_layer(workdir: Path, repo_src: Path) -> None:
    """A create records the repository layer it used in place at each chain ID (meta/repository-chains): a
    snapshot prepared on the pulled layer above it stacks the repository's layer through the store's short
    link; without that record, it is refused by name, never mounted with a hole in its chain."""
    url, layers = _local_image(workdir)
    ducc.write_repository(repo_src, layers[:1])  # the bottom layer in place, the top one pulled
    with ducc.erofs(repo_src, workdir / "repo.erofs", workdir / "repo") as repo:
        g = Graftfs(workdir / "store")
        g.run("init-store", "--layer-repository", str(repo))
        g.create(url, "c1")
        (top,) = g.volumes()
        sn = Snapshotter(str(g.store))
        assert sn.stat(f"sha256:{top}").parent != ""  # it knows what it stands on
        target = workdir / "rootfs"
        target.mkdir()
        mount_all(sn.prepare("k", f"sha256:{top}"), str(target))
        try:
            assert (target / "top").read_bytes() == b"t"
            assert (target / "bin/busybox").is_file()  # the repository's layer, through r/<12 hex>
            assert not (target / ".cvmfscatalog").exists()
        finally:
            unmount(str(target))
        sn.remove("k")
        # A new revision of the repository without the base layer: refused by name, never mounted without it.
        sn.prepare("running", f"sha256:{top}")
        subprocess.run(["umount", str(repo)], check=True)
        ducc.layer_dir(repo_src, layers[0][0]).rename(workdir / "elsewhere")
        ducc.make_erofs(repo_src, workdir / "repo2.erofs")
        ducc.mount_erofs(workdir / "repo2.erofs", repo)
        with pytest.raises(FailedPrecondition, match=f"layer {layers[0][0]} is gone from the layer repository"):
            sn.mounts("running")
        sn.remove("running")
        records = g.store / "meta" / "repository-chains"
        assert len(os.listdir(records)) == 1
        shutil.rmtree(records)
        with pytest.raises(FailedPrecondition, match=r"is not in the store \(a layer of its layer repository\)"):
            sn.prepare("k", f"sha256:{top}")
        assert [i.name for i in sn.walk("kind==active")] == []
        g.run("delete", "c1")

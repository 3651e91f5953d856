"""Remote layers under the real containerd (Debian's 1.6; issue 15): a store whose layer repository (DUCC's
layout, an erofs image mounted from a file) holds an image's layers serves them to containerd as remote
snapshots. ``ctr-remote images rpull --plain-http --snapshotter graftfs`` (stargz-snapshotter's ctr) labels
each layer's prepare with ``containerd.io/snapshot.ref`` and ``containerd.io/snapshot/remote/stargz.digest``;
graftfs answers ALREADY_EXISTS for a layer in the repository, containerd finds the committed snapshot with
``List`` (``labels."containerd.io/snapshot.ref"==<chain>,parent==<parent>``) and fetches no blob for it: the
registry's access log shows which blobs were asked for.

Each test starts its own snapshotter server and containerd (tests/support/containerd.py) on a store made with
``init-store --layer-repository``; the repository is mounted first, so containerd's private mount namespace
has it too."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from graftfs.mount import kernel
from tests.integration.conftest import Graftfs
from tests.integration.test_containerd import _start, _stop
from tests.support import containerd as ctrd_support
from tests.support import ducc
from tests.support.containerd import Containerd
from tests.support.images import TarBuilder, busybox_layer, write_oci_layout
from tests.support.registry import REGISTRY, Registry, start_registry

pytestmark = [
    pytest.mark.skipif(
        not (os.path.exists(ctrd_support.CONTAINERD) and shutil.which("runc")), reason="needs containerd and runc"
    ),
    pytest.mark.skipif(not os.path.exists(ctrd_support.CTR_REMOTE), reason="needs ctr-remote (stargz-snapshotter)"),
    pytest.mark.skipif(not Path(ducc.MKFS_EROFS).exists(), reason="needs mkfs.erofs (erofs-utils)"),
    pytest.mark.skipif(not (Path(REGISTRY).exists() and shutil.which("skopeo")), reason="needs docker-registry"),
]


class Image:
    def __init__(self, ref: str, config: str, digests: list[str], chains: list[str], tars: list[bytes]) -> None:
        self.ref = ref
        self.config = config
        self.digests = digests
        self.chains = chains
        self.tars = tars

    def layers(self, *indexes: int) -> list[tuple[str, bytes]]:
        return [(self.digests[i], self.tars[i]) for i in indexes]


@pytest.fixture(scope="module")
def work() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("integration tests need root")
    path = Path(tempfile.mkdtemp(prefix="gfs-rmt-"))  # short: unix socket paths have at most 107 bytes
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def registry(work: Path) -> Iterator[Registry]:
    with start_registry(work / "registry") as reg:
        yield reg


def push_app(registry: Registry, work: Path) -> Image:
    """The remote-layer tests' image (the CRI tests' too), pushed to ``registry`` as ``team/app:1``. Four
    layers: busybox, an app, one that deletes a file and makes a directory opaque (DUCC keeps those whiteouts as
    plain files: the store's shim applies them), and one on top."""
    tars = [
        busybox_layer(
            TarBuilder().file("etc/motd", b"from the base\n").file("etc/old.conf", b"old\n").dir("opt").file("opt/x")
        ),
        TarBuilder().dir("app").file("app/run.sh", b"#!/bin/sh\necho running\n", mode=0o755).build(),
        TarBuilder().dir("etc").whiteout("etc/old.conf").dir("opt").opaque("opt").file("opt/y", b"y\n").build(),
        TarBuilder().dir("app").file("app/version", b"4\n").build(),
    ]
    info = write_oci_layout(work / "app-layout", tars, tag="1")
    registry.push(info.path, "1", "team/app")
    return Image(f"{registry.host}/team/app:1", info.config_digest, info.layer_digests, info.chain_ids, tars)


@pytest.fixture(scope="module")
def app(registry: Registry, work: Path) -> Image:
    return push_app(registry, work)


def _blobs_asked(registry: Registry, since: int) -> set[str]:
    text = registry.log.read_bytes()[since:].decode(errors="replace")
    return set(re.findall(r'"(?:GET|HEAD) /v2/[^ ]+/blobs/(sha256:[0-9a-f]{64})', text))


@contextmanager
def _pair(work: Path, name: str, repo: Path) -> Iterator[tuple[Path, Containerd]]:
    """A store using ``repo`` as its layer repository, its snapshotter server and a containerd."""
    base = work / name
    Graftfs(base / "store").run("init-store", "--layer-repository", str(repo))
    server, containerd = _start(base, name)
    try:
        yield base, containerd
    finally:
        _stop(server, containerd)


def _rpull(ctr: Containerd, ref: str) -> None:
    ctr.ctr("images", "rpull", "--plain-http", "--snapshotter", "graftfs", ref, binary=ctrd_support.CTR_REMOTE)


RUN = "cat /etc/motd /app/version; /app/run.sh; ls /opt; ls -a /etc /; test -e /etc/old.conf && echo OLD; true"


def _run(ctr: Containerd, ref: str, name: str) -> str:
    return ctr.ctr("run", "--rm", "--snapshotter", "graftfs", ref, name, "/bin/busybox", "sh", "-c", RUN).stdout


def _check_run(out: str) -> None:
    assert out.startswith("from the base\n4\nrunning\ny\n"), out
    assert "OLD" not in out and "old.conf" not in out and ".wh." not in out and ".cvmfscatalog" not in out, out


def _snapshot_rows(ctr: Containerd) -> list[list[str]]:
    out = ctr.ctr("snapshots", "--snapshotter", "graftfs", "ls").stdout.splitlines()
    return [line.split() for line in out[1:] if line.strip()]


def test_an_image_whose_layers_are_all_in_the_repository_is_pulled_with_no_blob_fetched_and_runs(
    work: Path, registry: Registry, app: Image
) -> None:
    src = work / "all-src"
    ducc.write_repository(src, app.layers(0, 1, 2, 3))
    with ducc.erofs(src, work / "all.erofs", work / "all-repo") as repo, _pair(work, "all", repo) as (base, ctr):
        before = registry.log.stat().st_size
        _rpull(ctr, app.ref)
        assert _blobs_asked(registry, before) == {app.config}  # the config only: no layer
        rows = _snapshot_rows(ctr)
        assert sorted(r[0] for r in rows) == sorted(app.chains), rows
        assert all(r[-1] == "Committed" for r in rows), rows
        _check_run(_run(ctr, app.ref, "all"))
        # containerd's usage of a remote layer: the repository's, not the store's.
        usage = ctr.ctr("snapshots", "--snapshotter", "graftfs", "usage", app.chains[-1]).stdout
        assert re.search(r"\s0\.0 B\s+0\s*$", usage.splitlines()[-1]), usage
        # A second namespace: the same snapshots, nothing fetched again.
        other = Containerd(ctr.work, ctr.proc, "second")
        before = registry.log.stat().st_size
        _rpull(other, app.ref)
        assert _blobs_asked(registry, before) == set()  # the config is in containerd's content store
        _check_run(_run(other, app.ref, "second"))
        log = (base / "server.log").read_text()
        assert log.count("remote-layer") >= 4, log
        # containerd's garbage collection removes them once no image needs them: the repository stays.
        for c in (ctr, other):
            c.ctr("images", "rm", "--sync", app.ref)
        assert _snapshot_rows(ctr) == [] and _snapshot_rows(other) == []
        assert ducc.layer_dir(repo, app.digests[0]).is_dir()
        assert sorted(os.listdir(base / "store" / "snapshots")) == ["keys"]


def test_with_the_bottom_layers_in_the_repository_only_the_others_are_fetched(
    work: Path, registry: Registry, app: Image
) -> None:
    """containerd's unpacker fetches from the first layer it has to unpack on: the layers the repository
    spares it are the ones below that (a base image's, the usual case)."""
    src = work / "half-src"
    ducc.write_repository(src, app.layers(0, 1))
    with ducc.erofs(src, work / "half.erofs", work / "half-repo") as repo, _pair(work, "half", repo) as (base, ctr):
        before = registry.log.stat().st_size
        _rpull(ctr, app.ref)
        assert _blobs_asked(registry, before) == {app.config, app.digests[2], app.digests[3]}
        _check_run(_run(ctr, app.ref, "half"))
        log = (base / "server.log").read_text()
        assert log.count('.remote-layer"') == 2, log
        ctr.ctr("images", "rm", "--sync", app.ref)
        assert _snapshot_rows(ctr) == []


def test_a_layer_gone_from_the_repository_is_reported_not_mounted_empty(
    work: Path, registry: Registry, app: Image
) -> None:
    src = work / "gone-src"
    ducc.write_repository(src, app.layers(0, 1, 2, 3))
    repo = work / "gone-repo"
    ducc.make_erofs(src, work / "gone.erofs")
    ducc.mount_erofs(work / "gone.erofs", repo)
    try:
        with _pair(work, "gone", repo) as (_, ctr):
            _rpull(ctr, app.ref)
            _check_run(_run(ctr, app.ref, "before"))
            # A new revision of the repository without the base layer, where the old one was (as CernVM-FS
            # publishes one): the server sees it; containerd's namespace keeps its copy of the old mount.
            kernel.unmount(str(repo))
            ducc.layer_dir(src, app.digests[0]).rename(work / "gone-elsewhere")
            ducc.make_erofs(src, work / "gone2.erofs")
            ducc.mount_erofs(work / "gone2.erofs", repo)
            result = ctr.ctr(
                "run", "--rm", "--snapshotter", "graftfs", app.ref, "after", "/bin/busybox", "true", check=False
            )
            assert result.returncode != 0
            wanted = f"layer {app.digests[0]} is gone from the layer repository"
            lines = [line for line in result.stderr.splitlines() if wanted in line]
            assert len(lines) == 1, result.stderr
            ctr.ctr("images", "rm", "--sync", app.ref)
            assert _snapshot_rows(ctr) == []
    finally:
        if kernel.is_mountpoint(str(repo)):
            kernel.unmount(str(repo))


def test_a_thin_image_imported_into_containerd_runs_on_the_repository_s_layers(
    work: Path, registry: Registry, app: Image
) -> None:
    """The snapshot core's thin images under containerd: ``thin convert`` fills a repository and writes the
    thin image; ``ctr images import`` unpacks its one layer (``/thin.json``) as any layer, and ``ctr run`` on it
    stacks the repository's layers the descriptor names instead."""
    from tests.integration.test_containerd import oci_archive

    src = work / "thin-src"
    src.mkdir(mode=0o755)
    Graftfs(work / "thin-convert").run(
        "thin",
        "convert",
        f"docker://{app.ref}",
        "--repository",
        str(src),
        "--output",
        f"oci://{work}/thin-layout:1",
        "--insecure-registry",
        registry.host,
    )
    archive = oci_archive(work / "thin-layout", work / "thin.tar")
    with ducc.erofs(src, work / "thin.erofs", work / "thin-repo") as repo, _pair(work, "thin", repo) as (_, ctr):
        ctr.ctr("images", "import", "--snapshotter", "graftfs", "--base-name", "gfs.test/thin", str(archive))
        _check_run(_run(ctr, "gfs.test/thin:1", "thin"))
        out = ctr.ctr("run", "--rm", "--snapshotter", "graftfs", "gfs.test/thin:1", "json", "/bin/busybox", "ls", "/")
        assert "thin.json" not in out.stdout
        ctr.ctr("images", "rm", "--sync", "gfs.test/thin:1")
        assert _snapshot_rows(ctr) == []

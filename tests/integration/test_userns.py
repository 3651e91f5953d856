"""Unprivileged containers: a store with Garden's UID/GID mappings, used by runc in a user namespace.

Garden's unprivileged store maps container root to the host's "maximus" (4294967294) and every other ID to
itself (``0:4294967294:1``, ``1:1:4294967293``). Layers are unpacked with IDs translated, so the container,
run by runc with the same mapping, sees root-owned files as root and www-data's as www-data.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Graftfs, mounts_under
from tests.support.images import TarBuilder, busybox_layer, write_oci_layout
from tests.support.runc import run_in_rootfs, traversable_tmpdir

MAXIMUS = 4294967294
GARDEN = [(0, MAXIMUS, 1), (1, 1, MAXIMUS - 1)]
GARDEN_FLAGS = ["0:4294967294:1", "1:1:4294967293"]


@pytest.fixture
def unprivileged() -> Iterator[Graftfs]:
    """A store with Garden's mappings, under a directory the mapped root can search (runc needs that)."""
    with traversable_tmpdir() as base:
        g = Graftfs(base / "store")
        flags = [arg for m in GARDEN_FLAGS for arg in ("--uid-mapping", m, "--gid-mapping", m)]
        g.run("init-store", *flags)
        try:
            yield g
        finally:
            for image_id in os.listdir(g.store / "images"):
                g.run("delete", image_id, check=False)
            left = mounts_under(base)
            assert not left, left


def test_garden_unprivileged_mapping_in_runc(unprivileged: Graftfs, tmp_path: Path) -> None:
    top = (
        TarBuilder()
        .dir("var/www", uid=33, gid=33)
        .file("var/www/index.html", b"hello\n", uid=33, gid=33)
        .file("etc/motd", b"root's\n")
    )
    info = write_oci_layout(tmp_path / "img", [busybox_layer(), top.build()])
    unprivileged.create(info.url(), "app")
    rootfs = unprivileged.rootfs("app")
    # On the host: root's files belong to maximus, www-data's stay 33; the image's own directories too.
    assert os.stat(rootfs / "etc/motd").st_uid == MAXIMUS
    assert os.stat(rootfs / "var/www/index.html")[4:6] == (33, 33)
    for sub in ("rootfs", "diff", "workdir"):
        st = os.stat(unprivileged.store / "images" / "app" / sub)
        assert (st.st_uid, st.st_gid) == (MAXIMUS, MAXIMUS), sub

    script = (
        "ls -ln / | grep -w etc; stat -c '%u:%g %n' /etc/motd /var/www/index.html; "
        "echo hi > /tmp/new; stat -c '%u:%g' /tmp/new"
    )
    out = run_in_rootfs(rootfs, ["/bin/sh", "-c", script], uid_mappings=GARDEN, gid_mappings=GARDEN).stdout
    lines = out.splitlines()
    assert lines[0].split()[2:4] == ["0", "0"], out  # owner and group of /etc as the container sees them
    assert lines[1:] == ["0:0 /etc/motd", "33:33 /var/www/index.html", "0:0"], out
    # What the container wrote is the mapped root's on the host.
    assert os.stat(unprivileged.store / "images" / "app" / "diff" / "tmp" / "new").st_uid == MAXIMUS


@pytest.mark.skipif(not shutil.which("fuse-overlayfs"), reason="needs fuse-overlayfs")
def test_a_store_on_an_overlay_is_served_by_fuse_overlayfs(workdir: Path) -> None:
    """A container's root is often an overlay, and the kernel will not stack another overlay on it. graftfs
    finds that at init-store, keeps the layers' own .wh. whiteouts, and mounts with fuse-overlayfs."""
    root = workdir / "container-root"
    for name in ("lower", "upper", "work"):
        (workdir / name).mkdir()
    root.mkdir()
    opts = f"lowerdir={workdir / 'lower'},upperdir={workdir / 'upper'},workdir={workdir / 'work'}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(root)], check=True)
    try:
        g = Graftfs(root / "store")
        g.run("init-store")
        report = g.run("features").stdout
        assert "overlay          fuse-overlayfs, mounted by graftfs (the kernel will not stack" in report, report
        assert "whiteouts        the layers' .wh. files" in report, report

        base = TarBuilder().dir("etc").file("etc/a", b"a").file("etc/b", b"b").dir("dir").file("dir/c", b"c")
        top = TarBuilder().whiteout("etc/a").opaque("dir").file("dir/d", b"d")
        info = write_oci_layout(workdir / "img", [busybox_layer(), base.build(), top.build()])
        assert g.fails("create", "--without-mount", info.url(), "x").startswith("the kernel will not stack")
        g.create(info.url(), "x")
        script = "ls /dir; ls /etc | grep -x -e a -e b; echo new > /new; cat /new"
        out = run_in_rootfs(g.rootfs("x"), ["/bin/sh", "-c", script]).stdout
        assert out.split() == ["d", "b", "new"], out  # dir/c hidden by the opaque dir, etc/a by its whiteout
        usage = json.loads(g.run("stats", "x").stdout)["disk_usage"]
        assert usage["exclusive_bytes_used"] > 0
        g.run("delete", "x")
        assert g.run("clean").stdout == "clean completed\n"
        assert not g.volumes()
    finally:
        subprocess.run(["umount", "-R", str(root)], check=False)


def test_stores_with_different_mappings_share_one_unshifted_copy_of_the_layers(tmp_path: Path) -> None:
    """Garden's privileged store (no mappings) and unprivileged store (its mappings) name one shared layers
    directory: each layer is unpacked once, unshifted, and the unprivileged store's containers see it
    through idmapped mounts, as they would have seen a shifted copy."""
    top = TarBuilder().dir("var/www", uid=33, gid=33).file("var/www/index.html", b"hi\n", uid=33, gid=33)
    top.file("etc/motd", b"shared\n")
    info = write_oci_layout(tmp_path / "img", [busybox_layer(), top.build()])
    with traversable_tmpdir() as base:
        layers = base / "layers"
        privileged, unprivileged = Graftfs(base / "privileged"), Graftfs(base / "unprivileged")
        privileged.run("init-store", "--shared-layers", str(layers))
        flags = [arg for m in GARDEN_FLAGS for arg in ("--uid-mapping", m, "--gid-mapping", m)]
        unprivileged.run("init-store", "--shared-layers", str(layers), *flags)
        try:
            report = unprivileged.run("features").stdout
            assert f"layers           shared, unshifted, with every store using {layers}; this store's ID" in report
            assert "idmapped mounts  used:" in report, report

            privileged.create(info.url(), "p")
            unprivileged.create(info.url(), "u")
            volumes = sorted(os.listdir(layers / "volumes"))
            assert len(volumes) == 2  # one copy, unpacked by the first create, used by both stores
            index = next((layers / "volumes").glob("*/var/www/index.html"))
            assert os.stat(index)[4:6] == (33, 33) and os.stat(index.parent.parent.parent / "etc").st_uid == 0

            script = "stat -c '%u:%g %n' /etc/motd /var/www/index.html"
            out = run_in_rootfs(
                unprivileged.rootfs("u"), ["/bin/sh", "-c", script], uid_mappings=GARDEN, gid_mappings=GARDEN
            )
            assert out.stdout.splitlines() == ["0:0 /etc/motd", "33:33 /var/www/index.html"]
            assert os.stat(unprivileged.rootfs("u") / "etc/motd").st_uid == MAXIMUS  # the host's view
            out = run_in_rootfs(privileged.rootfs("p"), ["/bin/sh", "-c", script])
            assert out.stdout.splitlines() == ["0:0 /etc/motd", "33:33 /var/www/index.html"]

            # A clean in one store keeps what the other store uses; deleting never touches the layers.
            privileged.run("delete", "p")
            privileged.run("clean")
            assert sorted(os.listdir(layers / "volumes")) == volumes
            unprivileged.run("delete", "u")
            assert index.read_bytes() == b"hi\n"
            assert not mounts_under(base)
            unprivileged.run("clean")
            assert os.listdir(layers / "volumes") == []
            # --without-mount cannot hand an idmapped stack to a runtime: refused, by name.
            refused = unprivileged.fails("create", "--without-mount", info.url(), "x")
            assert refused.startswith("this store's layers are shared unshifted and mounted idmapped")
        finally:
            for g in (privileged, unprivileged):
                for image_id in os.listdir(g.store / "images"):
                    g.run("delete", image_id, check=False)
            left = mounts_under(base)
            for point in left:
                subprocess.run(["umount", "-l", point], check=False)
            assert not left, left

"""Creating images from OCI layouts and tarballs, mounted with the kernel's overlayfs, run with runc."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from graftfs.mount import kernel
from tests.integration.conftest import GRAFTFS, Graftfs
from tests.support.images import (
    TarBuilder,
    busybox_layer,
    many_layers_image,
    write_oci_layout,
    write_rootfs_tar,
)
from tests.support.rss import run_measured
from tests.support.runc import run_in_rootfs

CAP_NET_BIND = bytes.fromhex("0100000200040000000000000000000000000000")  # vfs_cap_data v2, cap_net_bind_service
LONG_DIR = "/".join(f"{'d' * 99}{i}" for i in range(10))  # 1,009 characters of directories


def multilayer_layers() -> list[bytes]:
    base = busybox_layer(
        TarBuilder()
        .dir("data")
        .file("data/keep", b"keep\n")
        .file("data/delete-me", b"gone\n")
        .dir("data/dir-to-delete")
        .file("data/dir-to-delete/a", b"a")
        .file("data/dir-to-delete/b", b"b")
        .dir("data/opaque")
        .file("data/opaque/old1", b"1")
        .file("data/opaque/old2", b"2")
        .dir("data/bin")
        .file("data/www", b"web\n", uid=33, gid=33)
    )
    long_parts = LONG_DIR.split("/")
    top = TarBuilder().dir("data").dir("data/bin")
    for depth in range(1, len(long_parts) + 1):
        top.dir("data/" + "/".join(long_parts[:depth]))
    top = (
        top.whiteout("data/delete-me")
        .whiteout("data/dir-to-delete")
        .opaque("data/opaque")
        .file("data/opaque/new", b"new\n")
        .file("data/orig", b"linked\n")
        .hardlink("data/hard", "data/orig")
        .file("data/bin/suid", b"#!/bin/sh\necho suid\n", mode=0o4755)
        .file("data/xattrs", b"x", xattrs={"user.graftfs": b"hello", "security.capability": CAP_NET_BIND})
        .file(f"data/{LONG_DIR}/file", b"deep\n")
    )
    third = TarBuilder().dir("data").file("data/third", b"3\n").dir("data/sticky", mode=0o1777)
    return [base, top.build(), third.build()]


EXPECTED_DATA = {
    "/data",
    "/data/keep",
    "/data/opaque",
    "/data/opaque/new",
    "/data/bin",
    "/data/bin/suid",
    "/data/www",
    "/data/orig",
    "/data/hard",
    "/data/xattrs",
    "/data/third",
    "/data/sticky",
    *("/data/" + "/".join(LONG_DIR.split("/")[:d]) for d in range(1, 11)),
    f"/data/{LONG_DIR}/file",
}


def test_multilayer_oci_image_shows_exactly_the_right_files_in_runc(gfs: Graftfs, workdir: Path) -> None:
    info = write_oci_layout(
        workdir / "layout", multilayer_layers(), compression=["gzip", "none", "zstd"], env=["PATH=/bin", "A=1"]
    )
    spec = gfs.create(info.url(), "multi")
    assert spec["process"] == {"user": {"uid": 0, "gid": 0}, "env": ["PATH=/bin", "A=1"], "cwd": ""}
    rootfs = gfs.rootfs("multi")
    assert spec["root"] == {"path": str(rootfs)}

    script = (
        "find /data | sort; echo ---; "
        "stat -c '%a %u %g' /data/bin/suid /data/www /data/sticky; "
        "stat -c '%i' /data/orig /data/hard; cat /data/hard /data/opaque/new; "
        f"cat /data/{LONG_DIR}/file"
    )
    out = run_in_rootfs(rootfs, ["/bin/sh", "-c", script]).stdout
    listing, _, rest = out.partition("---\n")
    assert set(listing.split()) == EXPECTED_DATA
    lines = rest.splitlines()
    assert lines[0:3] == ["4755 0 0", "644 33 33", "1777 0 0"]
    assert lines[3] == lines[4], "hard link lost"
    assert lines[5:] == ["linked", "new", "deep"]
    # xattrs (including the binary file capability) come through the overlay.
    assert os.getxattr(rootfs / "data/xattrs", "user.graftfs") == b"hello"
    assert os.getxattr(rootfs / "data/xattrs", "security.capability") == CAP_NET_BIND
    gfs.run("delete", "multi")
    assert not (gfs.store / "images" / "multi").exists()


def test_two_images_share_their_common_volume(gfs: Graftfs, workdir: Path) -> None:
    base = busybox_layer()
    a = write_oci_layout(workdir / "a", [base, TarBuilder().file("a", b"a").build()])
    b = write_oci_layout(workdir / "b", [base, TarBuilder().file("b", b"b").build()])
    gfs.create(a.url(), "a")
    gfs.create(b.url(), "b")
    assert gfs.volumes() == {c.partition(":")[2] for c in a.chain_ids + b.chain_ids}
    assert len(gfs.volumes()) == 3
    assert (gfs.rootfs("a") / "a").read_bytes() == b"a" and not (gfs.rootfs("a") / "b").exists()
    assert (gfs.rootfs("b") / "b").read_bytes() == b"b" and not (gfs.rootfs("b") / "a").exists()
    # A container writes into its own upper layer only.
    (gfs.rootfs("a") / "bin" / "new").write_text("mine")
    assert not (gfs.rootfs("b") / "bin" / "new").exists()
    assert (gfs.store / "images" / "a" / "diff" / "bin" / "new").exists()
    gfs.run("delete", "a")
    gfs.run("delete", "b")


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_rootfs_tarball_in_each_compression(gfs: Graftfs, workdir: Path, compression: str) -> None:
    tar = write_rootfs_tar(workdir / "rootfs.tar", busybox_layer(), compression)
    spec = gfs.create(str(tar), "tarball")
    assert "env" not in spec["process"]  # type: ignore[operator]
    assert run_in_rootfs(gfs.rootfs("tarball"), ["/bin/echo", "ok"]).stdout == "ok\n"
    gfs.run("delete", "tarball")


def test_touching_a_tarball_makes_a_new_volume(gfs: Graftfs, workdir: Path) -> None:
    tar = write_rootfs_tar(workdir / "rootfs.tar", busybox_layer())
    gfs.create(str(tar), "one")
    os.utime(tar, ns=(1, 1))
    gfs.create(str(tar), "two")
    assert len(gfs.volumes()) == 2
    gfs.run("delete", "one")
    gfs.run("delete", "two")


def test_image_with_130_layers_mounts_and_memory_does_not_grow_per_layer(gfs: Graftfs, workdir: Path) -> None:
    info = many_layers_image(workdir / "many", 130)
    argv = [*GRAFTFS, "--store", str(gfs.store), "create", info.url(), "many"]
    code, peak_mib = run_measured(argv, workdir / "rss")
    assert code == 0
    assert len(os.listdir(gfs.rootfs("many") / "layers")) == 129
    # Each layer's stream and buffers (~2 MiB) are released when the layer is done: a leak once made this
    # 164 MiB for 128 layers.
    assert peak_mib < 60, f"peak RSS {peak_mib:.1f} MiB"
    gfs.run("delete", "many")
    gfs.run("delete", "many")


def test_without_mount_returns_a_mount_the_caller_can_perform(gfs: Graftfs, workdir: Path) -> None:
    info = write_oci_layout(workdir / "l", [busybox_layer(), TarBuilder().file("top", b"top").build()])
    spec = gfs.create(info.url(), "unmounted", "--without-mount")
    rootfs = gfs.rootfs("unmounted")
    assert not os.path.ismount(rootfs)
    mounts = spec["mounts"]
    assert isinstance(mounts, list) and len(mounts) == 1
    mount: dict[str, Any] = mounts[0]
    assert mount["destination"] == "/" and mount["type"] == "overlay" and mount["source"] == "overlay"
    [options] = mount["options"]
    assert options.startswith(f"lowerdir={gfs.store}/l/")
    assert "volatile" not in options.split(",")  # GrootFS's: the runtime decides what its mount is
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(rootfs)], check=True)
    try:
        assert (rootfs / "top").read_bytes() == b"top"
    finally:
        subprocess.run(["umount", str(rootfs)], check=True)
    gfs.run("delete", "unmounted")


def test_the_mounted_rootfs_is_volatile_and_delete_removes_all_of_it(gfs: Graftfs, workdir: Path) -> None:
    info = write_oci_layout(workdir / "l", [busybox_layer()])
    gfs.create(info.url(), "volatile")
    rootfs = gfs.rootfs("volatile")
    point, fstype, options = kernel.mount_of(str(rootfs))
    # Shown as "volatile" (5.10) or, since overlayfs's fsync= (6.x), as "fsync=volatile".
    assert (point, fstype) == (str(rootfs), "overlay"), (point, fstype)
    assert {"volatile", "fsync=volatile"} & set(options.split(",")), options
    # The container's fsync succeeds (it is not made durable); its data is there as it wrote it.
    run_in_rootfs(rootfs, ["/bin/sh", "-c", "echo kept > /written && sync /written && sync"])
    assert (rootfs / "written").read_text() == "kept\n"
    # The kernel's marker of a volatile upper (workdir/work/incompat/volatile, mode 0) goes with the image.
    assert (gfs.store / "images" / "volatile" / "workdir" / "work" / "incompat" / "volatile").is_dir()
    gfs.run("delete", "volatile")
    assert not os.path.ismount(rootfs) and not (gfs.store / "images" / "volatile").exists()


def test_stats_measure_what_the_container_wrote(gfs: Graftfs, workdir: Path) -> None:
    info = write_oci_layout(workdir / "l", [busybox_layer()])
    gfs.create(info.url(), "stats")
    before = json.loads(gfs.run("stats", "stats").stdout)["disk_usage"]
    assert before["exclusive_bytes_used"] == 0
    assert before["total_bytes_used"] == before["committed_space_bytes"] > 1_000_000  # busybox is in there
    run_in_rootfs(gfs.rootfs("stats"), ["/bin/dd", "if=/dev/zero", "of=/written", "bs=1M", "count=3"])
    gfs.env = {"GRAFTFS_STATS_CACHE_SECONDS": "0"}  # measure now, not the few-seconds-old measurement
    after = json.loads(gfs.run("stats", str(gfs.store / "images" / "stats")).stdout)["disk_usage"]
    assert 3 << 20 <= after["exclusive_bytes_used"] <= (3 << 20) + 64 * 1024
    assert after["total_bytes_used"] == before["total_bytes_used"] + after["exclusive_bytes_used"]
    gfs.run("delete", "stats")


def test_multi_platform_index_picks_this_host(gfs: Graftfs, workdir: Path) -> None:
    from tests.support.images import host_platform

    here = host_platform()
    info = write_oci_layout(
        workdir / "multi", [busybox_layer()], platforms=[("linux", "s390x", None), here, ("linux", "riscv64", None)]
    )
    gfs.create(info.url(), "plat")
    assert (gfs.rootfs("plat") / "bin" / "busybox").exists()
    assert not (gfs.rootfs("plat") / "platform").exists()
    gfs.run("delete", "plat")


def test_garden_preloaded_layer_layout_with_a_base_directory(gfs: Graftfs, workdir: Path) -> None:
    """What guardian writes for ``preloaded+layer:`` rootfses: the base layer blob is a symlink to a rootfs
    tar and its digest is a hash of the tar's name, the top layer unpacks under an absolute base directory,
    and Garden's config sets skip_layer_validation."""
    import hashlib

    from tests.support.images import compress

    base_tar = workdir / "cflinuxfs.tar"
    base_tar.write_bytes(busybox_layer(TarBuilder().dir("home").dir("home/vcap", mode=0o750, uid=2000, gid=2000)))
    layer = compress(TarBuilder().dir("app").file("app/run.sh", b"#!/bin/sh\n", mode=0o755).build(), "gzip")
    layout = workdir / "image"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    fake = hashlib.sha256(f"{base_tar}-{base_tar.stat().st_mtime_ns}".encode()).hexdigest()
    (blobs / fake).symlink_to(base_tar)
    layer_digest = hashlib.sha256(layer).hexdigest()
    (blobs / layer_digest).write_bytes(layer)
    config = blob(
        json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [f"sha256:{fake}", f"sha256:{layer_digest}"]},
            }
        ).encode()
    )
    manifest = blob(
        json.dumps(
            {
                "schemaVersion": 2,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
                "layers": [
                    {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": f"sha256:{fake}", "size": 0},
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": f"sha256:{layer_digest}",
                        "size": len(layer),
                        "annotations": {"org.cloudfoundry.experimental.image.base-directory": "/home/vcap"},
                    },
                ],
            }
        ).encode()
    )
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest}]}
    (layout / "index.json").write_text(json.dumps(index))

    assert "layer size is different" in gfs.fails("create", f"oci://{layout}", "strict")
    gfs.create(f"oci://{layout}", "preloaded", "--skip-layer-validation")
    rootfs = gfs.rootfs("preloaded")
    assert (rootfs / "home/vcap/app/run.sh").read_bytes() == b"#!/bin/sh\n"
    vcap = (rootfs / "home/vcap").stat()
    assert (vcap.st_uid, vcap.st_mode & 0o7777) == (2000, 0o750)  # the base directory kept its owner and mode
    gfs.run("delete", "preloaded")

"""Disk limits: enforced by btrfs qgroups on a btrfs filesystem (on a loop device the test makes), and
measured only, with the caller's choice of warning or refusing, where the filesystem has no quotas.

A 10 MB limit must let a container write 4 MB and stop it at 11 MB, with the image counted in the limit
and with --exclude-image-from-quota; stats must report what was written.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Graftfs
from tests.support.images import TarBuilder, write_oci_layout
from tests.support.loopfs import loop_filesystem
from tests.support.runc import run_in_rootfs
from tests.support.xfs_vm import quota_image

MB = 1 << 20
WRITE = "dd if=/dev/zero of=/data bs=1048576 count={n} 2>&1 && sync"


@pytest.fixture
def btrfs(workdir: Path) -> Iterator[Path]:
    """A fresh btrfs on a loop device of our own, mounted under the test's temp dir."""
    if not shutil.which("mkfs.btrfs"):
        pytest.skip("needs btrfs-progs")
    with loop_filesystem(workdir, "btrfs", 512 * MB, ["mkfs.btrfs", "-q"]) as mnt:
        yield mnt


def _image(workdir: Path) -> str:
    return quota_image(workdir / "img")


def _write(g: Graftfs, image_id: str, megabytes: int) -> subprocess.CompletedProcess[str]:
    return run_in_rootfs(g.rootfs(image_id), ["/bin/sh", "-c", WRITE.format(n=megabytes)], check=False)


@pytest.mark.parametrize("exclude", [False, True], ids=["image-counted", "image-excluded"])
def test_btrfs_qgroups_enforce_the_limit(btrfs: Path, workdir: Path, exclude: bool) -> None:
    g = Graftfs(btrfs / "store")
    g.run("init-store")
    assert "disk quotas      btrfs qgroups" in g.run("features").stdout
    url = _image(workdir)
    flags = ["--disk-limit-size-bytes", str(10 * MB)] + (["--exclude-image-from-quota"] if exclude else [])
    try:
        g.create(url, "ok", *flags)
        assert _write(g, "ok", 4).returncode == 0
        subprocess.run(["btrfs", "filesystem", "sync", str(btrfs)], check=True)
        usage = json.loads(g.run("stats", "ok").stdout)["disk_usage"]
        base = int((g.store / "images/ok/image_info").read_text())
        assert 4 * MB <= usage["exclusive_bytes_used"] <= 5 * MB, usage
        assert usage["total_bytes_used"] == base + usage["exclusive_bytes_used"]
        assert usage["quota_size_bytes"] == (10 * MB if exclude else 10 * MB - base)

        g.create(url, "full", *flags)
        result = _write(g, "full", 11)
        assert result.returncode != 0 and "quota exceeded" in result.stdout.lower(), result.stdout
    finally:
        for image_id in ("ok", "full"):
            g.run("delete", image_id, check=False)
    assert g.run("list").stdout == "Store empty\n"


def test_without_quota_support_limits_are_measured_and_warned_or_refused(gfs: Graftfs, workdir: Path) -> None:
    assert "disk quotas      none on" in gfs.run("features").stdout
    url = _image(workdir)
    limit = ["--disk-limit-size-bytes", str(10 * MB)]
    # warn (the default): created, logged, not enforced; stats still follow the container's writes.
    result = gfs.run("--log-level", "error", "create", *limit, url, "warned")
    assert '"message":"grootfs.create.groot-creating.disk-limit-not-enforced"' in result.stderr, result.stderr
    before = json.loads(gfs.run("stats", "warned").stdout)["disk_usage"]
    assert _write(gfs, "warned", 11).returncode == 0  # nothing stops it
    # A measurement is reused for a few seconds (Garden polls every container): not walked again yet...
    assert json.loads(gfs.run("stats", "warned").stdout)["disk_usage"] == before
    # ... and measured again once that time is up (here at once).
    gfs.env = {"GRAFTFS_STATS_CACHE_SECONDS": "0"}
    after = json.loads(gfs.run("stats", "warned").stdout)["disk_usage"]
    assert after["exclusive_bytes_used"] - before["exclusive_bytes_used"] >= 11 * MB
    gfs.run("delete", "warned")
    # refuse: the create fails before pulling anything, and the store is as it was.
    config = workdir / "refuse.yml"
    config.write_text("create:\n  unenforceable_disk_limit: refuse\n")
    volumes = gfs.volumes()
    out = gfs.fails("--config", str(config), "create", *limit, url, "refused")
    filesystem = json.loads((gfs.store / "meta/features.json").read_text())["filesystem"]
    assert out == (
        f"a disk limit was asked for, and {gfs.store} ({filesystem}) has no quota support to enforce it "
        "(create.unenforceable_disk_limit is refuse)"
    )
    assert gfs.volumes() == volumes and gfs.run("list").stdout == "Store empty\n"
    # Without a limit, the same config creates as usual.
    gfs.run("--config", str(config), "create", url, "unlimited")
    gfs.run("delete", "unlimited")


def test_xfs_project_quotas_in_a_vm(xfs_vm: dict[str, str]) -> None:
    """init-store --store-size-bytes makes an XFS backing store with project quotas (loop device and all),
    which this machine's kernel cannot; user-mode Linux's or a QEMU guest's can. Same limits as on btrfs, and
    exclusive limits smaller than one block (the image's own records must not count against them). Run in
    the one boot all XFS tests share (tests.support.xfs_vm.cli_script)."""
    out = xfs_vm["cli"]
    assert out.endswith("exit=0\n"), out
    lines = out.splitlines()
    assert "xfs-prjquota-mounted" in lines, out
    assert "disk quotas      XFS project quotas: each image's writable layer is a project with its limit" in lines
    # "stats <mode> <document>", the document being what graftfs printed (or an error, caught below).
    stats = [line.split(" ", 2) for line in lines if line.startswith("stats ")]
    usages = {mode: json.loads(doc)["disk_usage"] for _, mode, doc in stats if doc.startswith("{")}
    for mode in ("counted", "excluded"):
        assert f"{mode}-4MB-written" in lines and f"{mode}-11MB-stopped" in lines, out
        assert mode in usages, out
        assert 4 * MB <= usages[mode]["exclusive_bytes_used"] <= 5 * MB, usages
    for mode in ("tiny-counted", "tiny-excluded"):
        assert f"{mode}-created" in lines and f"{mode}-1B-stopped" in lines, out
        assert mode in usages, out
        assert usages[mode]["quota_size_bytes"] == 10, usages
        assert usages[mode]["exclusive_bytes_used"] == 0, usages  # the records are not the container's
    assert "backing-store-removed" in lines


def test_an_ephemeral_writable_layer_is_a_tmpfs_as_large_as_the_limit(gfs: Graftfs, workdir: Path) -> None:
    url = _image(workdir)
    gfs.create(url, "eph", "--ephemeral", "--disk-limit-size-bytes", str(10 * MB), "--exclude-image-from-quota")
    image = gfs.store / "images/eph"
    assert subprocess.run(["findmnt", "-n", "-o", "FSTYPE", str(image)], capture_output=True, text=True).stdout == (
        "tmpfs\n"
    )
    assert _write(gfs, "eph", 4).returncode == 0
    usage = json.loads(gfs.run("stats", "eph").stdout)["disk_usage"]
    assert 4 * MB <= usage["exclusive_bytes_used"] <= 5 * MB and usage["quota_size_bytes"] == 10 * MB
    result = _write(gfs, "eph", 11)
    assert result.returncode != 0 and "no space left" in result.stdout.lower(), result.stdout
    gfs.run("delete", "eph")
    assert not image.exists() and gfs.run("list").stdout == "Store empty\n"


def test_ephemeral_images_in_a_btrfs_store_and_limits_smaller_than_a_page(btrfs: Path, workdir: Path) -> None:
    """An ephemeral image's usage is its tmpfs's, whatever the store's backend (on btrfs, stats once asked
    the tmpfs for a qgroup and failed); and its records take none of its limit, however small (a 10-byte
    limit once left no room for them: the create failed with ENOSPC), while the container gets not a byte."""
    g = Graftfs(btrfs / "store")
    g.run("init-store")
    url = _image(workdir)
    g.create(url, "eph", "--ephemeral", "--disk-limit-size-bytes", str(10 * MB), "--exclude-image-from-quota")
    assert _write(g, "eph", 4).returncode == 0
    usage = json.loads(g.run("stats", "eph").stdout)["disk_usage"]
    assert 4 * MB <= usage["exclusive_bytes_used"] <= 5 * MB, usage
    g.create(url, "tiny", "--ephemeral", "--disk-limit-size-bytes", "10", "--exclude-image-from-quota")
    assert json.loads(g.run("stats", "tiny").stdout)["disk_usage"]["exclusive_bytes_used"] == 0
    one = run_in_rootfs(g.rootfs("tiny"), ["/bin/sh", "-c", "echo x > /one && sync"], check=False)
    assert one.returncode != 0, one.stdout
    for image_id in ("eph", "tiny"):
        g.run("delete", image_id)
    assert g.run("list").stdout == "Store empty\n"


def test_store_size_bytes_on_a_kernel_without_xfs_quotas_says_so(workdir: Path) -> None:
    """This machine's kernel has XFS but no XFS quotas: init-store --store-size-bytes names that, and leaves
    nothing behind (no store directory, backing file, mount or loop device)."""
    g = Graftfs(workdir / "store")
    result = g.run("init-store", "--store-size-bytes", str(400 * MB), check=False)
    if result.returncode == 0:  # a kernel with XFS quotas: the VM test covers the rest
        assert "XFS project quotas" in g.run("features").stdout
        g.run("delete-store")
    else:
        assert result.stdout == (
            "init-store --store-size-bytes: making the XFS backing store (needs xfsprogs, loop devices and XFS "
            "quotas): this kernel's XFS has no quota support (mounting with pquota fails, without it works), so "
            "disk limits cannot be enforced on an XFS store here\n"
        ), result.stdout
    assert not (workdir / "store").exists() and not (workdir / "store.backing-store").exists()


def test_limits_smaller_than_the_image_fail_with_grootfs_texts(gfs: Graftfs, workdir: Path) -> None:
    """GrootFS checks an inclusive limit three times: against the compressed layers before pulling, against
    the uncompressed bytes of the layers it pulls, and against the size of the layers already in the store."""
    zeros = TarBuilder().file("zeros", b"\0" * (2 * MB)).build()  # 2 MB that compress to a few KB
    url = write_oci_layout(workdir / "zeros", [zeros]).url()
    assert len(gzip.compress(zeros)) < MB
    tiny = gfs.fails("create", "--disk-limit-size-bytes", "10", url, "tiny")
    assert tiny.startswith("layers exceed disk quota ") and tiny.endswith("/10 bytes"), tiny
    fresh = gfs.fails("create", "--disk-limit-size-bytes", str(MB), url, "fresh")
    assert fresh.startswith("pulling the image: streaming blob `sha256:"), fresh
    assert fresh.endswith("`: uncompressed layer size exceeds quota"), fresh
    assert gfs.volumes() == set()
    # Exactly the uncompressed size is allowed (the limit is inclusive) ...
    gfs.create(url, "whole", "--disk-limit-size-bytes", str(len(zeros)))
    # ... and once the layer is in the store, it is its size that counts.
    assert gfs.fails("create", "--disk-limit-size-bytes", str(MB), url, "cached") == (
        "disk limit is smaller than volume size"
    )
    gfs.create(url, "excluded", "--disk-limit-size-bytes", str(MB), "--exclude-image-from-quota")
    for image_id in ("whole", "excluded"):
        gfs.run("delete", image_id)

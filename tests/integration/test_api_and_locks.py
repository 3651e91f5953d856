"""The Python API as a front end of its own, lock independence between images, and busy unmounts."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from graftfs import AlreadyExists, CreateOptions, NotFound, Store
from graftfs.store.layout import Layout
from graftfs.store.volumes import volume_lock
from tests.integration.conftest import Graftfs
from tests.support.images import TarBuilder, busybox_layer, write_oci_layout


def test_python_api_does_what_the_cli_does(workdir: Path) -> None:
    info = write_oci_layout(workdir / "l", [busybox_layer()], env=["PATH=/bin"])
    store = Store(str(workdir / "store"))
    store.init()
    image = store.create(info.url(), "api")
    assert image.env == ["PATH=/bin"] and image.mount is None
    assert (Path(image.rootfs) / "bin" / "busybox").exists()
    with pytest.raises(AlreadyExists):
        store.create(info.url(), "api")
    unmounted = store.create(info.url(), "api2", CreateOptions(mount=False))
    assert unmounted.mount is not None and unmounted.mount["type"] == "overlay"
    assert store.stats("api").exclusive_bytes_used == 0
    assert sorted(store.list()) == [str(workdir / "store" / "images" / i) for i in ("api", "api2")]
    store.delete("api")
    store.delete("api2")
    with pytest.raises(NotFound):
        store.delete("api")
    assert store.clean().ran


def test_a_layer_being_built_does_not_block_other_images(gfs: Graftfs, workdir: Path) -> None:
    a = write_oci_layout(workdir / "a", [TarBuilder().file("a", b"a").build()])
    b = write_oci_layout(workdir / "b", [busybox_layer()])
    # Pretend another process is unpacking image a's layer right now.
    lock = volume_lock(Layout.at(str(gfs.store)), a.chain_ids[0].partition(":")[2])
    lock.acquire()
    try:
        start = time.monotonic()
        gfs.create(b.url(), "b")
        assert time.monotonic() - start < 10
    finally:
        lock.release()
    gfs.create(a.url(), "a")
    gfs.run("delete", "a")
    gfs.run("delete", "b")


def test_delete_of_a_busy_rootfs_retries_then_fails_clearly_and_keeps_the_image(gfs: Graftfs, workdir: Path) -> None:
    info = write_oci_layout(workdir / "l", [busybox_layer()])
    gfs.create(info.url(), "busy")
    rootfs = gfs.rootfs("busy")
    holder = subprocess.Popen(["sleep", "60"], cwd=rootfs)  # a process whose cwd pins the mount
    try:
        start = time.monotonic()
        line = gfs.fails("delete", "busy")
        assert time.monotonic() - start >= 4  # bounded retries (50 x 100 ms), not an instant failure
        assert line == f"unmounting {rootfs}: device or resource busy"  # Go's words, as GrootFS prints them
        assert (rootfs / "bin" / "busybox").exists()
        assert gfs.run("list").stdout.strip() == str(gfs.store / "images" / "busy")
    finally:
        holder.kill()
        holder.wait()
    assert gfs.run("delete", "busy").stdout == "Image busy deleted\n"

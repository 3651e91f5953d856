"""Hostile and broken input: escaping tarballs, corrupt blobs, concurrent creates, kill -9 mid-unpack.

Each failure must give one clear line, exit 1, and leave the store (and everything outside it) as it was.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.integration.conftest import GRAFTFS, Graftfs, snapshot
from tests.support.images import (
    TarBuilder,
    busybox_layer,
    corrupt_blob,
    write_layout_with_wrong_diffid,
    write_layout_with_wrong_size,
    write_oci_layout,
    write_rootfs_tar,
)
from tests.support.runc import run_in_rootfs


def store_state(gfs: Graftfs) -> dict[str, tuple[int, int, bytes | str]]:
    # Lock files included: a failed create removes the ones it made.
    return snapshot(gfs.store)


def raw_entry(name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.linkname = linkname
    info.mode = 0o644
    return info


def escape_tars(outside: Path) -> dict[str, bytes]:
    up = "../" * 12 + str(outside).lstrip("/")
    return {
        "dotdot": TarBuilder().raw(raw_entry(f"{up}/evil"), b"x").build(),
        "absolute": TarBuilder().raw(raw_entry(f"{outside}/evil"), b"x").build(),
        "symlink-then-write": TarBuilder().symlink("link", str(outside)).file("link/evil", b"x").build(),
        "symlink-then-overwrite": TarBuilder().symlink("link", str(outside)).file("link/secret", b"pwned").build(),
        "hardlink-out": TarBuilder().raw(raw_entry("hl", kind=tarfile.LNKTYPE, linkname=f"{up}/secret")).build(),
        "hardlink-absolute": TarBuilder()
        .raw(raw_entry("hl", kind=tarfile.LNKTYPE, linkname=f"{outside}/secret"))
        .build(),
        "hardlink-via-symlink": TarBuilder()
        .symlink("link", str(outside))
        .raw(raw_entry("hl", kind=tarfile.LNKTYPE, linkname="link/secret"))
        .build(),
        "whiteout-out": TarBuilder().raw(raw_entry(f"{up}/.wh.secret", b"")).build(),
    }


@pytest.mark.parametrize(
    "case",
    [
        "dotdot",
        "absolute",
        "symlink-then-write",
        "symlink-then-overwrite",
        "hardlink-out",
        "hardlink-absolute",
        "hardlink-via-symlink",
        "whiteout-out",
    ],
)
def test_escaping_tarballs_are_refused_and_change_nothing(
    gfs: Graftfs, workdir: Path, outside: Path, case: str
) -> None:
    tar = workdir / f"{case}.tar"
    tar.write_bytes(escape_tars(outside)[case])
    before_outside, before_store = snapshot(outside), store_state(gfs)
    line = gfs.fails("create", str(tar), "evil")
    assert "refusing" in line, line
    assert snapshot(outside) == before_outside
    assert store_state(gfs) == before_store
    assert gfs.run("list").stdout == "Store empty\n"


def test_corrupted_blob_gives_the_digest_error_and_leaves_no_volume(gfs: Graftfs, workdir: Path) -> None:
    info = write_oci_layout(workdir / "l", [busybox_layer(), TarBuilder().file("x", b"x" * 4096).build()])
    corrupt_blob(info, 0)
    before = store_state(gfs)
    line = gfs.fails("create", info.url(), "bad")
    assert line.startswith(f"pulling the image: streaming blob `{info.layer_digests[0]}`: layerID digest mismatch")
    assert store_state(gfs) == before
    assert gfs.volumes() == set()


def test_corrupted_top_layer_keeps_the_cached_base_and_adds_nothing(gfs: Graftfs, workdir: Path) -> None:
    base = busybox_layer()
    cached = write_oci_layout(workdir / "a", [base])
    gfs.create(cached.url(), "base")
    info = write_oci_layout(workdir / "b", [base, TarBuilder().file("x", b"x" * 4096).build()])
    corrupt_blob(info, 1)
    before = store_state(gfs)
    line = gfs.fails("create", info.url(), "bad")
    assert "digest mismatch" in line
    assert store_state(gfs) == before
    gfs.run("delete", "base")


def test_wrong_diff_id_is_detected(gfs: Graftfs, workdir: Path) -> None:
    info = write_layout_with_wrong_diffid(workdir / "l", [busybox_layer()])
    before = store_state(gfs)
    line = gfs.fails("create", info.url(), "bad")
    assert "diffID digest mismatch: expected: " in line
    assert store_state(gfs) == before
    # GrootFS semantics: --skip-layer-validation trusts oci:// layers (Garden sets it for preloaded layers).
    gfs.create(info.url(), "trusted", "--skip-layer-validation")
    gfs.run("delete", "trusted")


def test_wrong_size_is_detected(gfs: Graftfs, workdir: Path) -> None:
    info = write_layout_with_wrong_size(workdir / "l", [busybox_layer()], delta=-100)
    line = gfs.fails("create", info.url(), "bad")
    assert "layer size is different from the value in the manifest; expected: " in line
    assert gfs.volumes() == set()


def test_truncated_tarball_is_a_clear_error(gfs: Graftfs, workdir: Path) -> None:
    tar = workdir / "cut.tar"
    tar.write_bytes(busybox_layer()[:700_000])
    before = store_state(gfs)
    line = gfs.fails("create", str(tar), "cut")
    assert "pulling the image" in line
    assert store_state(gfs) == before


def test_twenty_concurrent_creates_unpack_each_layer_once(gfs: Graftfs, workdir: Path) -> None:
    layers = [busybox_layer(), TarBuilder().file("two", b"2").build(), TarBuilder().file("three", b"3").build()]
    info = write_oci_layout(workdir / "l", layers)
    argv = [*GRAFTFS, "--store", str(gfs.store), "--log-level", "debug", "create", info.url()]
    procs = [
        subprocess.Popen([*argv, f"c{i}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(20)
    ]
    results = [(p, *p.communicate(timeout=120)) for p in procs]
    for proc, out, err in results:
        assert proc.returncode == 0, (out, err)
        assert json.loads(out)["root"]["path"].endswith("/rootfs")
    unpacked = [
        json.loads(line)["data"]["volume"]
        for _, _, err in results
        for line in err.splitlines()
        if line.startswith("{") and json.loads(line)["message"].endswith(".layer-unpacked")
    ]
    assert sorted(unpacked) == sorted(c.partition(":")[2] for c in info.chain_ids)
    for i in range(20):
        assert (gfs.rootfs(f"c{i}") / "three").read_bytes() == b"3"
    assert run_in_rootfs(gfs.rootfs("c7"), ["/bin/cat", "/two"]).stdout == "2"
    for i in range(20):
        gfs.run("delete", f"c{i}")


def big_layer(files: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(files):
            info = tarfile.TarInfo(f"many/{i // 1000}/{i}")
            info.size = 512
            tar.addfile(info, io.BytesIO(b"z" * 512))
    return buf.getvalue()


def kill_mid_unpack(gfs: Graftfs, url: str, image_id: str) -> None:
    """Start a create and SIGKILL it while it is writing files into an -incomplete- volume."""
    proc = subprocess.Popen(
        [*GRAFTFS, "--store", str(gfs.store), "create", url, image_id],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    volumes = gfs.store / "volumes"
    deadline = time.monotonic() + 60
    seen = False
    while time.monotonic() < deadline and proc.poll() is None and not seen:
        seen = any("-incomplete-" in p.name and (p / "many" / "3").exists() for p in volumes.iterdir())
        time.sleep(0.005)
    assert proc.poll() is None, "create finished before it could be killed: make the layer bigger"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert seen, "never saw the layer being unpacked"
    assert not (gfs.store / "images" / image_id).exists()


def test_create_killed_mid_unpack_leaves_a_store_the_next_create_uses(gfs: Graftfs, workdir: Path) -> None:
    info = write_oci_layout(workdir / "l", [busybox_layer(), big_layer(40_000)], compression="gzip")
    kill_mid_unpack(gfs, info.url(), "victim")
    # The next create of the same image repairs and succeeds, without help.
    gfs.create(info.url(), "victim")
    assert len(os.listdir(gfs.rootfs("victim") / "many")) == 40
    assert not [p for p in (gfs.store / "volumes").iterdir() if "-incomplete-" in p.name]
    gfs.run("delete", "victim")


def test_clean_removes_leftovers_of_a_killed_create(gfs: Graftfs, workdir: Path) -> None:
    info = write_oci_layout(workdir / "l", [big_layer(40_000)], compression="gzip")
    kill_mid_unpack(gfs, info.url(), "victim")
    volumes = gfs.store / "volumes"
    assert any("-incomplete-" in p.name for p in volumes.iterdir())
    gfs.run("clean")
    assert list(volumes.iterdir()) == []
    assert gfs.run("list").stdout == "Store empty\n"


def test_escaping_rootfs_tar_via_gzip_is_refused(gfs: Graftfs, workdir: Path, outside: Path) -> None:
    tar = write_rootfs_tar(workdir / "evil.tgz", escape_tars(outside)["symlink-then-write"], "gzip")
    line = gfs.fails("create", str(tar), "evil")
    assert "refusing `link/evil`: it would be written through the symlink `link`" in line


def test_creates_and_cleans_in_parallel_never_lose_a_layer(gfs: Graftfs, workdir: Path) -> None:
    """100 creates (every other one deleted again at once, so cleans have layers to collect) interleaved
    with 100 `clean --threshold-bytes 0`, eight processes at a time: all succeed, and every image that
    remains has all of its layers."""
    base = busybox_layer()
    layouts = [
        write_oci_layout(workdir / f"l{n}", [base, TarBuilder().file(f"top{n}", str(n).encode()).build()])
        for n in range(5)
    ]
    argv = [*GRAFTFS, "--store", str(gfs.store)]

    def job(i: int) -> tuple[list[str], subprocess.CompletedProcess[str]]:
        if i % 2:
            cmd = [*argv, "clean", "--threshold-bytes", "0"]
            return cmd, subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        n = i // 2
        cmd = [*argv, "create", layouts[n % 5].url(), f"c{n}"]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if result.returncode == 0 and n % 2:
            result = subprocess.run([*argv, "delete", f"c{n}"], capture_output=True, text=True, timeout=120)
        return cmd, result

    try:
        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(job, range(200)))
        failed = [(cmd, r.returncode, r.stdout, r.stderr) for cmd, r in outcomes if r.returncode != 0]
        assert not failed, failed[:3]
        kept = sorted(os.listdir(gfs.store / "images"))
        assert kept == sorted(f"c{n}" for n in range(0, 100, 2))
        for image_id in kept:
            n = int(image_id[1:])
            rootfs = gfs.rootfs(image_id)
            assert (rootfs / f"top{n % 5}").read_bytes() == str(n % 5).encode()
            assert (rootfs / "bin/busybox").exists()
            for chain_id in layouts[n % 5].chain_ids:
                assert (gfs.store / "volumes" / chain_id.partition(":")[2]).is_dir()
    finally:
        for image_id in os.listdir(gfs.store / "images"):
            gfs.run("delete", image_id, check=False)

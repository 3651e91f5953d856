"""Nothing lost, whatever is mounted or killed: delete never crosses into a mount it did not make, clean
and create survive kill -9 at any instant, and parallel cold creates never wait on each other for good.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from graftfs.store.fsutil import CrossesMount, remove_tree
from tests.integration.conftest import GRAFTFS, Graftfs
from tests.support.images import TarBuilder, busybox_layer, write_oci_layout
from tests.support.loopfs import loop_filesystem

MB = 1 << 20


def bind(source: Path, target: Path) -> None:
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True)


def umount(target: Path) -> None:
    subprocess.run(["umount", str(target)], check=True)


@pytest.fixture
def image_url(workdir: Path) -> str:
    return write_oci_layout(workdir / "img", [busybox_layer()]).url()


@pytest.mark.parametrize("where", ["image directory", "rootfs"])
def test_delete_refuses_a_mount_it_did_not_make_and_keeps_everything(
    gfs: Graftfs, image_url: str, outside: Path, where: str
) -> None:
    gfs.create(image_url, "c")
    image = gfs.store / "images" / "c"
    target = image / "extra" if where == "image directory" else gfs.rootfs("c") / "mnt"
    target.mkdir()
    bind(outside, target)
    try:
        line = gfs.fails("delete", "c")
        assert line.startswith("deleting image path: "), line
        assert str(target) in line
        assert (outside / "secret").read_text() == "do not touch\n"
        assert (target / "secret").read_text() == "do not touch\n"
        assert gfs.run("list").stdout.split() == [str(image)]
        assert (gfs.rootfs("c") / "bin" / "busybox").exists(), "the rootfs was unmounted"
    finally:
        umount(target)
    gfs.run("delete", "c")
    assert (outside / "secret").read_text() == "do not touch\n"
    assert gfs.run("list").stdout == "Store empty\n"


def test_delete_store_refuses_a_mount_it_did_not_make_before_removing_anything(
    gfs: Graftfs, image_url: str, outside: Path
) -> None:
    gfs.create(image_url, "a")
    gfs.create(image_url, "b")
    target = gfs.store / "images" / "b" / "extra"
    target.mkdir()
    bind(outside, target)
    try:
        line = gfs.fails("delete-store")
        assert line.startswith("deleting image path: ") and str(target) in line, line
        assert (outside / "secret").read_text() == "do not touch\n"
        assert sorted(gfs.run("list").stdout.split()) == [str(gfs.store / "images" / i) for i in ("a", "b")]
        assert (gfs.rootfs("a") / "bin" / "busybox").exists()
    finally:
        umount(target)
    gfs.run("delete-store")
    assert not gfs.store.exists()
    assert (outside / "secret").read_text() == "do not touch\n"


def test_tree_removal_never_descends_into_another_filesystem(workdir: Path, outside: Path) -> None:
    tree = workdir / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "file").write_text("x")
    bind(outside, tree / "a" / "b")
    try:
        with pytest.raises(CrossesMount) as caught:
            remove_tree(str(tree))
        assert caught.value.filename == str(tree / "a" / "b")
        assert (outside / "secret").read_text() == "do not touch\n"
    finally:
        umount(tree / "a" / "b")
    remove_tree(str(tree))
    assert not tree.exists()


# -- kill -9 -------------------------------------------------------------------------------------------------


@pytest.fixture
def loop_store(workdir: Path) -> Iterator[Graftfs]:
    """A store on an ext4 filesystem of its own, on a loop device this test attaches."""
    with loop_filesystem(workdir, "fs", 1024 * MB, ["mkfs.ext4", "-q", "-F"]) as mnt:
        g = Graftfs(mnt / "store")
        g.run("init-store")
        yield g


def many_files(tag: str, count: int) -> bytes:
    builder = TarBuilder()
    for i in range(count):
        builder.file(f"{tag}/{i // 500}/{i}", b"z" * 64)
    return builder.build()


def leftovers(store: Path) -> list[str]:
    """Everything that a clean store holds beyond its directories and clean's own lock."""
    found = []
    for sub in ("images", "volumes", "l", "meta/dependencies", "meta/released", "tmp"):
        found += [f"{sub}/{name}" for name in os.listdir(store / sub)]
    found += [f"meta/{name}" for name in os.listdir(store / "meta") if name.startswith("volume-")]
    found += [f"locks/{name}" for name in os.listdir(store / "locks") if name != "groot-gc-lock.lock"]
    return found


def kill_after(argv: list[str], seconds: float) -> int | None:
    """Run ``argv``, SIGKILL it after ``seconds`` unless it finished; its exit status, or None if killed."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def kill_fifty_times(argv: list[str], before: Callable[[], object], after: Callable[[str], object]) -> None:
    """Run ``argv`` again and again, each time SIGKILLed at a random instant within what a run takes, until
    50 runs were killed; ``before`` prepares each run, ``after`` checks the store (told the seed and run)."""
    before()
    start = time.monotonic()
    subprocess.run(argv, capture_output=True, check=False)
    took = time.monotonic() - start
    after("the run not killed")
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    killed = runs = 0
    while killed < 50:
        runs += 1
        assert runs <= 150, f"only {killed} of {runs} runs were killed before they finished (seed {seed})"
        before()
        start = time.monotonic()
        if kill_after(argv, rng.uniform(0, took)) is None:
            killed += 1
        else:
            took = time.monotonic() - start  # it finished first: aim within what a run takes now
        after(f"seed {seed}, run {runs}")


def test_clean_killed_at_random_points_leaves_a_store_every_command_uses(loop_store: Graftfs, workdir: Path) -> None:
    g = loop_store
    url = write_oci_layout(workdir / "l", [many_files("a", 600), many_files("b", 600)], compression="none").url()

    def unused_layers() -> None:
        g.create(url, "x", "--without-mount")
        g.run("delete", "x")

    def check(where: str) -> None:
        # Whatever the clean was doing, every command works and finds the layers or rebuilds them.
        g.create(url, "y")
        assert (g.rootfs("y") / "a" / "0" / "0").read_bytes() == b"z" * 64, where
        g.run("delete", "y")
        g.run("clean")
        assert leftovers(g.store) == [], where

    kill_fifty_times([*GRAFTFS, "--store", str(g.store), "clean"], unused_layers, check)


def test_create_killed_at_random_points_is_either_whole_or_gone(loop_store: Graftfs, workdir: Path) -> None:
    """Listed means mounted: a create killed anywhere (even between its mount and its record) leaves the
    image whole or absent, and the next create of that ID completes."""
    g = loop_store
    url = write_oci_layout(workdir / "l", [busybox_layer(), TarBuilder().file("top", b"t").build()]).url()
    g.create(url, "warm")  # the layers are there: only the image's own steps are being killed

    def check(where: str) -> None:
        if str(g.store / "images" / "v") in g.run("list").stdout.split():
            assert (g.rootfs("v") / "top").read_bytes() == b"t", f"listed but not mounted ({where})"
            assert g.fails("create", url, "v") == "image for id `v` already exists"
        else:
            doc = g.create(url, "v")  # repairs what the killed create left, and completes
            assert doc["root"] == {"path": str(g.rootfs("v"))}
        g.run("delete", "v")

    kill_fifty_times([*GRAFTFS, "--store", str(g.store), "create", url, "v"], lambda: None, check)
    g.run("delete", "warm")
    g.run("clean")
    assert leftovers(g.store) == []


# -- no deadlock ---------------------------------------------------------------------------------------------


def test_parallel_cold_creates_of_many_layer_images_never_deadlock(gfs: Graftfs, workdir: Path) -> None:
    """Ten rounds of fifteen parallel cold creates: most of one 48-layer image, some of an image sharing
    its first 24 layers, some of an image sharing none. Each round must finish within its budget: before,
    two creates that each built a layer the other was waiting for waited on each other for 600 s."""
    layers = [TarBuilder().file(f"l{i}", b"%d" % i).build() for i in range(48)]
    other = [TarBuilder().file(f"o{i}", b"%d" % i).build() for i in range(32)]
    images = {
        "full": write_oci_layout(workdir / "full", layers, compression="none").url(),
        "prefix": write_oci_layout(workdir / "prefix", layers[:24] + other[:8], compression="none").url(),
        "other": write_oci_layout(workdir / "other", other, compression="none").url(),
    }
    plan = ["full"] * 9 + ["prefix"] * 3 + ["other"] * 3
    budget = 90.0
    for round_ in range(10):
        start = time.monotonic()
        procs = [
            subprocess.Popen(
                [*GRAFTFS, "--store", str(gfs.store), "create", "--without-mount", images[name], f"r{round_}-{i}"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i, name in enumerate(plan)
        ]
        try:
            for proc in procs:
                out, err = proc.communicate(timeout=max(budget - (time.monotonic() - start), 1))
                assert proc.returncode == 0, (out, err)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        took = time.monotonic() - start
        assert took < budget, f"round {round_} took {took:.1f} s"
        for i in range(len(plan)):
            gfs.run("delete", f"r{round_}-{i}")
        gfs.run("clean")  # the next round is cold again
        assert os.listdir(gfs.store / "volumes") == []


def test_a_damaged_commit_record_keeps_clean_from_collecting_any_layer(gfs: Graftfs, image_url: str) -> None:
    """A power cut can leave an unsynced record empty. Nobody can tell which layers it protects, so clean
    collects none, says which record, and goes back to normal once that image is deleted."""
    gfs.create(image_url, "damaged")
    gfs.create(image_url, "unused")
    gfs.run("delete", "unused")
    (gfs.store / "meta" / "dependencies" / "image:damaged.json").write_bytes(b"")
    volumes = gfs.volumes()
    line = gfs.fails("clean")
    assert line == "clean: image:damaged.json: damaged, so no layer is collected until its image is deleted"
    assert gfs.volumes() == volumes
    gfs.run("delete", "damaged")
    gfs.run("clean")
    assert gfs.volumes() == set()

"""graftfs's snapshotter under the real containerd (Debian's 1.6): ``graftfs serve containerd-snapshotter`` as
the proxy plugin ``graftfs`` of a containerd started with a private config (tests/support/containerd.py),
driven with ``ctr``: image import and pull, ``ctr run`` (busybox and Debian), ``ctr snapshots
ls|info|usage|tree|diff``, parallel runs, containerd's garbage collection, and restarts of containerd and of
the snapshotter.

One snapshotter server and one containerd serve the module; each test works in a containerd namespace of its
own. The restart test starts its own pair."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import containerd as ctrd_support
from tests.support import debian, images
from tests.support import snapshots_wire as wire
from tests.support.containerd import Containerd
from tests.support.registry import start_registry

pytestmark = pytest.mark.skipif(
    not (os.path.exists(ctrd_support.CONTAINERD) and shutil.which("runc")), reason="needs containerd and runc"
)


def oci_archive(layout: Path, dest: Path) -> Path:
    """The OCI layout as the tar archive ``ctr images import`` takes."""
    with tarfile.open(dest, "w") as tf:
        for entry in sorted(layout.iterdir()):
            tf.add(entry, arcname=entry.name)
    return dest


@dataclasses.dataclass
class Env:
    """The module's snapshotter server and containerd, and a temp dir for what tests make."""

    dir: Path
    server: wire.Server
    containerd: Containerd

    @property
    def store(self) -> Path:
        return self.dir / "store"

    def client(self) -> wire.WireSnapshotter:
        return wire.WireSnapshotter(self.server.socket_path)

    def names(self) -> list[str]:
        """Every snapshot the server holds, by its name there (containerd's namespaced keys)."""
        client = self.client()
        try:
            return [info.name for info in client.walk()]
        finally:
            client.close()


def _start(work: Path, namespace: str, cri: bool = False) -> tuple[wire.Server, Containerd]:
    server = wire.start_server(str(work / "store"), str(work / "s.sock"), work / "server.log")
    try:
        containerd = ctrd_support.launch(work / "ctrd", server.socket_path, namespace, cri=cri)
    except BaseException:
        server.stop()
        raise
    return server, containerd


def _stop(server: wire.Server, containerd: Containerd) -> None:
    left = ctrd_support.teardown(containerd)
    status = server.stop()
    log = server.log_text()
    assert not left, f"left mounted: {left}"
    assert status == 0, f"the snapshotter exited {status}: {log}"
    assert '"level":"error"' not in log, f"the snapshotter logged errors: {log}"


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    if os.geteuid() != 0:
        pytest.skip("integration tests need root")
    work = Path(tempfile.mkdtemp(prefix="gfs-ctrd-"))  # short: unix socket paths have at most 107 bytes
    try:
        server, containerd = _start(work, "unused")
        try:
            yield Env(work, server, containerd)
        finally:
            _stop(server, containerd)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def ctr(env: Env, request: pytest.FixtureRequest) -> Containerd:
    """The module's containerd, in a namespace of this test's own."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:60]
    return dataclasses.replace(env.containerd, namespace=name)


@pytest.fixture(scope="module")
def busybox(env: Env) -> tuple[Path, images.OCIImageInfo]:
    """A one-layer busybox image as an OCI archive, and what went into it."""
    layout = env.dir / "busybox-layout"
    info = images.write_oci_layout(layout, [images.busybox_layer()], tag="latest")
    return oci_archive(layout, env.dir / "busybox.tar"), info


def _import(ctr: Containerd, archive: Path, name: str) -> str:
    ctr.ctr("images", "import", "--snapshotter", "graftfs", "--base-name", name, str(archive))
    return f"{name}:latest"


def _snapshots(ctr: Containerd) -> list[list[str]]:
    """``ctr snapshots ls``'s rows: key, parent, kind."""
    out = ctr.ctr("snapshots", "--snapshotter", "graftfs", "ls").stdout.splitlines()
    assert out and out[0].split()[:3] == ["KEY", "PARENT", "KIND"], out
    return [line.split() for line in out[1:] if line.strip()]


def test_import_run_and_inspect(env: Env, ctr: Containerd, busybox: tuple[Path, images.OCIImageInfo]) -> None:
    archive, info = busybox
    ref = _import(ctr, archive, "gfs.test/busybox")
    chain = info.chain_ids[-1]

    rows = _snapshots(ctr)
    assert rows == [[chain, "Committed"]], rows
    # The server holds it under the key containerd sent: namespaced, with the chain ID as the name.
    names = [n for n in env.names() if n.startswith(ctr.namespace + "/")]
    assert len(names) == 1 and names[0].endswith("/" + chain), env.names()

    details = json.loads(ctr.ctr("snapshots", "--snapshotter", "graftfs", "info", chain).stdout)
    assert (details["Name"], details["Kind"], details.get("Parent", "")) == (chain, "Committed", ""), details
    # A label containerd hands on to its snapshotter (its `containerd.io/snapshot/` ones) reaches the store
    # through Update, and is kept.
    label = "containerd.io/snapshot/gfs-test"
    ctr.ctr("snapshots", "--snapshotter", "graftfs", "label", chain, f"{label}=yes")
    details = json.loads(ctr.ctr("snapshots", "--snapshotter", "graftfs", "info", chain).stdout)
    assert details["Labels"][label] == "yes", details
    client = env.client()
    try:
        assert client.stat(names[0]).labels.get(label) == "yes"
    finally:
        client.close()
    usage = ctr.ctr("snapshots", "--snapshotter", "graftfs", "usage", "-b", chain).stdout.splitlines()
    assert usage[0].split() == ["KEY", "SIZE", "INODES"]
    size, inodes = (int(v) for v in usage[1].split()[1:3])
    busybox_size = images.BUSYBOX_PATH.stat().st_size
    assert size >= busybox_size and inodes >= len(images.BUSYBOX_APPLETS), usage

    out = ctr.ctr("run", "--rm", "--snapshotter", "graftfs", ref, "run-1", "/bin/busybox", "echo", "hello").stdout
    assert out == "hello\n"
    # ctr run --rm removed its container's snapshot; the layer stays.
    assert _snapshots(ctr) == [[chain, "Committed"]]

    # A container that writes: its active snapshot's usage, and the tree.
    ctr.ctr(
        "run",
        "--snapshotter",
        "graftfs",
        ref,
        "writer",
        "/bin/busybox",
        "sh",
        "-c",
        "/bin/busybox dd if=/dev/zero of=/data bs=1024 count=512 2>/dev/null",
    )
    try:
        rows = _snapshots(ctr)
        assert sorted(rows) == sorted([[chain, "Committed"], ["writer", chain, "Active"]]), rows
        usage = ctr.ctr("snapshots", "--snapshotter", "graftfs", "usage", "-b", "writer").stdout.splitlines()
        assert int(usage[1].split()[1]) >= 512 * 1024, usage
        tree = ctr.ctr("snapshots", "--snapshotter", "graftfs", "tree").stdout
        assert chain in tree and "writer" in tree, tree
    finally:
        ctr.ctr("containers", "rm", "writer")
    assert _snapshots(ctr) == [[chain, "Committed"]]


def test_pull_from_registry_and_run(env: Env, ctr: Containerd, busybox: tuple[Path, images.OCIImageInfo]) -> None:
    _, info = busybox
    with start_registry(env.dir / "registry") as registry:
        registry.push(info.path, "latest", "library/busybox")
        ref = f"{registry.host}/library/busybox:latest"
        ctr.ctr("images", "pull", "--plain-http", "--snapshotter", "graftfs", ref)
        assert registry.blob_requests() >= 2  # the config and the layer
    assert _snapshots(ctr) == [[info.chain_ids[-1], "Committed"]]
    out = ctr.ctr("run", "--rm", "--snapshotter", "graftfs", ref, "pulled", "/bin/busybox", "cat", "/etc/group").stdout
    assert out == images.GROUP


def test_diff_gives_whiteouts(ctr: Containerd, busybox: tuple[Path, images.OCIImageInfo]) -> None:
    archive, _ = busybox
    ref = _import(ctr, archive, "gfs.test/busybox")
    script = "rm /etc/group && rm -r /var/www && mkdir /new && echo new > /new/file && echo changed > /etc/passwd"
    ctr.ctr("run", "--snapshotter", "graftfs", ref, "changer", "/bin/busybox", "sh", "-c", script)
    try:
        media = "application/vnd.oci.image.layer.v1.tar"
        diff = ctr.ctr_bytes("snapshots", "--snapshotter", "graftfs", "diff", "--media-type", media, "changer")
    finally:
        ctr.ctr("containers", "rm", "changer")
    with tarfile.open(fileobj=io.BytesIO(diff)) as tf:
        members = {m.name.rstrip("/"): m for m in tf.getmembers()}
        new_file = tf.extractfile(members["new/file"])
        assert new_file is not None and new_file.read() == b"new\n"
        passwd = tf.extractfile(members["etc/passwd"])
        assert passwd is not None and passwd.read() == b"changed\n"
    assert "etc/.wh.group" in members, sorted(members)
    assert "var/.wh.www" in members, sorted(members)
    assert "bin/busybox" not in members, "an unchanged file is in the diff"
    assert not any(name.startswith("var/www/") for name in members), sorted(members)


def test_ten_parallel_runs(env: Env, ctr: Containerd, busybox: tuple[Path, images.OCIImageInfo]) -> None:
    archive, info = busybox
    ref = _import(ctr, archive, "gfs.test/busybox")

    def run(i: int) -> str:
        return ctr.ctr(
            "run", "--rm", "--snapshotter", "graftfs", ref, f"par-{i}", "/bin/busybox", "echo", f"hello {i}"
        ).stdout

    with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
        outs = list(pool.map(run, range(10)))
    assert outs == [f"hello {i}\n" for i in range(10)]
    assert _snapshots(ctr) == [[info.chain_ids[-1], "Committed"]]


def test_garbage_collection_removes_unreferenced_snapshots(
    env: Env, ctr: Containerd, busybox: tuple[Path, images.OCIImageInfo]
) -> None:
    archive, _ = busybox
    ref = _import(ctr, archive, "gfs.test/busybox")
    prefix = ctr.namespace + "/"
    assert [n for n in env.names() if n.startswith(prefix)], "the imported layer is not in the store"
    ctr.ctr("images", "rm", "--sync", ref)
    deadline = time.monotonic() + 30
    while [n for n in env.names() if n.startswith(prefix)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [n for n in env.names() if n.startswith(prefix)] == []
    assert _snapshots(ctr) == []


def test_128_layers(env: Env, ctr: Containerd) -> None:
    layout = env.dir / "layers-128"
    info = images.many_layers_image(layout, 128)
    ref = _import(ctr, oci_archive(layout, env.dir / "layers-128.tar"), "gfs.test/many")
    assert len(_snapshots(ctr)) == 128
    out = ctr.ctr(
        "run", "--rm", "--snapshotter", "graftfs", ref, "many", "/bin/busybox", "sh", "-c", "ls /layers | wc -l"
    ).stdout
    assert out.strip() == "127"
    assert [r[0] for r in _snapshots(ctr) if r[0] == info.chain_ids[-1]] == [info.chain_ids[-1]]


def _until_snapshotter_answers(containerd: Containerd, timeout: float = 30) -> None:
    """Wait until containerd reaches the snapshotter again (its gRPC client reconnects with a backoff):
    ``ctr snapshots usage`` asks the snapshotter itself, not containerd's records."""
    deadline = time.monotonic() + timeout
    while True:
        result = containerd.ctr("snapshots", "--snapshotter", "graftfs", "usage", check=False)
        if result.returncode == 0:
            return
        assert time.monotonic() < deadline, f"containerd did not reach the snapshotter again: {result.stderr}"
        time.sleep(0.2)


def test_restart_of_containerd_and_of_the_snapshotter_with_a_running_container(
    busybox: tuple[Path, images.OCIImageInfo],
) -> None:
    archive, info = busybox
    work = Path(tempfile.mkdtemp(prefix="gfs-ctrd-"))
    namespace = "restart"
    server, containerd = _start(work, namespace)
    try:
        ref = _import(containerd, archive, "gfs.test/busybox")
        containerd.ctr("run", "-d", "--snapshotter", "graftfs", ref, "long", "/bin/busybox", "sleep", "600")
        assert "RUNNING" in containerd.ctr("tasks", "ls").stdout

        # containerd goes and comes back; the shim (and the container) stay.
        containerd.stop()
        containerd = ctrd_support.launch(work / "ctrd", server.socket_path, namespace)
        assert "RUNNING" in containerd.ctr("tasks", "ls").stdout

        # The snapshotter goes and comes back on the same socket; containerd reconnects.
        assert server.stop() == 0
        server = wire.start_server(str(work / "store"), str(work / "s.sock"), work / "server.log")
        _until_snapshotter_answers(containerd)
        rows = sorted(_snapshots(containerd))
        assert rows == sorted([[info.chain_ids[-1], "Committed"], ["long", info.chain_ids[-1], "Active"]]), rows

        out = containerd.ctr(
            "run", "--rm", "--snapshotter", "graftfs", ref, "after", "/bin/busybox", "echo", "again"
        ).stdout
        assert out == "again\n"

        # Killed (its socket left behind), and started again on it: the stale socket is replaced.
        server.proc.kill()
        server.proc.wait()
        assert os.path.exists(server.socket_path)
        server = wire.start_server(str(work / "store"), str(work / "s.sock"), work / "server.log")
        _until_snapshotter_answers(containerd)
        args = ("run", "--rm", "--snapshotter", "graftfs", ref, "after-kill", "/bin/busybox", "echo", "still")
        assert containerd.ctr(*args).stdout == "still\n"
        containerd.ctr("tasks", "kill", "-s", "KILL", "long")
        deadline = time.monotonic() + 30
        while "STOPPED" not in containerd.ctr("tasks", "ls").stdout and time.monotonic() < deadline:
            time.sleep(0.1)
        containerd.ctr("tasks", "rm", "long")
        containerd.ctr("containers", "rm", "long")
        assert _snapshots(containerd) == [[info.chain_ids[-1], "Committed"]]
    finally:
        try:
            _stop(server, containerd)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def test_containerds_gc_removes_its_own_snapshots_only_in_a_store_shared_with_every_front_end(
    busybox: tuple[Path, images.OCIImageInfo],
) -> None:
    """One store, every front end: Garden's image (its pulled layer), the Python API's snapshots (the default
    namespace: one on Garden's layer, a committed one, a view), the graphdriver's layers (its ``Driver`` over
    the store, namespace ``docker``) and containerd's. containerd's garbage collector removes every snapshot
    its snapshotter lists that its records do not name: it is shown its own namespace only, so it removes its
    unreferenced snapshots and asks to remove nothing else (no refusal in its log), and the others survive."""
    from graftfs.log import LEVELS, Logger
    from graftfs.server.docker.driver import Driver
    from graftfs.store.snapshots import Snapshotter
    from tests.integration.conftest import Graftfs

    archive, info = busybox
    work = Path(tempfile.mkdtemp(prefix="gfs-ctrd-"))
    namespace = "shared"
    try:
        garden = Graftfs(work / "store")
        garden.run("init-store")
        garden.create(info.url(), "garden-1")
        volumes = garden.volumes()
        assert volumes
        layer = info.chain_ids[-1]
        python = Snapshotter(str(work / "store"))
        python.prepare("python/active", layer)  # on Garden's pulled layer
        python.prepare("python/base")
        python.commit("python/committed", "python/base")
        python.view("python/view", "python/committed")
        with open(work / "driver.log", "a") as log:
            driver = Driver(str(work / "store"), Logger(LEVELS["info"], log))
            driver.create("d1", "")
            driver.create("d2", "d1")  # d1 committed as d2's parent
        before = {i.name for i in python.walk()}
        assert before == {"python/active", "python/committed", "python/view", layer}
        server, containerd = _start(work, namespace)
        try:
            ref = _import(containerd, archive, "gfs.test/busybox")
            out = containerd.ctr("run", "--rm", "--snapshotter", "graftfs", ref, "c", "/bin/busybox", "echo", "hi")
            assert out.stdout == "hi\n"
            # An unreferenced snapshot of containerd's own (its records dropped at once, the snapshot at the
            # next collection), and the image's layer, unreferenced once the image is removed.
            snap = ("snapshots", "--snapshotter", "graftfs")
            # (kept from the collector, which the run's removal started, until removed: see the verbs' test)
            containerd.ctr(*snap, "label", layer, "containerd.io/gc.ref.snapshot.graftfs/scratch=scratch")
            containerd.ctr(*snap, "prepare", "scratch", layer)
            assert sorted(r[0] for r in _snapshots(containerd)) == sorted([layer, "scratch"])
            containerd.ctr(*snap, "rm", "scratch")
            containerd.ctr("images", "rm", "--sync", ref)
            client = wire.WireSnapshotter(server.socket_path)
            try:
                names = [i.name for i in client.walk()]
            finally:
                client.close()
            assert names == [], names
            assert _snapshots(containerd) == []
            # containerd never saw the others, so it asked to remove none of them.
            refused = [line for line in containerd.log_text().splitlines() if "failed to remove snapshot" in line]
            assert refused == [], refused
            assert {i.name for i in python.walk()} == before
            assert garden.volumes() == volumes
            assert (garden.rootfs("garden-1") / "bin" / "busybox").exists()
            assert driver.exists("d1") and driver.exists("d2")
            assert {i.name for i in driver.sn.walk()} == {"docker/layer/d1", "docker/rw/d2"}
        finally:
            _stop(server, containerd)
        for name in ("python/view", "python/committed", "python/active"):
            python.remove(name)
        driver.remove("d2")
        driver.remove("d1")
        garden.run("delete", "garden-1")
        garden.run("clean")
        assert garden.volumes() == set()
        assert os.listdir(work / "store" / "snapshots") == ["keys"]
    finally:
        # Garden's image is mounted: a failure above must not leave it behind.
        subprocess.run(["umount", str(work / "store" / "images" / "garden-1" / "rootfs")], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def test_ctr_snapshots_verbs(env: Env, ctr: Containerd, busybox: tuple[Path, images.OCIImageInfo]) -> None:
    """``ctr snapshots prepare|mounts|commit|view|rm``: Prepare, Mounts, Commit, View and Remove through
    containerd, each seen in the store under containerd's namespaced key."""
    archive, info = busybox
    ref = _import(ctr, archive, "gfs.test/busybox")
    chain = info.chain_ids[-1]
    snap = ("snapshots", "--snapshotter", "graftfs")
    # containerd's garbage collector takes a snapshot nothing refers to, at any moment after a deletion (the
    # commit's): the image's own snapshot, which it keeps, refers to these by name before they exist.
    refs = [f"containerd.io/gc.ref.snapshot.graftfs/{key}={key}" for key in ("work-1", "layer-2", "look")]
    ctr.ctr(*snap, "label", chain, *refs)
    ctr.ctr(*snap, "prepare", "work-1", chain)
    mount = ctr.ctr(*snap, "mounts", "/target", "work-1").stdout
    assert mount.startswith("mount -t overlay overlay /target -o "), mount
    assert str(env.store) in mount and "upperdir=" in mount, mount
    ctr.ctr(*snap, "commit", "layer-2", "work-1")
    ctr.ctr(*snap, "view", "look", "layer-2")
    # A collection now (a synchronous image removal, of a second tag, runs one) leaves them all.
    ctr.ctr("images", "tag", ref, "gfs.test/collect:first")
    ctr.ctr("images", "rm", "--sync", "gfs.test/collect:first")
    rows = sorted(_snapshots(ctr))
    assert rows == sorted([[chain, "Committed"], ["layer-2", chain, "Committed"], ["look", "layer-2", "View"]]), rows
    names = {n.rsplit("/", 1)[-1]: n for n in env.names() if n.startswith(ctr.namespace + "/")}
    assert set(names) == {chain, "layer-2", "look"}, names
    assert ctr.ctr(*snap, "rm", "layer-2", check=False).returncode != 0  # the view is on it
    ctr.ctr(*snap, "rm", "look")
    ctr.ctr(*snap, "rm", "layer-2")
    assert _snapshots(ctr) == [[chain, "Committed"]]
    # containerd removes a snapshot from its records at once, and from the snapshotter at its next garbage
    # collection: a synchronous image removal (of a second tag) runs one now.
    ctr.ctr("images", "tag", ref, "gfs.test/collect:now")
    ctr.ctr("images", "rm", "--sync", "gfs.test/collect:now")
    assert {n.rsplit("/", 1)[-1] for n in env.names() if n.startswith(ctr.namespace + "/")} == {chain}


@pytest.mark.skipif(bool(debian.available()), reason=debian.available() or "-")
def test_run_debian(env: Env, ctr: Containerd) -> None:
    """A real distribution's image (Debian bookworm, debootstrap minbase: tests/support/debian.py): imported,
    unpacked by containerd into graftfs's snapshot, and run with its own shell, dpkg and apt."""
    image = debian.write_debian_layout(env.dir / "debian-layout", tag="latest")
    ref = _import(ctr, oci_archive(image.path, env.dir / "debian.tar"), "gfs.test/debian")
    chain = image.diff_id  # a one-layer image's chain ID
    assert [row[0] for row in _snapshots(ctr)] == [chain]
    script = ". /etc/os-release && echo $PRETTY_NAME && dpkg-query -W -f '${Package}\\n' apt && apt-get --version"
    out = ctr.ctr("run", "--rm", "--snapshotter", "graftfs", ref, "debian-1", "bash", "-c", script).stdout.splitlines()
    assert out[:2] == ["Debian GNU/Linux 12 (bookworm)", "apt"], out
    assert out[2].startswith("apt 2.6"), out
    assert _snapshots(ctr) == [[chain, "Committed"]]

"""``graftfs serve docker-graphdriver`` under a real dockerd (Debian's ``docker.io``, 20.10): load, run, exec,
cp, diff, ps -s, commit, save (the layers byte for byte), rmi, push and pull through a local registry, a legacy
build, restarts of dockerd (stopped, killed, live-restored) and of the plugin with a running container,
parallel runs, and our errors as the docker CLI shows them. One dockerd for the module
(:mod:`tests.support.dockerd`: its own mount namespace)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support import dockerd as dk
from tests.support.images import TarBuilder, busybox_layer

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="dockerd runs as root"),
    pytest.mark.skipif(not os.path.exists(dk.DOCKERD), reason="Debian's docker.io is not installed"),
]

EXTRA = TarBuilder()
EXTRA.dir("data")
EXTRA.file("data/hello", b"hello from the second layer\n")
EXTRA.file("etc/motd", b"graftfs\n")


@pytest.fixture(scope="module")
def docker() -> Iterator[dk.Dockerd]:
    work = Path(tempfile.mkdtemp(prefix="gfs-dk-"))
    try:
        with dk.start_dockerd(work) as d:
            yield d
            assert "unexpected-error" not in d.plugin_log.read_text(errors="replace"), d.logs()
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def busybox(docker: dk.Dockerd) -> list[bytes]:
    """busybox:latest loaded (two layers: busybox, then a few files); its layer tars."""
    layers = [busybox_layer(), EXTRA.build()]
    out = docker.out("load", input=dk.docker_archive(layers, "busybox:latest"))
    assert "Loaded image: busybox:latest" in out
    return layers


def test_info_names_the_plugin(docker: dk.Dockerd) -> None:
    info = json.loads(docker.out("info", "--format", "{{json .}}"))
    assert info["Driver"] == "graftfs"
    status = dict(info["DriverStatus"])
    assert status["Store"] == str(docker.store)


def test_run(docker: dk.Dockerd, busybox: list[bytes]) -> None:
    assert docker.out("run", "--rm", "--network", "none", "busybox", "echo", "hi") == "hi\n"
    assert docker.out("run", "--rm", "busybox", "cat", "/data/hello") == "hello from the second layer\n"
    assert not os.listdir(docker.store / "graphdriver" / "refs"), "a finished container left a mount"


def test_diff_commit_and_run_the_new_image(docker: dk.Dockerd, busybox: list[bytes]) -> None:
    script = "echo new > /new && rm /etc/motd && mkdir -p /var/x && echo y > /var/x/y && echo more >> /data/hello"
    docker.docker("run", "--name", "changer", "busybox", "sh", "-c", script)
    changes = set(docker.out("diff", "changer").split("\n")) - {""}
    assert {"A /new", "D /etc/motd", "C /etc", "A /var/x", "A /var/x/y", "C /data/hello"} <= changes, changes
    docker.docker("commit", "changer", "committed:1")
    out = docker.out(
        "run", "--rm", "committed:1", "sh", "-c", "cat /new /var/x/y /data/hello; test -e /etc/motd || echo gone"
    )
    assert out == "new\ny\nhello from the second layer\nmore\ngone\n"
    docker.docker("rm", "changer")
    # the committed image's new layer is one layer more
    history = json.loads(docker.out("image", "inspect", "committed:1"))[0]["RootFS"]["Layers"]
    assert len(history) == 3


def test_save_gives_back_the_loaded_layers(docker: dk.Dockerd, busybox: list[bytes]) -> None:
    saved = dk.archive_layers(docker.docker("save", "busybox:latest").stdout)
    loaded = {"sha256:" + hashlib.sha256(layer).hexdigest(): layer for layer in busybox}
    assert saved.keys() == loaded.keys()
    for digest, data in loaded.items():
        assert saved[digest] == data


def test_exec_cp_and_ps_size(docker: dk.Dockerd, busybox: list[bytes], tmp_path: Path) -> None:
    docker.docker("run", "-d", "--name", "sleeper1", "busybox", "sleep", "1000")
    try:
        assert docker.out("exec", "sleeper1", "cat", "/etc/motd") == "graftfs\n"
        docker.docker("exec", "sleeper1", "sh", "-c", "head -c 100000 /dev/zero > /big")
        (tmp_path / "in.txt").write_text("copied in\n")
        docker.docker("cp", str(tmp_path / "in.txt"), "sleeper1:/in.txt")
        assert docker.out("exec", "sleeper1", "cat", "/in.txt") == "copied in\n"
        docker.docker("cp", "sleeper1:/data/hello", str(tmp_path / "out.txt"))
        assert (tmp_path / "out.txt").read_text() == "hello from the second layer\n"
        sizes = docker.out("ps", "-s", "--filter", "name=sleeper1", "--format", "{{.Size}}")
        assert sizes.startswith("100kB ("), sizes  # "100kB (virtual 2.08MB)": DiffSize, what the container wrote
        inspect = json.loads(docker.out("inspect", "sleeper1"))[0]
        assert inspect["GraphDriver"]["Name"] == "graftfs"
        assert inspect["GraphDriver"]["Data"]["UpperDir"].startswith(str(docker.store))
    finally:
        docker.docker("rm", "-f", "sleeper1")


def test_rmi_removes_the_layers(docker: dk.Dockerd, busybox: list[bytes]) -> None:
    before = _layers(docker)
    docker.docker("load", input=dk.docker_archive([busybox[0], b"\0" * 1024], "empty-top:1"))
    assert _layers(docker) == before + 1  # the busybox layer is shared; the empty one is new
    docker.docker("rmi", "empty-top:1")
    assert _layers(docker) == before


def test_a_plugin_error_reaches_the_cli(docker: dk.Dockerd, busybox: list[bytes]) -> None:
    result = docker.docker("run", "--rm", "--storage-opt", "size=1G", "busybox", "true", check=False)
    err = result.stderr.decode()
    assert result.returncode != 0
    assert "Error response from daemon:" in err
    assert "no quota backend that limits a layer" in err, err


def test_legacy_build(docker: dk.Dockerd, busybox: list[bytes], tmp_path: Path) -> None:
    (tmp_path / "added.txt").write_text("added by COPY\n")
    (tmp_path / "Dockerfile").write_text(
        "FROM busybox\n"
        "RUN echo built > /built && rm /etc/motd && rm -r /data\n"
        "COPY added.txt /added.txt\n"
        "RUN mkdir /data && echo again > /data/new\n"
    )
    docker.docker("build", "-t", "built:1", str(tmp_path), env={"DOCKER_BUILDKIT": "0"})
    out = docker.out(
        "run", "--rm", "built:1", "sh", "-c", "cat /built /added.txt; ls /data; test -e /etc/motd || echo gone"
    )
    assert out == "built\nadded by COPY\nnew\ngone\n"


def test_push_and_pull(docker: dk.Dockerd, busybox: list[bytes], tmp_path: Path) -> None:
    from tests.support.registry import start_registry

    with start_registry(tmp_path / "registry") as registry:
        ref = f"{registry.host}/gfs/busybox:1"
        docker.docker("tag", "busybox:latest", ref)
        docker.docker("push", ref)
        docker.docker("rmi", ref)
        docker.docker("rmi", "committed:1", check=False)  # frees nothing the pull needs, but may share layers
        docker.docker("pull", ref)
        assert docker.out("run", "--rm", ref, "cat", "/data/hello") == "hello from the second layer\n"
        docker.docker("rmi", ref)


def test_parallel_runs(docker: dk.Dockerd, busybox: list[bytes]) -> None:
    def run(i: int) -> str:
        return docker.out("run", "--rm", "busybox", "sh", "-c", f"echo {i} > /n && cat /n")

    with ThreadPoolExecutor(10) as pool:
        outs = list(pool.map(run, range(10)))
    assert outs == [f"{i}\n" for i in range(10)]
    assert not os.listdir(docker.store / "graphdriver" / "refs")


def test_plugin_restart_with_a_running_container(docker: dk.Dockerd, busybox: list[bytes]) -> None:
    docker.docker("run", "-d", "--name", "sleeper2", "busybox", "sh", "-c", "echo kept > /kept; sleep 1000")
    try:
        assert docker.stop_plugin(signal.SIGKILL) == -signal.SIGKILL
        docker.start_plugin()
        assert docker.out("exec", "sleeper2", "cat", "/kept") == "kept\n"
        assert "A /kept" in docker.out("diff", "sleeper2")
        docker.docker("stop", "-t", "1", "sleeper2")  # Put, with the count the killed plugin left on disk
        assert docker.out("start", "sleeper2") == "sleeper2\n"
        assert docker.out("exec", "sleeper2", "cat", "/kept") == "kept\n"
    finally:
        docker.docker("rm", "-f", "sleeper2")
    assert not os.listdir(docker.store / "graphdriver" / "refs")


def test_dockerd_restart_with_a_running_container(docker: dk.Dockerd, busybox: list[bytes]) -> None:
    docker.docker("run", "-d", "--name", "sleeper3", "busybox", "sh", "-c", "echo kept > /kept; sleep 1000")
    try:
        docker.stop_dockerd()  # stops its containers: Put, then Cleanup
        assert not os.listdir(docker.store / "graphdriver" / "refs")
        docker.start_dockerd()
        docker.docker("start", "sleeper3")
        assert docker.out("exec", "sleeper3", "cat", "/kept") == "kept\n"
    finally:
        docker.docker("rm", "-f", "sleeper3")


def test_dockerd_killed_with_a_running_container(docker: dk.Dockerd, busybox: list[bytes]) -> None:
    """dockerd SIGKILLed under a running container (no Put, no Cleanup: the plugin keeps the layer mounted and
    counted); the dockerd started again stops the container it finds (no --live-restore: its one Put
    unmounts), and the container starts again with what it wrote."""
    docker.docker("run", "-d", "--name", "sleeper4", "busybox", "sh", "-c", "echo kept > /kept; sleep 1000")
    try:
        refs = docker.store / "graphdriver" / "refs"
        assert len(os.listdir(refs)) == 1
        docker.kill_dockerd()
        assert len(os.listdir(refs)) == 1  # still mounted, still counted
        docker.start_dockerd()
        assert docker.out("inspect", "--format", "{{.State.Running}}", "sleeper4") == "false\n"
        assert not os.listdir(refs)
        docker.docker("start", "sleeper4")
        assert docker.out("exec", "sleeper4", "cat", "/kept") == "kept\n"
    finally:
        docker.docker("rm", "-f", "sleeper4")
    assert not os.listdir(docker.store / "graphdriver" / "refs")


def _layers(docker: dk.Dockerd) -> int:
    status = dict(json.loads(docker.out("info", "--format", "{{json .DriverStatus}}")))
    return int(status["Layers"])


def test_userns_remap(tmp_path: Path) -> None:
    """A dockerd of its own with ``--userns-remap``: the layers are unpacked with the IDs shifted (Init's
    UIDMaps), containers run on them, and ``docker save`` shifts them back."""
    work = Path(tempfile.mkdtemp(prefix="gfs-dk-"))
    os.chmod(work, 0o711)  # the remapped root walks to the layers' mount points
    try:
        subids = "nobody:200000:65536\nnogroup:200000:65536\n"
        with dk.start_dockerd(work, ["--userns-remap=nobody:nogroup"], subids=subids) as d:
            layers = [busybox_layer(), EXTRA.build()]
            d.docker("load", input=dk.docker_archive(layers, "busybox:latest"))
            assert d.out("run", "--rm", "busybox", "sh", "-c", "id -u; echo x > /y; cat /y /etc/motd") == (
                "0\nx\ngraftfs\n"
            )
            on_disk = [p for p in (d.store / "snapshots").glob("*/fs/etc/motd")]
            assert on_disk and all(p.stat().st_uid == 200000 for p in on_disk)
            saved = dk.archive_layers(d.docker("save", "busybox:latest").stdout)
            assert sorted(saved.values()) == sorted(layers)
            d.docker("run", "--name", "remapped", "busybox", "sh", "-c", "echo z > /z")
            d.docker("commit", "remapped", "remapped:1")
            assert d.out("run", "--rm", "remapped:1", "stat", "-c", "%u %n", "/z") == "0 /z\n"
            d.docker("rm", "remapped")
            assert "unexpected-error" not in d.plugin_log.read_text(errors="replace")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_live_restore_keeps_a_container_across_a_dockerd_restart() -> None:
    """With ``--live-restore`` dockerd leaves its containers running when it stops (no Put, no Cleanup); the
    dockerd started again finds their layers mounted, and the container's stop is the one Put that unmounts."""
    work = Path(tempfile.mkdtemp(prefix="gfs-dk-"))
    try:
        with dk.start_dockerd(work, ["--live-restore"]) as d:
            d.docker("load", input=dk.docker_archive([busybox_layer()], "busybox:latest"))
            d.docker("run", "-d", "--name", "kept", "busybox", "sh", "-c", "echo kept > /kept; sleep 1000")
            refs = d.store / "graphdriver" / "refs"
            assert len(os.listdir(refs)) == 1
            d.stop_dockerd()
            assert len(os.listdir(refs)) == 1  # still mounted, still counted
            d.start_dockerd()
            assert d.out("inspect", "--format", "{{.State.Running}}", "kept") == "true\n"
            assert d.out("exec", "kept", "cat", "/kept") == "kept\n"
            d.docker("rm", "-f", "kept")
            assert not os.listdir(refs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_managed_plugin(tmp_path: Path) -> None:
    """The v2 plugin that ``scripts/docker-plugin`` builds: ``docker plugin create`` and ``enable`` on a dockerd
    with overlay2, then that dockerd started again with the plugin as its storage driver runs a container on
    layers in the plugin's propagated mount."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "scripts" / "docker-plugin"
    subprocess.run([sys.executable, str(script), str(tmp_path / "plugin")], check=True, capture_output=True)
    config = json.loads((tmp_path / "plugin" / "config.json").read_text())
    assert config["Interface"]["Types"] == ["docker.graphdriver/1.0"] and config["PropagatedMount"]
    work = Path(tempfile.mkdtemp(prefix="gfs-dk-"))
    try:
        with dk.start_dockerd(work, driver="overlay2") as d:
            d.docker("plugin", "create", "graftfs-managed", str(tmp_path / "plugin"))
            d.docker("plugin", "enable", "graftfs-managed")
            d.stop_dockerd()
            d.driver = "graftfs-managed"
            d.start_dockerd()
            status = dict(json.loads(d.out("info", "--format", "{{json .DriverStatus}}")))
            assert status["Store"] == "/var/lib/graftfs"
            d.docker("load", input=dk.docker_archive([busybox_layer(), EXTRA.build()], "busybox:latest"))
            assert d.out("run", "--rm", "busybox", "cat", "/data/hello") == "hello from the second layer\n"
            propagated = list((work / "data" / "plugins").glob("*/propagated-mount/snapshots"))
            assert propagated, "the store is not in the plugin's propagated mount"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_storage_opt_size_is_enforced_on_a_btrfs_store() -> None:
    """A store on btrfs (its quota backend: qgroups): ``--storage-opt size=`` makes the container's layer a
    subvolume with that limit, and a write past it fails in the container."""
    import subprocess

    from tests.support.loopfs import loop_filesystem

    if not shutil.which("mkfs.btrfs"):
        pytest.skip("needs btrfs-progs")
    base = Path(tempfile.mkdtemp(prefix="gfs-bt-"))
    try:
        with loop_filesystem(base, "b", 1024 << 20, ["mkfs.btrfs", "-q"]) as mnt:
            work = mnt / "dk"
            work.mkdir()
            subprocess.run([*dk.GRAFTFS, "--store", str(work / "store"), "init-store"], check=True)
            with dk.start_dockerd(work) as d:
                assert dict(json.loads(d.out("info", "--format", "{{json .DriverStatus}}")))["Quota"] == "btrfs"
                d.docker("load", input=dk.docker_archive([busybox_layer()], "busybox:latest"))
                small = "head -c 5000000 /dev/zero > /f && sync && echo fits"
                assert d.out("run", "--rm", "--storage-opt", "size=20M", "busybox", "sh", "-c", small) == "fits\n"
                big = "head -c 40000000 /dev/zero > /f && sync && echo fits"
                result = d.docker("run", "--rm", "--storage-opt", "size=20M", "busybox", "sh", "-c", big, check=False)
                # EDQUOT, or EIO where busybox's head meets it at writeback
                assert result.returncode != 0 and (b"quota" in result.stderr or b"I/O error" in result.stderr), result
                assert d.out("run", "--rm", "busybox", "sh", "-c", big) == "fits\n"  # no limit without the option
    finally:
        shutil.rmtree(base, ignore_errors=True)

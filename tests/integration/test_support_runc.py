"""Self-tests for tests/support/runc.py and, through umoci/skopeo, for the OCI
layouts tests/support/images.py writes. Needs root, runc and the real kernel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import images
from tests.support.images import TarBuilder, busybox_layer, naive_extract, write_oci_layout
from tests.support.runc import run_in_rootfs, runc_binary, traversable_tmpdir

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(runc_binary() is None, reason="runc not installed"),
]

CGROUP_PIDS = Path("/sys/fs/cgroup/pids")


def leftovers() -> set[str]:
    """Traces a run could leave behind: runc work dirs, cgroups, mounts."""
    found = {f"tmp:{p.name}" for p in Path("/tmp").glob("graftfs-runc-*")}
    if CGROUP_PIDS.is_dir():
        found |= {f"cgroup:{p.name}" for p in CGROUP_PIDS.glob("graftfs-test-*")}
    with open("/proc/self/mountinfo") as fh:
        found |= {f"mount:{line.split()[4]}" for line in fh if "graftfs-runc-" in line}
    return found


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    before = leftovers()
    yield
    assert leftovers() - before == set()


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return naive_extract(busybox_layer(), tmp_path_factory.mktemp("busybox") / "rootfs")


def test_hello(rootfs: Path) -> None:
    result = run_in_rootfs(rootfs, ["/bin/sh", "-c", "echo hello; id; ls /"])
    lines = result.stdout.splitlines()
    assert lines[0] == "hello"
    assert lines[1] == "uid=0(root) gid=0(root)"
    listing = set(lines[2:])
    assert {"bin", "dev", "etc", "proc", "root", "sys", "tmp"} <= listing
    assert result.returncode == 0


def test_environment_and_namespaces(rootfs: Path) -> None:
    script = "echo $FOO; echo $$; hostname; ls /dev/null /dev/pts/ptmx; cat /proc/1/cmdline; echo; pwd"
    result = run_in_rootfs(rootfs, ["/bin/sh", "-c", script], env=["FOO=bar", "PATH=/bin"], cwd="/tmp")
    foo, pid, hostname, null, ptmx, cmdline, cwd = result.stdout.splitlines()
    assert foo == "bar"
    assert pid == "1", "own pid namespace"
    assert hostname == "graftfs-test"
    assert (null, ptmx) == ("/dev/null", "/dev/pts/ptmx")
    assert cmdline.startswith("/bin/sh")
    assert cwd == "/tmp"


def test_exit_status_and_check(rootfs: Path) -> None:
    result = run_in_rootfs(rootfs, ["/bin/sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    with pytest.raises(AssertionError, match=r"exited 3(.|\n)*err"):
        run_in_rootfs(rootfs, ["/bin/sh", "-c", "echo err >&2; exit 3"])
    with pytest.raises(AssertionError, match="no such file"):
        run_in_rootfs(rootfs, ["/nonexistent"])


def test_readonly_root_and_user(rootfs: Path) -> None:
    result = run_in_rootfs(rootfs, ["/bin/touch", "/ro"], readonly=True, check=False)
    assert result.returncode != 0 and "Read-only file system" in result.stderr
    assert not (rootfs / "ro").exists()
    result = run_in_rootfs(rootfs, ["/bin/sh", "-c", "id; touch /etc/x"], user=(33, 33), check=False)
    assert result.stdout.splitlines()[0] == "uid=33(www-data) gid=33(www-data)"
    assert result.returncode != 0 and "Permission denied" in result.stderr


def test_user_namespace() -> None:
    shift = 100_000
    with traversable_tmpdir() as base:
        root = naive_extract(busybox_layer(), base / "rootfs", id_shift=shift)
        result = run_in_rootfs(
            root,
            ["/bin/sh", "-c", "id; cat /proc/self/uid_map; stat -c %u /etc/passwd; touch /tmp/made"],
            uid_mappings=[(0, shift, 65536)],
            gid_mappings=[(0, shift, 65536)],
        )
        ident, uid_map, owner = result.stdout.splitlines()
        assert ident == "uid=0(root) gid=0(root)"
        assert uid_map.split() == ["0", str(shift), "65536"]
        assert owner == "0"
        made = (root / "tmp/made").stat()
        assert (made.st_uid, made.st_gid) == (shift, shift)


def test_timeout_kills_the_container(rootfs: Path) -> None:
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        run_in_rootfs(rootfs, ["/bin/sh", "-c", "echo started; exec sleep 300"], timeout=2)
    assert time.monotonic() - start < 30

    def sleeping() -> list[str]:
        found = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    if (proc / "cmdline").read_bytes() == b"sleep\x00300\x00":
                        found.append(proc.name)
                except OSError:
                    continue
        return found

    # No process of ours may still be sleeping in a container. A SIGKILLed process is not gone the moment
    # runc returns (one CI run saw it still there, on a busy machine): it has a few seconds to finish dying.
    deadline = time.monotonic() + 10
    while sleeping() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sleeping() == []


def test_extra_mounts(rootfs: Path, tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared/hello").write_text("from host\n")
    mount = {"destination": "/mnt", "type": "bind", "source": str(tmp_path / "shared"), "options": ["rbind"]}
    result = run_in_rootfs(rootfs, ["/bin/cat", "/mnt/hello"], extra_mounts=[mount])
    assert result.stdout == "from host\n"


# -- the OCI layouts, checked by independent tools ---------------------------------


@pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci not installed")
@pytest.mark.parametrize("compression", ["gzip", "none"])  # umoci 0.4 cannot read zstd layers
def test_umoci_unpacks_layout_and_runc_runs_it(tmp_path: Path, compression: str) -> None:
    layers = [
        busybox_layer(),
        TarBuilder().dir("data").file("data/a", b"a\n").file("data/b", b"b\n").build(),
        TarBuilder().whiteout("data/b").file("data/c", b"c\n", uid=33, gid=33).build(),
    ]
    info = write_oci_layout(tmp_path / "layout", layers, compression=compression, env=["GREETING=hi"])
    bundle = tmp_path / "bundle"
    proc = subprocess.run(
        ["umoci", "unpack", "--image", f"{info.path}:{info.tag}", str(bundle)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    config = json.loads((bundle / "config.json").read_text())
    assert "GREETING=hi" in config["process"]["env"]
    result = run_in_rootfs(bundle / "rootfs", ["/bin/sh", "-c", "ls /data; stat -c %u:%g /data/c"])
    assert result.stdout.split() == ["a", "c", "33:33"]


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")
@pytest.mark.parametrize(
    ("platforms", "nested"),
    [
        (None, True),
        ([("linux", "arm64", "v8"), ("linux", images.host_arch(), None)], True),
        ([("linux", "arm64", "v8"), ("linux", images.host_arch(), None)], False),
    ],
)
def test_skopeo_accepts_layout(
    tmp_path: Path, platforms: list[tuple[str, str, str | None]] | None, nested: bool
) -> None:
    # skopeo verifies every blob against its digest while copying, covers
    # zstd and image indexes, and picks the manifest for the host platform.
    info = write_oci_layout(
        tmp_path / "layout",
        [busybox_layer(), images.tiny_layer(1)],
        compression=["zstd", "gzip"],
        platforms=platforms,
        nested_index=nested,
    )
    out = tmp_path / "copy"
    cmd = ["skopeo", "copy", f"oci:{info.path}:latest", f"dir:{out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    chosen = [d["digest"] for d in json.loads((out / "manifest.json").read_text())["layers"]]
    if nested:
        assert chosen == info.layer_digests, "the host platform's manifest"
    else:
        # With several index.json entries carrying the same tag, skopeo 1.9
        # takes the first one and ignores the platform; graftfs must do
        # better, but here only the layout's validity is being checked.
        assert chosen in [m.layer_digests for m in info.manifests]
        return
    images.corrupt_blob(info, 0)
    shutil.rmtree(out)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode != 0, "a corrupted blob must be rejected"

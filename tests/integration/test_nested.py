"""graftfs inside a container: a runc container whose root is an overlay (a graftfs image), with no loop
devices and no XFS, in a user namespace, as a Concourse worker in a pod or BOSH-lite in Docker would be.

Inside, graftfs keeps its store on the container's own root. The kernel will not stack overlayfs on it,
so init-store settles on fuse-overlayfs (``/dev/fuse`` is given to the container, nothing else), and a
nested runc (rootless there, since it runs in a user namespace) runs a container on the image.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Graftfs, mounts_under
from tests.support.images import TarBuilder, busybox_layer, write_oci_layout
from tests.support.runc import make_config, run_in_rootfs, runc_binary, traversable_tmpdir
from tests.support.users import graftfs_with_system_python

pytestmark = pytest.mark.skipif(
    not (shutil.which("fuse-overlayfs") and runc_binary() and os.path.exists("/dev/fuse")),
    reason="needs fuse-overlayfs, /dev/fuse and runc",
)

SHIFT = 200_000  # the outer container's user namespace: its root is host 200000
OUTER = [(0, SHIFT, 65536)]
SRC = str(Path(__file__).resolve().parents[2] / "src")


def _ro(path: str, destination: str | None = None) -> dict[str, object]:
    return {"destination": destination or path, "type": "bind", "source": path, "options": ["rbind", "ro"]}


@pytest.fixture
def outer() -> Iterator[tuple[Graftfs, Path]]:
    """A host store whose images belong to the outer container's root, and a world-readable work dir."""
    with traversable_tmpdir("graftfs-nested-") as base:
        g = Graftfs(base / "host-store")
        g.run("init-store", "--uid-mapping", f"0:{SHIFT}:65536", "--gid-mapping", f"0:{SHIFT}:65536")
        try:
            yield g, base
        finally:
            for image_id in os.listdir(g.store / "images"):
                g.run("delete", image_id, check=False)
            left = mounts_under(base)
            assert not left, left


def test_graftfs_in_a_container_whose_root_is_an_overlay(outer: tuple[Graftfs, Path]) -> None:
    host, base = outer
    # The outer container: busybox, as a graftfs image (so its root is an overlay).
    info = write_oci_layout(base / "outer-img", [busybox_layer(), TarBuilder().dir("store").dir("run").build()])
    host.create(info.url(), "outer")
    # The image the nested graftfs will use, with a whiteout to exercise fuse-overlayfs's .wh. files.
    inner_top = TarBuilder().whiteout("etc/group").file("etc/motd", b"nested\n")
    inner = write_oci_layout(base / "inner-img", [busybox_layer(), inner_top.build()])
    os.system(f"chmod -R a+rX {base / 'inner-img'}")

    inner_config = make_config(
        Path("/store/s/images/nested/rootfs"),
        ["/bin/sh", "-c", "cat /etc/motd; ls /etc"],
        uid_mappings=[(0, 0, 65536)],
        gid_mappings=[(0, 0, 65536)],
    )
    bundle = base / "inner-bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(inner_config))
    fuse = base / "fuse"
    os.mknod(fuse, 0o666 | stat.S_IFCHR, os.makedev(10, 229))
    fuse.chmod(0o666)
    purelib = sysconfig.get_paths()["purelib"]
    graftfs = shlex.join([*graftfs_with_system_python(), "--store", "/store/s"])
    script = f"""
set -e
test ! -e /dev/loop0 && test ! -e /dev/loop-control && echo no-loop-devices
grep ' / / ' /proc/self/mountinfo | grep -q ' - overlay ' && echo root-is-overlay
{graftfs} init-store
{graftfs} features
{graftfs} create oci://{inner.path}:latest nested > /tmp/spec || {{ cat /tmp/spec; exit 1; }}
echo ---
rc=0
/usr/sbin/runc --root /run/runc run --bundle /inner-bundle nested || rc=$?
echo ---
{graftfs} stats nested
{graftfs} delete nested
{graftfs} clean
exit $rc
"""
    mounts: list[dict[str, object]] = [
        _ro("/usr"),
        _ro("/usr/lib", "/lib"),
        _ro("/usr/lib64", "/lib64"),
        _ro(SRC),
        _ro(purelib),
        _ro(str(inner.path)),
        _ro(str(bundle), "/inner-bundle"),
        # A /dev/fuse of the test's own, usable by the container's root (the host's may be 0600 root's).
        {"destination": "/dev/fuse", "type": "bind", "source": str(fuse), "options": ["bind"]},
    ]
    result = run_in_rootfs(
        host.rootfs("outer"),
        ["/bin/sh", "-c", script],
        uid_mappings=OUTER,
        gid_mappings=OUTER,
        extra_mounts=mounts,
        allow_devices=[(10, 229)],
        # Mounting (fuse-overlayfs, the nested runc's /proc) needs CAP_SYS_ADMIN in the container's user
        # namespace, as a Concourse worker's or a CI runner's container has; no privileges on the host.
        extra_capabilities=["CAP_SYS_ADMIN"],
        env=["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
        check=False,
        timeout=180,
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    setup, container, after = result.stdout.split("---\n")
    assert setup.startswith("no-loop-devices\nroot-is-overlay\n"), setup
    assert "overlay          fuse-overlayfs, mounted by graftfs" in setup, setup
    assert "file owners      kept as the layers say" in setup, setup
    lines = container.splitlines()
    assert lines[0] == "nested" and "group" not in lines and "passwd" in lines, container
    assert json.loads(after.splitlines()[0])["disk_usage"]["total_bytes_used"] > 0
    assert after.splitlines()[1:] == ["Image nested deleted", "clean completed"], after

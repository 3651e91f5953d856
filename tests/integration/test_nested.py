"""graftfs inside a container: a runc container whose root is an overlay (a graftfs image), with no loop
devices and no XFS, in a user namespace, as a Concourse worker in a pod or BOSH-lite in Docker would be.

Inside, graftfs keeps its store on the container's own root. The kernel will not stack overlayfs on it,
so init-store settles on fuse-overlayfs (``/dev/fuse`` is given to the container, nothing else), and a
nested runc (rootless there, since it runs in a user namespace) runs a container on the image.

Such containers are often given less: no ``/dev/fuse``, no CAP_SETFCAP. graftfs then says, in one line,
what it cannot do and which device or capability is missing, and advises only what works there.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sysconfig
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.integration.conftest import Graftfs, mounts_under
from tests.support.images import OCIImageInfo, TarBuilder, busybox_layer, write_oci_layout
from tests.support.runc import make_config, run_in_rootfs, runc_binary, traversable_tmpdir
from tests.support.users import graftfs_with_system_python

pytestmark = pytest.mark.skipif(
    not (shutil.which("fuse-overlayfs") and runc_binary() and os.path.exists("/dev/fuse")),
    reason="needs fuse-overlayfs, /dev/fuse and runc",
)

SHIFT = 200_000  # the outer container's user namespace: its root is host 200000
OUTER = [(0, SHIFT, 65536)]
SRC = str(Path(__file__).resolve().parents[2] / "src")


# A file capability (VFS_CAP_REVISION_2, cap_net_raw permitted and effective), as ping has on Debian.
CAP_NET_RAW = bytes.fromhex("0100000200200000000000000000000000000000")
# The store of the graftfs inside, on the outer container's own root (an overlay).
INNER_STORE = "/store/s"


def _ro(path: str, destination: str | None = None) -> dict[str, object]:
    return {"destination": destination or path, "type": "bind", "source": path, "options": ["rbind", "ro"]}


def _inner_image(base: Path, layers: list[bytes]) -> OCIImageInfo:
    """The image the nested graftfs uses, readable by the container's (mapped) root."""
    info = write_oci_layout(base / "inner-img", layers)
    subprocess.run(["chmod", "-R", "a+rX", str(info.path)], check=True)
    return info


def _graftfs() -> str:
    """The command line of graftfs inside the outer container, for its shell scripts."""
    return shlex.join([*graftfs_with_system_python(), "--store", INNER_STORE])


def _run_outer(
    host: Graftfs,
    base: Path,
    script: str,
    *,
    binds: Sequence[Path] = (),
    fuse: str = "usable",
    drop_capabilities: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` as root of the outer container: busybox as a graftfs image of ``host`` (its root is an
    overlay), in a user namespace, with this checkout's graftfs, ``binds`` read-only at their own paths,
    ``/dev/fuse`` (``fuse``: ``usable``, ``missing``, or ``denied``: there, but not allowed by the device
    cgroup), and Docker's capabilities plus CAP_SYS_ADMIN less ``drop_capabilities``."""
    info = write_oci_layout(base / "outer-img", [busybox_layer(), TarBuilder().dir("store").dir("run").build()])
    host.create(info.url(), "outer")
    mounts: list[Mapping[str, object]] = [
        _ro("/usr"),
        _ro("/usr/lib", "/lib"),
        _ro("/usr/lib64", "/lib64"),
        _ro(SRC),
        _ro(sysconfig.get_paths()["purelib"]),
        *(_ro(str(path)) for path in binds),
    ]
    devices: list[tuple[int, int]] = []
    if fuse != "missing":
        # A /dev/fuse of the test's own, usable by the container's root (the host's may be 0600 root's).
        node = base / "fuse"
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(10, 229))
        node.chmod(0o666)
        mounts.append({"destination": "/dev/fuse", "type": "bind", "source": str(node), "options": ["bind"]})
        devices += [(10, 229)] if fuse == "usable" else []
    return run_in_rootfs(
        host.rootfs("outer"),
        ["/bin/sh", "-c", script],
        uid_mappings=OUTER,
        gid_mappings=OUTER,
        extra_mounts=mounts,
        allow_devices=devices,
        # Mounting (fuse-overlayfs, the nested runc's /proc) needs CAP_SYS_ADMIN in the container's user
        # namespace, as a Concourse worker's or a CI runner's container has; no privileges on the host.
        extra_capabilities=["CAP_SYS_ADMIN"],
        drop_capabilities=drop_capabilities,
        env=["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
        check=False,
        timeout=180,
    )


def _refusal(out: str) -> str:
    """The one line graftfs printed on failing (the script echoes ``exit=N`` after it)."""
    line, _, status = out.partition("\n")
    assert status == "exit=1\n", out
    return line


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
    # The image the nested graftfs will use, with a whiteout to exercise fuse-overlayfs's .wh. files.
    inner_top = TarBuilder().whiteout("etc/group").file("etc/motd", b"nested\n")
    inner = _inner_image(base, [busybox_layer(), inner_top.build()])

    inner_config = make_config(
        Path(f"{INNER_STORE}/images/nested/rootfs"),
        ["/bin/sh", "-c", "cat /etc/motd; ls /etc"],
        uid_mappings=[(0, 0, 65536)],
        gid_mappings=[(0, 0, 65536)],
    )
    bundle = base / "inner-bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(inner_config))
    graftfs = _graftfs()
    script = f"""
set -e
test ! -e /dev/loop0 && test ! -e /dev/loop-control && echo no-loop-devices
grep ' / / ' /proc/self/mountinfo | grep -q ' - overlay ' && echo root-is-overlay
{graftfs} init-store
{graftfs} features
{graftfs} create oci://{inner.path}:latest nested > /tmp/spec || {{ cat /tmp/spec; exit 1; }}
echo ---
rc=0
/usr/sbin/runc --root /run/runc run --bundle {bundle} nested || rc=$?
echo ---
{graftfs} stats nested
{graftfs} delete nested
{graftfs} clean
exit $rc
"""
    result = _run_outer(host, base, script, binds=[inner.path, bundle])
    assert result.returncode == 0, (result.stdout, result.stderr)
    setup, container, after = result.stdout.split("---\n")
    assert setup.startswith("no-loop-devices\nroot-is-overlay\n"), setup
    assert "overlay          fuse-overlayfs, mounted by graftfs" in setup, setup
    assert "file owners      kept as the layers say" in setup, setup
    assert "capabilities     all that graftfs uses" in setup, setup
    lines = container.splitlines()
    assert lines[0] == "nested" and "group" not in lines and "passwd" in lines, container
    assert json.loads(after.splitlines()[0])["disk_usage"]["total_bytes_used"] > 0
    assert after.splitlines()[1:] == ["Image nested deleted", "clean completed"], after


def test_without_cap_setfcap_a_file_capability_is_refused_by_name(outer: tuple[Graftfs, Path]) -> None:
    """The container has /dev/fuse and CAP_SYS_ADMIN but not CAP_SETFCAP: an image with a file capability
    cannot be unpacked, and the refusal names the file, the xattr and the capability."""
    host, base = outer
    ping = (
        TarBuilder()
        .dir("usr/bin")
        .file("usr/bin/ping", b"#!/bin/sh\n", mode=0o755, xattrs={"security.capability": CAP_NET_RAW})
    )
    inner = _inner_image(base, [busybox_layer(), ping.build()])
    graftfs = _graftfs()
    script = f"""
set -e
{graftfs} init-store
{graftfs} features
echo ---
rc=0
{graftfs} create oci://{inner.path}:latest ping || rc=$?
echo exit=$rc
"""
    result = _run_outer(host, base, script, binds=[inner.path], drop_capabilities=["CAP_SETFCAP"])
    assert result.returncode == 0, (result.stdout, result.stderr)
    report, _, out = result.stdout.partition("---\n")
    assert "overlay          fuse-overlayfs, mounted by graftfs" in report, report
    assert "capabilities     missing CAP_SETFCAP: file capabilities (security.capability xattrs) cannot" in report
    line = _refusal(out)
    assert line.startswith("pulling the image: unpacking layer `sha256:"), line
    # The entry, the operation and the missing capability (the unpack error's own text, issue 10).
    assert "`usr/bin/ping`" in line and "security.capability" in line and "CAP_SETFCAP" in line, line


@pytest.mark.parametrize(
    ("fuse", "seen", "problem", "fix"),
    [
        ("missing", "test ! -e /dev/fuse", "/dev/fuse is missing", "give the container /dev/fuse"),
        # A node bound in, as a pod spec may, while the device cgroup does not allow it: open() is refused.
        ("denied", "test -c /dev/fuse", "/dev/fuse cannot be opened", "let the container open /dev/fuse"),
    ],
)
def test_without_dev_fuse_the_refusal_names_it_and_advises_what_works(
    outer: tuple[Graftfs, Path], fuse: str, seen: str, problem: str, fix: str
) -> None:
    """No usable /dev/fuse, and the store on the container's overlay root: neither graftfs nor a runtime can
    mount an image there. The refusal names /dev/fuse and does not advise --without-mount, whose mount the
    kernel would refuse too; --without-mount itself is refused the same way."""
    host, base = outer
    inner = _inner_image(base, [busybox_layer()])
    graftfs = _graftfs()
    script = f"""
set -e
{seen} && echo fuse-{fuse}
{graftfs} init-store
{graftfs} features
echo ---
rc=0
{graftfs} create oci://{inner.path}:latest x || rc=$?
echo exit=$rc
echo ---
rc=0
{graftfs} create --without-mount oci://{inner.path}:latest x || rc=$?
echo exit=$rc
"""
    result = _run_outer(host, base, script, binds=[inner.path], fuse=fuse)
    assert result.returncode == 0, (result.stdout, result.stderr)
    report, mounted, unmounted = result.stdout.split("---\n")
    assert report.startswith(f"fuse-{fuse}\n"), report
    overlay = next(line for line in report.splitlines() if line.startswith("overlay "))
    assert problem in overlay and fix in overlay and "--without-mount" not in overlay, overlay
    for line in (_refusal(mounted), _refusal(unmounted)):
        assert line.startswith(f"this caller cannot mount overlayfs on {INNER_STORE} (overlay, kernel "), line
        assert problem in line and fix in line, line
        assert "--without-mount" not in line, line


def test_without_cap_chown_features_name_it_and_files_keep_one_owner(outer: tuple[Graftfs, Path]) -> None:
    """Without CAP_CHOWN (every ID mapped, so not "only one ID is mapped"), files cannot be given the
    layers' owners: ``graftfs features`` names the capability, and creates go on with one owner."""
    host, base = outer
    www = TarBuilder().dir("var/www", uid=33, gid=33).file("var/www/index.html", b"hi\n", uid=33, gid=33)
    inner = _inner_image(base, [busybox_layer(), www.build()])
    graftfs = _graftfs()
    script = f"""
set -e
{graftfs} init-store
{graftfs} features
echo ---
{graftfs} create oci://{inner.path}:latest www > /dev/null
stat -c %u:%g {INNER_STORE}/images/www/rootfs/var/www/index.html
{graftfs} delete www
"""
    result = _run_outer(host, base, script, binds=[inner.path], drop_capabilities=["CAP_CHOWN"])
    assert result.returncode == 0, (result.stdout, result.stderr)
    report, _, after = result.stdout.partition("---\n")
    assert "file owners      this process lacks CAP_CHOWN: every file belongs to root" in report, report
    assert "only one ID" not in report, report
    assert "capabilities     missing CAP_CHOWN: files cannot be given the layers' owners" in report, report
    assert after == "0:0\nImage www deleted\n", after

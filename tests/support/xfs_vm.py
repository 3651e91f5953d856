"""Everything the tests run on XFS with project quotas, in one VM boot (tests.support.vm): a QEMU guest
under TCG takes half a minute to start, so the ``xfs_vm`` fixture (tests/integration/conftest.py) boots
once per test run and hands each test its section of the output."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from tests.support.images import TarBuilder, busybox_layer, write_oci_layout

MB = 1 << 20
REPO = Path(__file__).resolve().parents[2]


def quota_image(directory: Path) -> str:
    """~1 MB of image on top of busybox's ~2 MB, so "counted in the limit" is visible."""
    top = TarBuilder().file("base-data", b"\xa5" * MB)
    return write_oci_layout(directory, [busybox_layer(), top.build()]).url()


def cli_script(graftfs: list[str], url: str) -> str:
    """The GrootFS command line on an XFS backing store (test_quota.py checks what it prints)."""
    gfs = shlex.join(graftfs) + ' --store "$store"'
    limit = f"--disk-limit-size-bytes {10 * MB}"
    # The store goes on the VM's own tmpfs ($SCRATCH): in QEMU the host's / is shared read-only.
    return f"""
set -e
store=$SCRATCH/store
{gfs} init-store --store-size-bytes {400 * MB}
grep " $store " /proc/self/mountinfo | grep -q "xfs .*prjquota" && echo xfs-prjquota-mounted
{gfs} features | grep "disk quotas"
for mode in counted excluded; do
  flags="{limit}"; [ $mode = excluded ] && flags="$flags --exclude-image-from-quota"
  {gfs} create $flags {url} $mode > /dev/null
  rootfs=$store/images/$mode/rootfs
  dd if=/dev/zero of=$rootfs/four bs=1048576 count=4 2>/dev/null && echo $mode-4MB-written
  echo "stats $mode $({gfs} stats $mode)"
  dd if=/dev/zero of=$rootfs/eleven bs=1048576 count=11 2>/dev/null || echo $mode-11MB-stopped
  {gfs} delete $mode
done
# An exclusive limit of 10 bytes, less than one block: with the image counted (the limit is the image's
# size plus 10) and excluded. Created (the image's records are not in its project), and not one block
# more can be written: XFS refuses even a new directory in the project (overlay then mounts read-only).
{gfs} create {url} sized > /dev/null
base=$(cat $store/images/sized/image_info)
{gfs} delete sized
for mode in tiny-counted tiny-excluded; do
  flags="--disk-limit-size-bytes $((base + 10))"
  [ $mode = tiny-excluded ] && flags="--disk-limit-size-bytes 10 --exclude-image-from-quota"
  created=$({gfs} create $flags {url} $mode) && echo $mode-created || echo "$mode-not-created: $created"
  echo "stats $mode $({gfs} stats $mode)"
  dd if=/dev/zero of=$store/images/$mode/rootfs/one bs=1 count=1 conv=fsync 2>/dev/null || echo $mode-1B-stopped
  {gfs} delete $mode
done
{gfs} delete-store
test ! -e $store.backing-store && echo backing-store-removed
"""


def conformance_script() -> str:
    """The quota conformance suite (tests.support.quota_conformance) for the xfs backend, on an XFS
    filesystem mounted with project quotas, in a loop file on the VM's own tmpfs."""
    python = shlex.quote(sys.executable)
    return f"""
set -e
conf=$SCRATCH/conformance
mkdir $conf
truncate -s {400 * MB} $conf.img
mkfs.xfs -q $conf.img
mount -o loop,pquota,noatime $conf.img $conf
cd {shlex.quote(str(REPO))}
PYTHONPATH={shlex.quote(str(REPO))} {python} -m tests.support.quota_conformance xfs $conf
umount $conf
"""


def script(sections: dict[str, str]) -> str:
    """One VM script running each section in a subshell of its own, its output after ``### <name>`` and
    ending ``exit=<status>`` (a failing section does not keep the next from running)."""
    return "".join(f'echo "### {name}"\n(\n{body}\n)\necho "exit=$?"\n' for name, body in sections.items())


def split(out: str) -> dict[str, str]:
    """:func:`script`'s output, by section."""
    found: dict[str, str] = {}
    name = ""
    for line in out.splitlines(keepends=True):
        if line.startswith("### "):
            name = line[4:].strip()
            found[name] = ""
        elif name:
            found[name] += line
    return found

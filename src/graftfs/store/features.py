"""What the kernel and the store's filesystem allow this caller, probed once and kept in the store.

graftfs runs as root on a host, as root of a user namespace (``unshare -Ur``, a rootless container, the
namespace graftfs makes for an ordinary user), or inside a container whose root is itself an overlay. What
works differs, so ``init-store`` tries each capability for real, in the store's own ``tmp/``, and writes
the answers to ``meta/features.json``; creates read that instead of probing again. ``graftfs features``
prints them. A store made by an older graftfs (no record) is probed on first use.

* ``xattrs``: ``trusted`` (overlay's own xattrs, needs CAP_SYS_ADMIN in the initial namespace) or ``user``
  (overlay mounted with ``userxattr``, Linux 5.11+);
* ``whiteouts``: ``device`` when 0:0 character devices can be made (root, or any user since Linux 5.8),
  ``file`` (the layers' own ``.wh.`` files, which fuse-overlayfs reads) where they cannot but
  fuse-overlayfs serves the store, else ``none``;
* ``ids``: ``all`` when files can be given any owner the layers name, ``single`` when only the caller's
  own ID exists (a user namespace that maps one ID): owners then all become root;
* ``devices``: device nodes in layers can be created (root on the host only);
* ``overlay``: ``kernel`` when this caller can mount overlayfs on this filesystem; ``fuse-overlayfs`` when
  the kernel refuses (it will not stack on another overlay, such as a container's own root) but
  fuse-overlayfs (its package, and ``/dev/fuse``) works; else ``none``;
* ``quota``: ``xfs`` (project quotas), ``btrfs`` (qgroups) or ``none`` (measure only): see :mod:`.quota`;
* ``idmapped_mounts``: the kernel supports idmapped mounts (5.19+ for overlay layers): reported, not used.
"""

from __future__ import annotations

import errno
import os
import stat

from .. import jsonc
from .fsutil import atomic_write, read_text, remove_tree, temp_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .layout import Layout

FIELDS = ("version", "kernel", "filesystem", "userns", "xattrs", "whiteouts", "ids", "devices", "overlay", "quota")
VERSION = 1
# statfs f_type magic numbers of the filesystems worth naming.
_FS_NAMES = {
    0xEF53: "ext4",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x01021994: "tmpfs",
    0x794C7630: "overlay",
    0x65735546: "fuse",
    0x6E667364: "nfs",
}


class Features:
    __slots__ = FIELDS

    def __init__(
        self,
        *,
        version: int = VERSION,
        kernel: str = "",
        filesystem: str = "",
        userns: bool = False,
        xattrs: str = "trusted",
        whiteouts: str = "device",
        ids: str = "all",
        devices: bool = True,
        overlay: str = "kernel",
        quota: str = "none",
    ) -> None:
        self.version = version
        self.kernel = kernel
        self.filesystem = filesystem
        self.userns = userns
        self.xattrs = xattrs
        self.whiteouts = whiteouts
        self.ids = ids
        self.devices = devices
        self.overlay = overlay
        self.quota = quota

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in FIELDS}

    @property
    def idmapped_mounts(self) -> bool:
        major, _, rest = str(self.kernel).partition(".")
        minor = rest.partition(".")[0]
        try:
            return (int(major), int(minor)) >= (5, 19)
        except ValueError:
            return False

    def overlay_options(self) -> tuple[str, ...]:
        """Extra overlay mount options the layers need (their whiteout xattrs are ``user.*``)."""
        return ("userxattr",) if self.xattrs == "user" else ()

    def describe(self, store: str, idmapped_in_use: bool = False) -> list[str]:
        """The report ``graftfs features`` prints: one line per capability, saying what it means."""
        who = (
            "root in a user namespace (IDs are those of the namespace)"
            if self.userns
            else "root in the initial user namespace"
        )
        lines = [
            f"store            {store} ({self.filesystem}, kernel {self.kernel})",
            f"running as       {who}",
            "overlay          "
            + {
                "kernel": "kernel overlayfs, mounted by graftfs"
                + (" with userxattr (overlay xattrs are user.*)" if self.xattrs == "user" else ""),
                "fuse-overlayfs": "fuse-overlayfs, mounted by graftfs (the kernel will not stack overlayfs on "
                f"{self.filesystem} here); --without-mount is not possible",
            }.get(
                self.overlay,
                "cannot be mounted here by this caller: use create --without-mount and let the runtime mount it",
            ),
            "whiteouts        "
            + {
                "device": "0:0 character devices",
                "file": "the layers' .wh. files (device nodes cannot be made here; fuse-overlayfs reads them)",
            }.get(self.whiteouts, "cannot be made here: layers that delete files are refused"),
            "file owners      "
            + (
                "kept as the layers say (through the store's ID mappings)"
                if self.ids == "all"
                else "only one ID is mapped here: every file belongs to root in the container"
            ),
            "device nodes     " + ("created" if self.devices else "skipped (not allowed here; runtimes provide /dev)"),
            "idmapped mounts  "
            + (
                "used: the store's mappings are applied to its shared, unshifted layers when mounting"
                if idmapped_in_use
                else "supported by the kernel, not used: layers are unpacked with the store's IDs"
                if self.idmapped_mounts
                else "not supported by this kernel"
            ),
            "disk quotas      "
            + {
                "btrfs": "btrfs qgroups: each image's writable layer is a subvolume with its limit",
                "xfs": "XFS project quotas: each image's writable layer is a project with its limit",
            }.get(
                self.quota,
                f"none on {self.filesystem} here"
                + (" (not mounted with prjquota)" if self.filesystem == "xfs" else "")
                + ": limits are checked against the image and the container's writes are measured, but not "
                "enforced",
            ),
        ]
        return lines


def load(layout: Layout) -> Features | None:
    try:
        doc = jsonc.loads(read_text(layout.features_file, "") or "null")
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        return None
    defaults = Features().as_dict()
    if set(doc) != set(FIELDS) or any(type(doc[k]) is not type(defaults[k]) for k in FIELDS):
        return None  # damaged or from another version: probe again
    return Features(**doc)


def save(layout: Layout, features: Features) -> None:
    atomic_write(layout.features_file, jsonc.dumps(features.as_dict()).encode() + b"\n")


def probe(layout: Layout) -> Features:
    """Try every capability in a scratch directory of the store's ``tmp/`` (removed after)."""
    scratch = temp_name(os.path.join(layout.tmp, "probe"), "features")
    os.mkdir(scratch, 0o700)
    try:
        userns = not _initial_userns()
        filesystem = _filesystem(layout.root)
        xattrs = _xattrs(scratch)
        overlay = "kernel" if _overlay(scratch, xattrs) else "fuse-overlayfs" if _fuse_overlay(scratch) else "none"
        devices = _mknod(scratch, os.makedev(0, 0))
        return Features(
            version=VERSION,
            kernel=os.uname().release,
            filesystem=filesystem,
            userns=userns,
            xattrs=xattrs,
            whiteouts="device" if devices else "file" if overlay == "fuse-overlayfs" else "none",
            ids="all" if _chown_any(scratch) else "single",
            devices=_mknod(scratch, os.makedev(1, 3)),  # /dev/null's numbers
            overlay=overlay,
            quota=_quota(layout.root, userns),
        )
    finally:
        remove_tree(scratch)


def _initial_userns() -> bool:
    """Whether this process is in the initial user namespace (whose map covers every ID)."""
    return read_text("/proc/self/uid_map", "").split() == ["0", "0", "4294967295"]


def _filesystem(path: str) -> str:
    from .quota import mount_of

    return mount_of(path)[1]


def _xattrs(scratch: str) -> str:
    try:
        os.setxattr(scratch, "trusted.graftfs-probe", b"1")
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EACCES, errno.ENOTSUP):
            raise
        return "user"
    return "trusted"


def _mknod(scratch: str, device: int) -> bool:
    path = os.path.join(scratch, f"dev-{os.major(device)}-{os.minor(device)}")
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, device)
    except OSError:
        return False
    return True


def _chown_any(scratch: str) -> bool:
    path = os.path.join(scratch, "owner")
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    try:
        for uid in (1, 65534):
            os.chown(path, uid, uid)
    except OSError:
        return False
    return True


def _overlay(scratch: str, xattrs: str) -> bool:
    return _mounts(scratch, "kernel", ("userxattr",) if xattrs == "user" else ())


def _fuse_overlay(scratch: str) -> bool:
    import shutil

    if shutil.which("fuse-overlayfs") is None:
        return False
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError:
        return False
    return _mounts(scratch, "fuse-overlayfs")


def _mounts(scratch: str, driver: str, extra_options: tuple[str, ...] = ()) -> bool:
    """Whether an overlay can be mounted (and unmounted) here with ``driver``."""
    from ..errors import KernelError
    from ..mount import kernel
    from ..mount.spec import OverlaySpec

    for name in ("lower", "upper", "work", "merged"):
        os.makedirs(os.path.join(scratch, name), exist_ok=True)
    spec = OverlaySpec(scratch, ("lower",), "upper", "work", os.path.join(scratch, "merged"), extra_options, driver)
    try:
        kernel.mount_overlay(spec)
    except KernelError:
        return False
    kernel.unmount(spec.target)
    return True


def _quota(root: str, userns: bool) -> str:
    from . import quota

    # Quotas are the filesystem's: only the host's root may set them (or turn them on).
    return "none" if userns else quota.probe(root)

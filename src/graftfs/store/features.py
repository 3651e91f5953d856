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
  own ID exists (a user namespace that maps one ID) or the caller lacks CAP_CHOWN: owners then all become
  root;
* ``devices``: device nodes in layers can be created (root on the host only);
* ``overlay``: ``kernel`` when this caller can mount overlayfs on this filesystem; ``fuse-overlayfs`` when
  the kernel refuses (it will not stack on another overlay, such as a container's own root) but
  fuse-overlayfs (its package, and ``/dev/fuse``) works; else ``none``;
* ``fuse``: why fuse-overlayfs cannot serve the store (``no-program``, ``no-device``: no ``/dev/fuse``,
  ``device-refused``: it cannot be opened, ``mount-refused``), ``usable``, or empty when the kernel's
  overlay works and fuse-overlayfs was not tried;
* ``caps_missing``: the capabilities unpacking and mounting use that this process does not have (read from
  ``CapEff``, not tried: most of them only matter for what a layer holds). Each costs something
  (:data:`CAPABILITY_COSTS`); refusals and ``graftfs features`` name them;
* ``quota``: the name of the quota backend for this store's images: ``xfs`` (project quotas), ``btrfs``
  (qgroups) or ``none`` (measure only): see :mod:`graftfs.quota`;
* ``idmapped_mounts``: the kernel supports idmapped mounts (5.19+ for overlay layers): reported, not used;
* ``volatile_overlay`` (derived from ``kernel``): the kernel's overlayfs takes ``volatile`` (5.10+).
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

FIELDS = (
    "version",
    "kernel",
    "filesystem",
    "userns",
    "xattrs",
    "whiteouts",
    "ids",
    "devices",
    "overlay",
    "fuse",
    "caps_missing",
    "quota",
)
# 2: ``fuse`` and ``caps_missing``; a record of version 1 lacks them and is probed again.
VERSION = 2
# The capabilities graftfs's unpacking and mounting use (their numbers in linux/capability.h), in the order
# ``graftfs features`` names the missing ones.
CAPABILITIES = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_MKNOD": 27,
    "CAP_SETFCAP": 31,
    "CAP_SYS_ADMIN": 21,
}
# What a missing capability costs, as measured by unpacking layers without it (Linux 6.18). Those of
# _OWNER_CAPABILITIES matter only where files get the layers' owners (``ids == "all"``): where they cannot,
# every file is the caller's own and no override is needed.
CAPABILITY_COSTS = {
    "CAP_CHOWN": "files cannot be given the layers' owners: every file belongs to root in the container",
    "CAP_DAC_OVERRIDE": "layers that put files in a directory owned by another user fail to unpack",
    "CAP_FOWNER": "layers with files owned by other users fail to unpack",
    "CAP_FSETID": "set-group-ID bits of files whose group is not root's are dropped",
    "CAP_MKNOD": "device nodes in layers are skipped (runtimes provide /dev)",
    "CAP_SETFCAP": "file capabilities (security.capability xattrs) cannot be set: images that have them, "
    "such as ping's, fail to unpack",
    "CAP_SYS_ADMIN": "graftfs cannot mount the kernel's overlayfs (nor use trusted.* xattrs)",
}
_OWNER_CAPABILITIES = ("CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID")
# Filesystems the kernel takes no overlay upper dir on ("not supported as upperdir", "upper fs missing required
# features": their dentries revalidate), for any caller: the runtime's own mount of an image kept there would
# be refused as graftfs's is. A container's root is usually an overlay.
_NO_UPPER = ("overlay", "fuse", "nfs")
# Why fuse-overlayfs cannot be used (a ``fuse`` value), and what would let it.
_FUSE_PROBLEMS = {
    "no-device": ("/dev/fuse is missing", "give the container /dev/fuse"),
    "device-refused": (
        "/dev/fuse cannot be opened",
        "let the container open /dev/fuse (its device rules, the node's mode)",
    ),
    "no-program": ("it is not installed", "install fuse-overlayfs"),
    "mount-refused": ("it could not mount here", ""),
}
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
        fuse: str = "",
        caps_missing: list[str] | None = None,
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
        self.fuse = fuse
        self.caps_missing = list(caps_missing or [])
        self.quota = quota

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in FIELDS}

    def _kernel_at_least(self, major: int, minor: int) -> bool:
        first, _, rest = str(self.kernel).partition(".")
        try:
            return (int(first), int(rest.partition(".")[0])) >= (major, minor)
        except ValueError:
            return False

    @property
    def idmapped_mounts(self) -> bool:
        return self._kernel_at_least(5, 19)

    @property
    def volatile_overlay(self) -> bool:
        """Whether the kernel's overlayfs takes ``volatile`` (5.10+), which an image's own mount uses (graftfs.api)."""
        return self.overlay == "kernel" and self._kernel_at_least(5, 10)

    def overlay_options(self) -> tuple[str, ...]:
        """Extra overlay mount options the layers need (their whiteout xattrs are ``user.*``)."""
        return ("userxattr",) if self.xattrs == "user" else ()

    @property
    def runtime_can_mount(self) -> bool:
        """Whether a runtime, whatever its privileges, could mount this store's images with the kernel's
        overlayfs (what ``--without-mount`` hands it)."""
        return not self.filesystem.startswith(_NO_UPPER)

    def costs(self) -> list[tuple[str, str]]:
        """The missing capabilities that cost something here, each with what it costs."""
        return [
            (cap, CAPABILITY_COSTS[cap])
            for cap in CAPABILITIES
            if cap in self.caps_missing and (self.ids == "all" or cap not in _OWNER_CAPABILITIES)
        ]

    def no_mount(self) -> tuple[str, str]:
        """Why neither overlayfs nor fuse-overlayfs can be mounted on the store (``overlay == "none"``), and
        what to do about it, advising only what would work: ``--without-mount`` hands the runtime a kernel
        overlay mount, which is refused on an overlay (or FUSE, NFS) filesystem for the runtime too."""
        if not self.runtime_can_mount:
            kernel = f"the kernel will not stack overlayfs on {self.filesystem}, whoever mounts it"
        elif "CAP_SYS_ADMIN" in self.caps_missing:
            kernel = "this process lacks CAP_SYS_ADMIN"
        else:
            kernel = "the kernel refuses this caller's overlay mounts"
        problem, fix = _FUSE_PROBLEMS.get(self.fuse, ("it was not tried", ""))
        why = f"{kernel}; fuse-overlayfs cannot be used: {problem}"
        if self.runtime_can_mount:
            return why, "use create --without-mount and let the runtime mount it"
        advice = [fix] if fix else []
        advice.append(f"keep the store on a filesystem that is not {self.filesystem} (a volume)")
        return why, " or ".join(advice)

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
            }.get(self.overlay, "cannot be mounted here: {}: {}".format(*self.no_mount())),
            "whiteouts        "
            + {
                "device": "0:0 character devices",
                "file": "the layers' .wh. files (device nodes cannot be made here; fuse-overlayfs reads them)",
            }.get(self.whiteouts, "cannot be made here: layers that delete files are refused"),
            "file owners      "
            + (
                "kept as the layers say (through the store's ID mappings)"
                if self.ids == "all"
                else "this process lacks CAP_CHOWN: every file belongs to root in the container"
                if "CAP_CHOWN" in self.caps_missing
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
            "disk quotas      " + _describe_quota(self.quota, self.filesystem),
            "container writes "
            + (
                "volatile: the rootfs graftfs mounts skips every sync (a container's fsync, the unmount's); what "
                "a container writes may be lost if the host crashes, as the container is"
                if self.volatile_overlay
                else "synced when the container asks (fsync), and the store's filesystem when a rootfs is unmounted"
            ),
        ]
        costs = self.costs()
        if not costs:
            lines.append("capabilities     all that graftfs uses")
        for index, (cap, cost) in enumerate(costs):
            lines.append(("capabilities" if index == 0 else "").ljust(17) + f"missing {cap}: {cost}")
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
    if not all(isinstance(cap, str) for cap in doc["caps_missing"]):
        return None
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
        fuse = "" if _overlay(scratch, xattrs) else _fuse_overlay(scratch)
        overlay = "kernel" if not fuse else "fuse-overlayfs" if fuse == "usable" else "none"
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
            fuse=fuse,
            caps_missing=_caps_missing(),
            quota=_quota(layout.root, userns),
        )
    finally:
        remove_tree(scratch)


def _initial_userns() -> bool:
    """Whether this process is in the initial user namespace (whose map covers every ID)."""
    return read_text("/proc/self/uid_map", "").split() == ["0", "0", "4294967295"]


def _filesystem(path: str) -> str:
    from ..mount import kernel

    return kernel.mount_of(path)[1]


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


def _fuse_overlay(scratch: str) -> str:
    """``usable``, or why fuse-overlayfs is not (a ``fuse`` value)."""
    from ..mount import kernel

    # The device first: a container not given /dev/fuse is the common case, and its fix is the container's.
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except FileNotFoundError:
        return "no-device"
    except OSError:  # EACCES (the node's mode), EPERM (a device cgroup), ENXIO (no fuse module)
        return "device-refused"
    if kernel.which("fuse-overlayfs") is None:
        return "no-program"
    return "usable" if _mounts(scratch, "fuse-overlayfs") else "mount-refused"


def _caps_missing(status: str = "/proc/self/status") -> list[str]:
    """The capabilities of :data:`CAPABILITIES` that are not in this process's effective set."""
    for line in read_text(status, "").splitlines():
        if line.startswith("CapEff:"):
            effective = int(line.split()[1], 16)
            return [cap for cap, bit in CAPABILITIES.items() if not effective >> bit & 1]
    return []  # no /proc: unknown, and nothing is claimed missing


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
    from .. import quota

    # Quotas are the filesystem's: only the host's root may set them (or turn them on).
    return "none" if userns else quota.probe(root)


def _describe_quota(name: str, filesystem: str) -> str:
    from .. import quota
    from ..errors import FailedPrecondition

    try:
        return quota.backend_class(name).describe(filesystem)
    except FailedPrecondition:  # a record naming no backend this graftfs has: creates say so
        return quota.backend_class("none").describe(filesystem)

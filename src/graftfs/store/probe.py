"""How ``init-store`` finds what this caller may do in a store (tried for real, in the store's ``tmp/``), and
how ``graftfs features`` says what the answers mean, and how the store keeps its layers. The answers, and
what creates read from them, are :mod:`graftfs.store.features`: a create never loads this module.
"""

from __future__ import annotations

import errno
import os
import stat

from .features import VERSION, Features
from .fsutil import read_text, remove_tree, temp_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..api import Store
    from .layout import Layout

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


def costs(features: Features) -> list[tuple[str, str]]:
    """The missing capabilities that cost something here, each with what it costs."""
    return [
        (cap, CAPABILITY_COSTS[cap])
        for cap in CAPABILITIES
        if cap in features.caps_missing and (features.ids == "all" or cap not in _OWNER_CAPABILITIES)
    ]


def describe(features: Features, store: str, idmapped_in_use: bool = False) -> list[str]:
    """The report ``graftfs features`` prints: one line per capability, saying what it means."""
    who = (
        "root in a user namespace (IDs are those of the namespace)"
        if features.userns
        else "root in the initial user namespace"
    )
    lines = [
        f"store            {store} ({features.filesystem}, kernel {features.kernel})",
        f"running as       {who}",
        "overlay          "
        + {
            "kernel": "kernel overlayfs, mounted by graftfs"
            + (" with userxattr (overlay xattrs are user.*)" if features.xattrs == "user" else ""),
            "fuse-overlayfs": "fuse-overlayfs, mounted by graftfs (the kernel will not stack overlayfs on "
            f"{features.filesystem} here); --without-mount is not possible",
        }.get(features.overlay, "cannot be mounted here: {}: {}".format(*features.no_mount())),
        "whiteouts        "
        + {
            "device": "0:0 character devices",
            "file": "the layers' .wh. files (device nodes cannot be made here; fuse-overlayfs reads them)",
        }.get(features.whiteouts, "cannot be made here: layers that delete files are refused"),
        "file owners      "
        + (
            "kept as the layers say (through the store's ID mappings)"
            if features.ids == "all"
            else "this process lacks CAP_CHOWN: every file belongs to root in the container"
            if "CAP_CHOWN" in features.caps_missing
            else "only one ID is mapped here: every file belongs to root in the container"
        ),
        "device nodes     " + ("created" if features.devices else "skipped (not allowed here; runtimes provide /dev)"),
        "idmapped mounts  "
        + (
            "used: the store's mappings are applied to its shared, unshifted layers when mounting"
            if idmapped_in_use
            else "supported by the kernel, not used: layers are unpacked with the store's IDs"
            if features.idmapped_mounts
            else "not supported by this kernel"
        ),
        "disk quotas      " + _describe_quota(features.quota, features.filesystem),
        "container writes "
        + (
            "volatile: the rootfs graftfs mounts skips every sync (a container's fsync, the unmount's); what "
            "a container writes may be lost if the host crashes, as the container is"
            if features.volatile_overlay
            else "synced when the container asks (fsync), and the store's filesystem when a rootfs is unmounted"
        ),
    ]
    missing = costs(features)
    if not missing:
        lines.append("capabilities     all that graftfs uses")
    for index, (cap, cost) in enumerate(missing):
        lines.append(("capabilities" if index == 0 else "").ljust(17) + f"missing {cap}: {cost}")
    return lines


def layers_mode(store: Store) -> tuple[str, bool]:
    """How this store keeps its layers, in words (for ``graftfs features``), and whether its mounts are
    idmapped."""
    shared = store.layout.shared_layers()
    namespace = store.namespace()
    mapped = bool(namespace.uid_mappings or namespace.gid_mappings)
    if shared is None:
        return "this store's own" + (", unpacked with its ID mappings applied" if mapped else ""), False
    mode = f"shared, unshifted, with every store using {shared}"
    return mode + ("; this store's ID mappings are applied by idmapped mounts" if mapped else ""), mapped


def layer_repository(store: Store) -> str:
    """The store's layer repository and how its creates use it, in words ("" when it has none)."""
    record = read_text(store.layout.layer_repository_file)
    if not record:
        return ""
    from ..repository import layers

    root, idmapped, why = layers.parse(record)
    if store.rootless:
        return f"{root}: not used (rootless: its files would show with IDs this namespace does not map)"
    namespace = store.namespace()
    if not (namespace.uid_mappings or namespace.gid_mappings):
        return f"{root}: layers found there are used in place, not pulled"
    if idmapped:
        return f"{root}: layers found there are used in place, mounted idmapped with this store's mappings"
    return f"{root}: not used, layers are pulled (this store has ID mappings, and {why})"

"""What the kernel and the store's filesystem allow this caller, probed once and kept in the store.

graftfs runs as root on a host, as root of a user namespace (``unshare -Ur``, a rootless container, the
namespace graftfs makes for an ordinary user), or inside a container whose root is itself an overlay. What
works differs, so ``init-store`` tries each capability for real, in the store's own ``tmp/``, and writes
the answers to ``meta/features.json``; creates read that instead of probing again (this module: the record
and what it implies; :mod:`graftfs.store.probe`: the trying, and the report ``graftfs features`` prints). A
store made by an older graftfs (no record) is probed on first use.

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
  (:data:`graftfs.store.probe.CAPABILITY_COSTS`); ``graftfs features`` names them;
* ``quota``: the name of the quota backend for this store's images: ``xfs`` (project quotas), ``btrfs``
  (qgroups) or ``none`` (measure only): see :mod:`graftfs.quota`;
* ``idmapped_mounts``: the kernel supports idmapped mounts (5.19+ for overlay layers): reported, not used;
* ``volatile_overlay`` (derived from ``kernel``): the kernel's overlayfs takes ``volatile`` (5.10+).
"""

from __future__ import annotations

from .. import jsonc
from .fsutil import atomic_write, read_text

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

"""Overlay mount specs as data.

An image's mount is built here and either performed by :mod:`graftfs.mount.kernel` or returned to the
caller (``create --without-mount``) in the runtime-spec form GrootFS prints; so are a snapshot's mounts
(:class:`Mount`, containerd's), with :func:`compact_options` fitting an overlay's options in the kernel's page.

The kernel copies mount options into a single page, so the option string must stay under 4096 bytes. With
128 layers, absolute lowerdir paths would not fit. Like GrootFS (and containerd, with its numeric snapshot
dirs), graftfs names lower layers by short symlinks in ``<store>/l/`` and performs the mount from inside the
store directory, so each lower costs ``l/<12 hex>:`` = 15 bytes: 270 layers fit in a page.
"""

from __future__ import annotations

import os

from ..errors import Unsupported

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

PAGE_LIMIT = 4096 - 1  # option string plus its NUL terminator must fit in one page
OVERLAY_MAX_STACK = 500  # fs/overlayfs: OVL_MAX_STACK


class OverlaySpec:
    """An overlay mount. ``lowers`` are top-most first and, like upper/work, relative to ``cwd``.

    ``driver`` is "kernel" (overlayfs) or "fuse-overlayfs" (for stores the kernel will not stack on, such as
    a store on another overlay)."""

    __slots__ = ("cwd", "driver", "extra_options", "idmap", "lowers", "sources", "target", "upper", "work")

    def __init__(
        self,
        cwd: str,
        lowers: tuple[str, ...],
        upper: str,
        work: str,
        target: str,
        extra_options: tuple[str, ...] = (),
        driver: str = "kernel",
        idmap: tuple[str, str] | None = None,
        sources: tuple[str, ...] = (),
    ) -> None:
        self.cwd = cwd
        self.driver = driver
        # With ``idmap`` (uid_map and gid_map lines), lower ``i`` is ``sources[i]`` bound into ``cwd/i`` by an
        # idmapped mount first: the layers stay unshifted on disk, shared by stores of any mapping (or read-only
        # in a layer repository). An empty source is a lower named by its path, not bound.
        self.idmap = idmap
        self.sources = sources
        self.lowers = lowers
        self.upper = upper
        self.work = work
        self.target = target
        self.extra_options = extra_options

    def options(self, absolute: bool = False) -> str:
        def p(path: str) -> str:
            return os.path.join(self.cwd, path) if absolute else path

        opts = [
            "lowerdir=" + ":".join(p(lower) for lower in self.lowers),
            f"upperdir={p(self.upper)}",
            f"workdir={p(self.work)}",
            *self.extra_options,
        ]
        return ",".join(opts)

    def check(self) -> None:
        if len(self.lowers) > OVERLAY_MAX_STACK:
            raise Unsupported(f"image has {len(self.lowers)} layers; overlayfs stacks at most {OVERLAY_MAX_STACK}")
        size = len(self.options().encode())
        if size > PAGE_LIMIT:
            raise Unsupported(
                f"image has {len(self.lowers)} layers; their overlay mount options take {size} bytes, "
                f"more than the kernel's {PAGE_LIMIT}"
            )

    def runtime_mount(self) -> dict[str, object]:
        """The runtime-spec mount GrootFS prints with --without-mount (absolute paths: the runtime's cwd
        is not the store)."""
        return {
            "destination": "/",
            "type": "overlay",
            "source": "overlay",
            "options": [self.options(absolute=True)],
        }


class Mount:
    """One mount as data, in containerd's shape (``mount.Mount``): what a snapshot's ``mounts`` return, for
    :func:`graftfs.mount.kernel.mount_all` to perform, or for a runtime (or containerd) to perform itself.

    ``type`` is ``bind`` or ``overlay``; a bind's ``options`` hold ``rbind`` and ``ro`` or ``rw``, an overlay's
    its ``lowerdir=``, ``upperdir=`` and ``workdir=`` with absolute paths (the mounter shortens them when
    they would not fit in the kernel's page)."""

    __slots__ = ("options", "source", "type")

    def __init__(self, type: str, source: str, options: tuple[str, ...] = ()) -> None:
        self.type = type
        self.source = source
        self.options = options

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mount) and (self.type, self.source, self.options) == (
            other.type,
            other.source,
            other.options,
        )

    def __hash__(self) -> int:
        return hash((self.type, self.source, self.options))

    def __repr__(self) -> str:
        return f"Mount(type={self.type!r}, source={self.source!r}, options={self.options!r})"

    def as_dict(self) -> dict[str, object]:
        """The runtime spec's (and containerd's) JSON form."""
        return {"type": self.type, "source": self.source, "options": list(self.options)}


_PATH_OPTIONS = ("lowerdir=", "upperdir=", "workdir=")


def compact_options(options: Sequence[str]) -> tuple[str, str]:
    """``(cwd, option string)`` for an overlay: ``/`` and the options as they are when they fit in a page,
    else their layer paths made relative to the longest directory they share. Unsupported when even that
    does not fit: the kernel would cut the string at its page and mount fewer layers, without an error."""
    joined = ",".join(options)
    if len(joined.encode()) < 4096:
        return "/", joined
    paths = [p for o in options if o.startswith(_PATH_OPTIONS) for p in o.split("=", 1)[1].split(":")]
    common = os.path.commonpath(paths) if paths else "/"
    if common in paths:  # a layer itself: mount from its parent so that it keeps a name
        common = os.path.dirname(common)

    def rel(option: str) -> str:
        if not option.startswith(_PATH_OPTIONS):
            return option
        name, _, value = option.partition("=")
        return name + "=" + ":".join(os.path.relpath(p, common) for p in value.split(":"))

    compact = ",".join(rel(o) for o in options)
    if len(compact.encode()) >= 4096:
        layers = sum(o.count(":") + 1 for o in options if o.startswith("lowerdir="))
        raise Unsupported(
            f"an overlay of {layers} layers: its mount options take {len(compact.encode())} bytes even from "
            f"{common}, more than the kernel's page of 4095"
        )
    return common, compact

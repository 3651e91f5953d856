"""graftfs: container images to overlay root filesystems, without a daemon.

The public API is :class:`Store` (``Store(path).create(url, image_id)`` does what ``graftfs create`` does;
``Store.thin_publish`` what ``graftfs thin publish`` does), :func:`thin_convert` (``graftfs thin convert``),
:class:`Snapshotter` (containerd's snapshot verbs over the same store, their :class:`Mount` lists performed
by :func:`mount_all`) and the error classes. Names are resolved lazily so that ``import graftfs`` (and the
CLI's start-up) stays cheap.
"""

from __future__ import annotations

TYPE_CHECKING = False  # importing typing would cost the CLI milliseconds on every run

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "CreateOptions",
    "DiskUsage",
    "FailedPrecondition",
    "GraftfsError",
    "Image",
    "Internal",
    "InvalidArgument",
    "InvalidImage",
    "KernelError",
    "LockTimeout",
    "Mount",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "SnapshotInfo",
    "SnapshotUsage",
    "Snapshotter",
    "Store",
    "ThinConverted",
    "ThinImage",
    "ThinLayer",
    "ThinPublished",
    "Unavailable",
    "UnsafeArchive",
    "Unsupported",
    "VerificationError",
    "__version__",
    "mount_all",
    "thin_convert",
]

if TYPE_CHECKING:
    from typing import Any

    from .api import CreateOptions, DiskUsage, Image, Store
    from .errors import (
        AlreadyExists,
        FailedPrecondition,
        GraftfsError,
        Internal,
        InvalidArgument,
        InvalidImage,
        KernelError,
        LockTimeout,
        NotFound,
        PermissionDenied,
        ResourceExhausted,
        Unavailable,
        UnsafeArchive,
        Unsupported,
        VerificationError,
    )
    from .mount.kernel import mount_all
    from .mount.spec import Mount
    from .repository.convert import Converted as ThinConverted
    from .repository.convert import thin_convert
    from .repository.publish import Published as ThinPublished
    from .repository.thin import ThinImage, ThinLayer
    from .store.snapshots import Info as SnapshotInfo
    from .store.snapshots import Snapshotter
    from .store.snapshots import Usage as SnapshotUsage


def __getattr__(name: str) -> Any:
    if name in ("Store", "CreateOptions", "Image", "DiskUsage"):
        from . import api

        return getattr(api, name)
    if name in ("Snapshotter", "SnapshotInfo", "SnapshotUsage"):
        from .store import snapshots

        return getattr(snapshots, {"SnapshotInfo": "Info", "SnapshotUsage": "Usage"}.get(name, name))
    if name == "Mount":
        from .mount.spec import Mount

        return Mount
    if name == "mount_all":
        from .mount.kernel import mount_all

        return mount_all
    if name in ("thin_convert", "ThinConverted"):
        from .repository import convert

        return getattr(convert, {"ThinConverted": "Converted"}.get(name, name))
    if name == "ThinPublished":
        from .repository.publish import Published

        return Published
    if name in ("ThinImage", "ThinLayer"):
        from .repository import thin

        return getattr(thin, name)
    if name in __all__:
        from . import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'graftfs' has no attribute {name!r}")

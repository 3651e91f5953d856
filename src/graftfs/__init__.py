"""graftfs: container images to overlay root filesystems, without a daemon.

The public API is :class:`Store` (``Store(path).create(url, image_id)`` does what ``graftfs create`` does)
and the error classes. Names are resolved lazily so that ``import graftfs`` (and the CLI's start-up) stays
cheap.
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
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Store",
    "Unavailable",
    "UnsafeArchive",
    "Unsupported",
    "VerificationError",
    "__version__",
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


def __getattr__(name: str) -> Any:
    if name in ("Store", "CreateOptions", "Image", "DiskUsage"):
        from . import api

        return getattr(api, name)
    if name in __all__:
        from . import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'graftfs' has no attribute {name!r}")

"""Per-image disk limits: quota backends behind one small interface (:class:`.base.Backend`), registered by
name in :data:`BACKENDS` and imported only when asked for, so a create loads just the backend its store
uses.

A create with ``--disk-limit-size-bytes`` gets its writable layer (the image directory: ``diff`` and the
overlay's ``workdir``) limited to the disk limit, less the image's own size unless
``--exclude-image-from-quota`` (GrootFS's semantics). ``init-store`` asks each store-wide backend in turn
whether it works on the store's filesystem (:func:`probe`) and records the first that does in
``meta/features.json`` (``quota``); creates, deletes and ``stats`` ask :func:`load` for it by that name.
An ephemeral image (``--ephemeral``) gets the ``tmpfs`` backend, whatever the store's.

Adding a backend is a module here with a ``Backend`` class (a subclass of :class:`.base.Backend`) and one
line in :data:`BACKENDS`.
"""

from __future__ import annotations

from ..errors import FailedPrecondition

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..store.layout import Layout
    from .base import Backend

#: Backend name (as recorded in ``meta/features.json``) → its module in this package. ``init-store`` probes
#: them in this order, so ``none`` (measure only, which always works) comes last.
BACKENDS = {
    "xfs": "xfs",
    "btrfs": "btrfs",
    "tmpfs": "tmpfs",
    "none": "measure",
}
#: The backend of ephemeral images: their writable layer is a tmpfs of their own.
EPHEMERAL = "tmpfs"


def backend_class(name: str) -> type[Backend]:
    module = BACKENDS.get(name)
    if module is None:
        raise FailedPrecondition(f"unknown quota backend `{name}`")
    # __import__, not importlib: importlib's package is not loaded at start-up.
    found: type[Backend] = __import__(f"{__name__}.{module}", fromlist=["Backend"]).Backend
    return found


def load(name: str, layout: Layout) -> Backend:
    """The backend registered as ``name``, for the store at ``layout``."""
    return backend_class(name)(layout)


def chosen(store_backend: str, ephemeral: bool) -> str:
    """The name of the backend an image gets: the store's, or :data:`EPHEMERAL` for an ephemeral image."""
    return EPHEMERAL if ephemeral else store_backend


def probe(root: str) -> str:
    """The name of the first backend that works for a store at ``root`` (enabling what it needs on the
    way, such as btrfs quotas); only the host's root calls this."""
    for name in BACKENDS:
        if backend_class(name).probe(root):
            return name
    return "none"

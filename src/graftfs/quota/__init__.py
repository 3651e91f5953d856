"""Per-image disk limits: quota backends behind one small interface, :class:`Backend`, registered by name in
:data:`BACKENDS` and imported only when asked for, so a create loads just the backend its image uses.

A create with ``--disk-limit-size-bytes`` gets its writable layer (the image directory: ``diff`` and the
overlay's ``workdir``) limited to the disk limit, less the image's own size unless
``--exclude-image-from-quota`` (GrootFS's semantics). ``init-store`` asks each backend in turn whether it
works for the store (:func:`probe`) and records the first that does in ``meta/features.json`` (``quota``);
creates, deletes and ``stats`` ask :func:`load` for it by that name. An ephemeral image (``--ephemeral``)
gets the ``tmpfs`` backend, whatever the store's.

An image directory goes through its backend in this order (``Images.create``): :meth:`Backend.make_image_dir`
under a temporary name; the image's records written, each handed to :meth:`Backend.leave_out`;
:meth:`Backend.limit` when there is a limit; :meth:`Backend.rename` to the image's ID. Then ``stats`` asks
:meth:`Backend.exclusive_bytes`, and once the directory has been removed (delete, clean, a failed create),
:meth:`Backend.release` frees what the backend held for it outside the directory.

:class:`Backend` itself is the ``none`` backend (measure only): the limit is checked against the image and
recorded, and the container's writes are measured for ``stats``, but nothing stops them; whether such a
create is refused or only logged is the caller's choice (``create.unenforceable_disk_limit``). It lives
here, with the registry, so that a create in a store without quotas imports one module for them.

Adding a backend is a module here with a ``Backend`` class (a subclass of :class:`Backend`) and one line in
:data:`BACKENDS`.
"""

from __future__ import annotations

import os
import time

from ..errors import FailedPrecondition
from ..store.fsutil import atomic_write, disk_usage, read_int

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..store.layout import Layout

#: Backend name (as recorded in ``meta/features.json``) → its module, relative to this package.
#: ``init-store`` probes them in this order, so ``none`` (measure only, which always works) comes last.
BACKENDS = {
    "xfs": ".xfs",
    "btrfs": ".btrfs",
    "tmpfs": ".tmpfs",
    "none": "",  # this module's own Backend
}
#: The backend of ephemeral images: their writable layer is a tmpfs of their own.
EPHEMERAL = "tmpfs"


def backend_class(name: str) -> type[Backend]:
    module = BACKENDS.get(name)
    if module is None:
        raise FailedPrecondition(f"unknown quota backend `{name}`")
    # __import__, not importlib: importlib's package is not loaded at start-up.
    found: type[Backend] = __import__(__name__ + module, fromlist=["Backend"]).Backend
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


class Backend:
    """A quota backend. This one, ``none``, limits nothing and measures the writable layer by walking it;
    the others set :attr:`name` (their key in :data:`BACKENDS`) and override what they do differently."""

    name = "none"
    #: Whether a limit set with :meth:`limit` stops the container's writes (or is only recorded).
    enforces = False

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    @classmethod
    def probe(cls, root: str) -> bool:
        """Whether this backend can serve a store at ``root`` (``init-store`` asks, as the host's root, in
        :data:`BACKENDS`' order). Measuring works everywhere; a backend chosen otherwise than by the store's
        filesystem (tmpfs, for ephemeral images) says no."""
        return True

    @classmethod
    def describe(cls, filesystem: str) -> str:
        """What limits mean in a store on ``filesystem`` with this backend (``graftfs features``)."""
        return (
            f"none on {filesystem} here"
            + (" (not mounted with prjquota)" if filesystem == "xfs" else "")
            + ": limits are checked against the image and the container's writes are measured, but not enforced"
        )

    def make_image_dir(self, path: str) -> None:
        """Make the image directory ``path`` (mode 0700)."""
        os.mkdir(path, 0o700)

    def leave_out(self, path: str) -> None:
        """The file ``path``, a record in an image directory, is to count against no image's limit."""

    def limit(self, path: str, size: int) -> None:
        """Limit what the image directory ``path`` may hold to ``size`` bytes (> 0)."""

    def rename(self, old: str, new: str) -> None:
        """Rename the image directory ``old`` to ``new`` (its ID, on commit), keeping its limit."""
        os.rename(old, new)

    def release(self, path: str) -> None:
        """After the image directory ``path`` is gone: free what the backend held for it elsewhere."""

    def exclusive_bytes(self, path: str) -> int:
        """Bytes the image's writable layer holds (``stats``)."""
        return self.measured(path)

    def measured(self, path: str) -> int:
        """The writable layer's bytes, walked. Garden polls every container every few seconds, so a
        measurement is reused for ``STATS_CACHE_SECONDS`` (``GRAFTFS_STATS_CACHE_SECONDS``)."""
        cache = os.path.join(path, "usage-cache")
        ttl = _stats_cache_seconds()
        try:
            if time.time() - os.stat(cache).st_mtime < ttl:
                return read_int(cache)
        except FileNotFoundError:
            pass
        exclusive = disk_usage(os.path.join(path, "diff"))
        if ttl > 0:
            atomic_write(cache, str(exclusive).encode(), 0o600, sync=False)
        return exclusive


STATS_CACHE_SECONDS = 5.0


def _stats_cache_seconds() -> float:
    try:
        return max(float(os.environ.get("GRAFTFS_STATS_CACHE_SECONDS", STATS_CACHE_SECONDS)), 0.0)
    except ValueError:
        return STATS_CACHE_SECONDS

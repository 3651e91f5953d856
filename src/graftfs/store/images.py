"""Images: a stack of shared volumes plus a private upper layer, one directory per container.

An image is *committed* when its dependency record (``meta/dependencies/image:<id>.json``) exists: that
record is what ``clean`` reads to know which volumes are in use, so it is written (atomically) after the
image directory is complete and before anything is mounted. An image directory without a record is the
remains of a create or delete that was interrupted; whoever next takes that image's lock removes it.

Each image has a lock (``locks/image-<id>.lock``) held by create and delete, so two processes never work
on one ID at once, and a crashed one is detected by its lock being free.
"""

from __future__ import annotations

import os

from ..errors import AlreadyExists, KernelError, NotFound, os_reason
from ..mount import kernel
from .fsutil import atomic_write, read_int, remove_tree, temp_name, unlink
from .layout import Layout, validate_image_id
from .locks import FileLock

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ..mount.spec import OverlaySpec
    from ..quota import Backend


class DiskUsage:
    """GrootFS's ``disk_usage`` document. Field order is the JSON key order."""

    __slots__ = ("committed_space_bytes", "exclusive_bytes_used", "quota_size_bytes", "total_bytes_used")

    def __init__(self, total: int, exclusive: int, quota: int, committed: int) -> None:
        self.total_bytes_used = total
        self.exclusive_bytes_used = exclusive
        self.quota_size_bytes = quota
        self.committed_space_bytes = committed

    def as_dict(self) -> dict[str, int]:
        return {
            "total_bytes_used": self.total_bytes_used,
            "exclusive_bytes_used": self.exclusive_bytes_used,
            "quota_size_bytes": self.quota_size_bytes,
            "committed_space_bytes": self.committed_space_bytes,
        }


class Images:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def lock(self, image_id: str) -> FileLock:
        return FileLock(self.layout.locks, f"image-{image_id}")

    def is_committed(self, image_id: str) -> bool:
        return os.path.isfile(self.layout.dependency_file(image_id))

    def dependencies(self, image_id: str) -> list[str]:
        return read_record(self.layout.dependency_file(image_id)) or []

    def ids(self) -> list[str]:
        """Committed images, in directory order (GrootFS prints them unsorted). Two directory reads, not a
        stat per image: in a store of 1,000 images those were half of what `list` cost."""
        try:
            names = os.listdir(self.layout.images)
        except FileNotFoundError:
            return []
        committed = set()
        try:
            with os.scandir(self.layout.dependencies) as records:
                for record in records:
                    owner, half_written = record_owner(record.name)
                    if owner is not None and not half_written and record.is_file():
                        committed.add(owner)
        except FileNotFoundError:
            return []
        return [n for n in names if not n.startswith(".") and n in committed]

    def overlay(
        self,
        image_id: str,
        volume_ids: Sequence[str],
        extra_options: Sequence[str] = (),
        driver: str = "kernel",
        idmap: tuple[str, str] | None = None,
        in_place: Mapping[int, tuple[str, str, str]] | None = None,
        unshifted_volumes: bool = True,
        hide: str = "",
    ) -> OverlaySpec:
        """The image's overlay over ``volume_ids`` (bottom first). ``in_place`` maps the index of a layer
        used in place from the store's layer repository to ``(short link relative to the store, its layerfs,
        its shim)``: a shim (relative to the store, or "") is a directory whose ``above`` and ``below`` are
        stacked right over and under the layer (graftfs.repository.layers.build_shim). ``hide`` (relative to
        the store) is a lower put on top of all. With ``idmap``, every unshifted layer is bound idmapped at
        ``images/<id>/lowers/<index>``: the repository's, and the volumes too when ``unshifted_volumes``
        (shared layers); the others are named from there."""
        from ..mount.spec import OverlaySpec  # only creates build mounts

        in_place = in_place or {}
        # From the binds' directory, the store is three levels up.
        up = os.path.join(os.pardir, os.pardir, os.pardir) if idmap is not None else ""
        sources = []
        lowers: list[str] = [os.path.join(up, hide)] if hide else []
        for index in reversed(range(len(volume_ids))):  # overlay wants the top-most layer first
            link, layerfs, shim = in_place.get(index, ("", "", ""))
            if idmap is not None and (layerfs or unshifted_volumes):
                lower = str(index)  # bound at lowers/<index>
            elif layerfs:
                lower = link
            else:
                lower = os.path.join(up, "l", self.layout.short_id(volume_ids[index]))
            lowers += [os.path.join(up, shim, "above"), lower, os.path.join(up, shim, "below")] if shim else [lower]
        if idmap is not None:
            for index, volume_id in enumerate(volume_ids):
                layerfs = in_place.get(index, ("", "", ""))[1]
                sources.append(layerfs or (self.layout.volume(volume_id) if unshifted_volumes else ""))
            return OverlaySpec(
                cwd=os.path.join(self.layout.image(image_id), "lowers"),
                lowers=tuple(lowers),
                upper=os.path.join("..", "diff"),
                work=os.path.join("..", "workdir"),
                target=os.path.join(self.layout.image(image_id), "rootfs"),
                extra_options=tuple(extra_options),
                driver=driver,
                idmap=idmap,
                sources=tuple(sources),
            )
        rel = os.path.join("images", image_id)
        return OverlaySpec(
            cwd=self.layout.root,
            lowers=tuple(lowers),
            upper=os.path.join(rel, "diff"),
            work=os.path.join(rel, "workdir"),
            target=os.path.join(self.layout.image(image_id), "rootfs"),
            extra_options=tuple(extra_options),
            driver=driver,
        )

    def create(
        self,
        image_id: str,
        volume_ids: Sequence[str],
        base_size: int,
        owner: tuple[int, int] = (0, 0),
        quota: Backend | None = None,
        quota_bytes: int = 0,
    ) -> str:
        """Lay out and commit the image directory. The caller holds the image lock and the volumes' lease.
        The image directory is made by the quota backend ``quota`` (see graftfs.quota; measure only when
        None), which limits the writable layer to ``quota_bytes`` when > 0. Returns the image path. Mounting
        (:meth:`mount`) and the commit record (:meth:`commit`) come next."""
        validate_image_id(image_id)
        path = self.layout.image(image_id)
        if self.is_committed(image_id):
            raise AlreadyExists(f"image for id `{image_id}` already exists")
        if os.path.lexists(path):
            self.remove_uncommitted(image_id)
        # Build under a temporary name, then rename: a crash leaves a dot-name that no listing shows.
        tmp = temp_name(os.path.join(self.layout.images, "." + image_id), "creating")
        if quota is None:
            quota = self._backend("none")
        quota.make_image_dir(tmp)
        try:
            for sub in ("diff", "workdir", "rootfs"):
                os.mkdir(os.path.join(tmp, sub), 0o755)
                if owner != (0, 0):
                    os.chown(os.path.join(tmp, sub), *owner)
            if owner != (0, 0):
                os.chown(tmp, *owner)
            # The records first, and out of the image's project: they are not the container's to count,
            # and a limit smaller than a block would leave no room for them.
            records = [("image_info", base_size)] + ([("image_quota", quota_bytes)] if quota_bytes > 0 else [])
            for name, value in records:
                atomic_write(os.path.join(tmp, name), str(value).encode(), 0o600, sync=False)
                quota.leave_out(os.path.join(tmp, name))
            if quota_bytes > 0:
                quota.limit(tmp, quota_bytes)
            quota.rename(tmp, path)
        except BaseException:
            self.unmount(tmp)  # a backend's own mount (tmpfs)
            remove_tree(tmp)
            quota.release(tmp)
            raise
        return path

    def commit(self, image_id: str, volume_ids: Sequence[str]) -> None:
        """Write the image's dependency record: from here on it is listed, and its volumes are in use for
        ``clean``. The caller still holds the volumes' lease, and has mounted the image already (a create
        killed before this point leaves an uncommitted directory, unmounted and removed by whoever next
        meets it, never a listed image without its mount)."""
        from .. import jsonc

        # Not fsynced (two fsyncs were a fifth of a warm create): a kill -9 loses nothing from the page cache,
        # and a power cut loses the mount and the container with it, while the record, the image directory
        # and its writable layer (never synced either) fall back together to garbage that clean removes.
        atomic_write(self.layout.dependency_file(image_id), jsonc.dumps(list(volume_ids)).encode(), sync=False)

    def mount(self, spec: OverlaySpec) -> None:
        kernel.mount_overlay(spec)

    def delete(self, image_id: str) -> None:
        """Unmount and remove. Raises NotFound when there is nothing at all under that ID."""
        validate_image_id(image_id)
        path = self.layout.image(image_id)
        if not os.path.lexists(path) and not self.is_committed(image_id):
            raise NotFound(f"Image `{image_id}` not found.")
        known = self.unmount(path)
        # Un-commit first: from here on the image is garbage to anyone who looks, never a half image.
        try:
            # Moved, not unlinked (same cost): the time of the move is when these layers were last used,
            # which clean's age policy reads. Clean removes the moved records.
            os.rename(
                self.layout.dependency_file(image_id),
                temp_name(os.path.join(self.layout.released, f"image:{image_id}"), "released"),
            )
        except FileNotFoundError:
            # No record (an uncommitted image), or a store from before released/ existed.
            unlink(self.layout.dependency_file(image_id))
        self._remove_dir(path, unmounted=known)

    def remove_uncommitted(self, image_id: str) -> None:
        path = self.layout.image(image_id)
        self._remove_dir(path, unmounted=self.unmount(path))

    def unmount(self, path: str) -> bool:
        """Unmount what graftfs mounted in an image directory: the rootfs overlay, idmapped layer binds under
        ``lowers/``, an ephemeral image's own tmpfs. Anything else mounted there belongs to someone else (a
        bind of a host directory, say): then nothing is unmounted and the delete fails naming it, so no file
        of that filesystem is removed and the image stays as it was until the mount is gone.

        Returns whether the tree's removal may skip reading the mount table again: when there was nothing
        mounted, or only filesystems of their own (the overlay, the tmpfs), which the removal would tell by
        their device should an unmount have left one (umount2 answers EINVAL, taken for "not mounted", for
        a mount locked in a user namespace too). A layer bind is of the store's own filesystem: after one,
        the table is read again."""
        real = os.path.realpath(path)
        mounts = kernel.mount_entries(real, resolved=True)
        if not mounts:
            return True
        rootfs = os.path.join(real, "rootfs")
        for point, fstype in mounts:
            if not is_own_mount(real, point, fstype):
                raise foreign_mount("deleting image path", point, fstype)
        # The overlay first (it uses the layer binds), the image's own tmpfs last (everything is on it).
        for point, _ in sorted(mounts, key=lambda m: (m[0] != rootfs, m[0] == real)):
            kernel.unmount(point)
        return all(point in (rootfs, real) for point, _ in mounts)

    def _remove_dir(self, path: str, unmounted: bool = False) -> None:
        """``unmounted``: :meth:`unmount` said the removal need not read the mount table again (on a host
        running a thousand containers it is a thousand overlay lines, ~8 ms to read)."""
        if not os.path.lexists(path):
            return
        # Rename out of the way first so a crash in the middle of a long rmtree leaves a dot-name.
        doomed = temp_name(os.path.join(self.layout.images, "." + os.path.basename(path)), "deleting")
        os.rename(path, doomed)
        remove(doomed, mounts=set() if unmounted else None)
        self.release(path)

    def release(self, path: str) -> None:
        """What a quota backend holds for the removed image directory ``path`` outside it is freed by that
        backend: the store's. Only a backend's record says there is any (one stat, no import, otherwise)."""
        if os.path.lexists(self.layout.quota_record(path)):
            from . import features

            recorded = features.load(self.layout)
            self._backend(recorded.quota if recorded is not None else "none").release(path)

    def _backend(self, name: str) -> Backend:
        from .. import quota

        return quota.load(name, self.layout)

    def _image_backend(self, path: str, store_backend: str) -> Backend:
        """The backend that made the image directory ``path``: the store's, unless the directory is a tmpfs
        of its own (an ephemeral image). A btrfs subvolume looks like a mount point too (its own st_dev),
        so the mount table decides, and is read only for such directories."""
        from .. import quota

        if kernel.is_mountpoint(path):
            real = os.path.realpath(path)
            if (real, "tmpfs") in kernel.mount_entries(real, resolved=True):
                return quota.load(quota.EPHEMERAL, self.layout)
        return quota.load(store_backend, self.layout)

    def usage(self, image_id: str, quota_backend: str = "none") -> DiskUsage:
        validate_image_id(image_id)
        path = self.layout.image(image_id)
        if not self.is_committed(image_id) or not os.path.isdir(path):
            raise NotFound(f"Image `{image_id}` not found.")
        base = read_int(os.path.join(path, "image_info"))
        quota = read_int(os.path.join(path, "image_quota"))
        exclusive = self._image_backend(path, quota_backend).exclusive_bytes(path)
        return DiskUsage(total=base + exclusive, exclusive=exclusive, quota=quota, committed=base + quota)


#: What graftfs mounts at an image's rootfs: the kernel's overlay, or fuse-overlayfs (nested stores).
_OVERLAY_TYPES = ("overlay", "fuse.fuse-overlayfs")


def is_own_mount(image_dir: str, point: str, fstype: str) -> bool:
    """Whether graftfs made this mount in the image directory ``image_dir`` (a real path): the rootfs
    overlay, an idmapped layer bind ``lowers/<n>``, or an ephemeral image's tmpfs."""
    lowers = os.path.join(image_dir, "lowers") + "/"
    return (
        (point == os.path.join(image_dir, "rootfs") and fstype in _OVERLAY_TYPES)
        or (point.startswith(lowers) and point[len(lowers) :].isdigit())
        or (point == image_dir and fstype == "tmpfs")
    )


def foreign_mount(action: str, point: str, fstype: str) -> KernelError:
    return KernelError(
        f"{action}: {point} is a mount point ({fstype}) that graftfs did not make: unmount it, then try again"
    )


def read_record(path: str) -> list[str] | None:
    """The volumes a commit record names ([] if it is gone); None if it is damaged (a power cut can leave
    an unsynced record empty), when nobody can tell which volumes it protects."""
    from .. import jsonc  # not at the top: delete and stats never read records

    try:
        # os.open and one read, not open(): clean reads every record, and building a buffered text file
        # object for each was most of a clean in a store of a thousand images.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    try:
        # A record of 128 layers is 9 KiB: one read; a short read of a regular file is its end.
        data = chunk = os.read(fd, 1 << 16)
        while len(chunk) == 1 << 16:
            chunk = os.read(fd, 1 << 16)
            data += chunk
    finally:
        os.close(fd)
    try:
        deps = jsonc.loads(data)
    except ValueError:
        return None
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        return None
    return deps


def record_owner(name: str) -> tuple[str | None, bool]:
    """``(image id, half written?)`` of a name in ``meta/dependencies/``; ``(None, False)`` for others."""
    if not name.startswith("image:"):
        return None, False
    stem, temp, _ = name[len("image:") :].partition(".json-tmp-")
    if temp:
        return stem, True
    return (stem[: -len(".json")], False) if stem.endswith(".json") else (None, False)


def remove(path: str, action: str = "deleting image path", mounts: set[str] | None = None) -> None:
    """remove_tree, its failures in GrootFS's words (a mount found there is named, not crossed)."""
    try:
        remove_tree(path, mounts)
    except OSError as exc:
        raise KernelError(f"{action}: {exc.filename or path}: {os_reason(exc)}", exc.errno or 0) from None

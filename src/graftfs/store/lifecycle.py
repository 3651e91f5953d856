"""A store's life: ``init-store`` makes it and ``delete-store`` removes it (:meth:`graftfs.api.Store.init` and
:meth:`~graftfs.api.Store.delete_store` call these). Apart from :mod:`graftfs.api` because creates and deletes,
which Garden runs once per container, never run any of it and so should not load it.
"""

from __future__ import annotations

import os
import stat

from ..errors import FailedPrecondition, InvalidArgument, KernelError, Unsupported, os_reason
from ..idmap import Namespace
from ..mount import kernel
from .fsutil import atomic_write, read_text

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..api import Store
    from ..idmap import Mapping
    from ..log import Logger
    from .features import Features


def init(
    store: Store,
    uid_mappings: Sequence[Mapping],
    gid_mappings: Sequence[Mapping],
    size_bytes: int,
    shared_layers: str,
    layer_repository: str,
) -> Features:
    """:meth:`graftfs.api.Store.init`; returns the features it probed and recorded."""
    log = store.log.session("store-manager-init-store", storePath=store.path)
    log.debug("starting")
    repository = _check_repository(store, layer_repository) if layer_repository else ""
    if size_bytes > 0:
        _backing_store(store, size_bytes)
    wanted = Namespace(list(uid_mappings), list(gid_mappings))
    if shared_layers or store.layout.shared_layers() is not None:
        _share_layers(store, shared_layers, bool(wanted.uid_mappings or wanted.gid_mappings))
    os.makedirs(store.layout.meta, mode=0o755, exist_ok=True)
    if os.path.exists(store.layout.namespace_file):
        log.debug("store-already-initialized")
        have = store.namespace()
        if sorted(have.uid_mappings) != sorted(wanted.uid_mappings):
            raise InvalidArgument("provided UID mappings do not match those already configured in the store")
        if sorted(have.gid_mappings) != sorted(wanted.gid_mappings):
            raise InvalidArgument("provided GID mappings do not match those already configured in the store")
    else:
        atomic_write(store.layout.namespace_file, wanted.to_json(), 0o644)
    owner = (0, 0) if store.rootless else wanted.owner
    for directory in [*store.layout.directories(), store.layout.released]:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        if owner != (0, 0):
            os.chown(directory, *owner)
    if owner != (0, 0):
        os.chown(store.path, *owner)
    os.chmod(store.path, 0o700)
    from . import features, probe

    found = probe.probe(store.layout)
    features.save(store.layout, found)
    if repository:
        _record_repository(store, repository, wanted, log)
    log.debug("store-initialized", **found.as_dict())
    log.debug("ending")
    return found


def _check_repository(store: Store, directory: str) -> str:
    """The repository's real path: there, in DUCC's layout, root's only, and the one this store records
    if it records one (a store's repository cannot change: its images' mounts name it)."""
    from ..repository import layers

    real = layers.check(directory)
    recorded = read_text(store.layout.layer_repository_file)
    if recorded and layers.parse(recorded)[0] != real:
        raise InvalidArgument(
            f"store {store.path} already uses the layer repository {layers.parse(recorded)[0]}; a store's "
            "repository cannot change"
        )
    return real


def _record_repository(store: Store, repository: str, namespace: Namespace, log: Logger) -> None:
    from ..repository import layers

    why = ""
    if store.rootless:
        why = "rootless: the repository's files would show with IDs this store's namespace does not map"
    elif namespace.uid_mappings or namespace.gid_mappings:
        why = layers.probe_idmapped(store.layout, repository, namespace.kernel_maps())
    os.makedirs(store.layout.repository_links, mode=0o755, exist_ok=True)
    hide = not store.rootless and layers.make_hide(store.layout)
    atomic_write(store.layout.layer_repository_file, layers.record(repository, not why, why), 0o644)
    log.debug("layer-repository", path=repository, idmapped=not why, why=why, hide_markers=hide)


def _share_layers(store: Store, directory: str, mapped: bool) -> None:
    current = store.layout.shared_layers()
    if not directory:
        return  # re-init of a sharing store
    if not os.path.isabs(directory):
        raise InvalidArgument(f"shared layers directory `{directory}` must be an absolute path")
    directory = os.path.normpath(directory)
    if current is not None and current != directory:
        raise InvalidArgument(f"store {store.path} already shares the layers in {current}")
    if current is None and os.path.isdir(store.layout.volumes):
        raise InvalidArgument(f"store {store.path} has layers of its own; only a new store can share layers")
    if store.rootless:
        raise Unsupported("rootless: sharing layers between stores needs idmapped mounts, which need root")
    from .features import Features

    if mapped and not Features(kernel=os.uname().release).idmapped_mounts:
        raise Unsupported(
            "sharing layers with a store that has ID mappings needs idmapped mounts on overlay layers "
            f"(Linux 5.19 or later); this kernel is {os.uname().release}"
        )
    for name in ("volumes", "l", "meta", "locks", "stores"):
        os.makedirs(os.path.join(directory, name), mode=0o755, exist_ok=True)
    os.makedirs(store.path, mode=0o700, exist_ok=True)
    for name in ("volumes", "l", "locks"):
        link = os.path.join(store.path, name)
        if not os.path.lexists(link):
            os.symlink(os.path.join(directory, name), link)
    member = os.path.join(directory, "stores", _store_key(store.path))
    if not os.path.lexists(member):
        os.symlink(store.path, member)


def delete_store(store: Store) -> None:
    """:meth:`graftfs.api.Store.delete_store`."""
    log = store.log.session("store-manager-delete-store")
    log.debug("starting")
    try:
        _delete(store, log)
    finally:
        log.debug("ending")


def _delete(store: Store, log: Logger) -> None:
    from ..api import IMAGE_LOCK_WAIT

    if not os.path.exists(store.path):
        log.info("store-not-found", storePath=store.path)
        return
    try:
        ids = os.listdir(store.layout.images)
    except OSError as exc:
        raise FailedPrecondition(f"listing images: open {store.layout.images}: {os_reason(exc)}") from None
    _refuse_foreign_mounts(store)
    for image_id in ids:
        if image_id.startswith("."):
            store.images.remove_uncommitted(image_id)  # handles dot-named leftovers too
        else:
            with store.images.lock(image_id).held(timeout=IMAGE_LOCK_WAIT):
                store.images.delete(image_id)
    shared = store.layout.shared_layers()
    if shared is not None:
        try:
            os.unlink(os.path.join(shared, "stores", _store_key(store.path)))
        except FileNotFoundError:
            pass
    backing = store.path.rstrip("/") + ".backing-store"
    if os.path.exists(backing) and kernel.is_mountpoint(store.path):
        kernel.unmount(store.path)
        os.unlink(backing)
    from .images import remove

    remove(store.path, "deleting store path")


def _refuse_foreign_mounts(store: Store) -> None:
    from .images import foreign_mount, is_own_mount

    real = os.path.realpath(store.path)
    images = os.path.join(real, "images") + "/"
    for point, fstype in kernel.mount_entries(real, resolved=True):
        if point == real:
            continue  # the store's own backing filesystem (init-store --store-size-bytes)
        image_dir = images + point[len(images) :].split("/", 1)[0] if point.startswith(images) else ""
        if not image_dir or not is_own_mount(image_dir, point, fstype):
            raise foreign_mount("deleting image path" if image_dir else "deleting store path", point, fstype)


def _backing_store(store: Store, size: int) -> None:
    if os.path.isdir(store.path) and kernel.is_mountpoint(store.path):
        return
    backing = store.path.rstrip("/") + ".backing-store"
    created = not os.path.exists(store.path)
    os.makedirs(store.path, mode=0o700, exist_ok=True)
    with open(backing, "wb") as f:
        f.truncate(size)
    try:
        kernel.run("mkfs.xfs", "-f", "-q", backing)
        try:
            kernel.run("mount", "-o", "loop,pquota,noatime", backing, store.path)
        except KernelError as exc:
            # Tell a kernel without XFS quotas (CONFIG_XFS_QUOTA) from one without loop devices or XFS.
            try:
                kernel.run("mount", "-o", "loop,noatime", backing, store.path)
            except KernelError:
                raise exc from None
            kernel.unmount(store.path)
            raise KernelError(
                "this kernel's XFS has no quota support (mounting with pquota fails, without it works), so "
                "disk limits cannot be enforced on an XFS store here"
            ) from None
    except KernelError as exc:
        os.unlink(backing)
        if created:
            os.rmdir(store.path)
        raise KernelError(
            f"init-store --store-size-bytes: making the XFS backing store (needs xfsprogs, loop devices and "
            f"XFS quotas): {exc.message}"
        ) from None


def _store_key(path: str) -> str:
    from hashlib import sha256

    return sha256(path.encode()).hexdigest()[:16]


def regenerate_volume_sizes(store: Store) -> None:
    """What :meth:`graftfs.api.Store.regenerate_volume_sizes` does."""
    from .. import jsonc

    store.require()
    for volume_id in store.volumes.ids():
        size = 0
        for root, _dirs, files in os.walk(store.layout.volume(volume_id)):
            for name in files:
                st = os.lstat(os.path.join(root, name))
                if not stat.S_ISLNK(st.st_mode):
                    size += st.st_size
        try:
            record = jsonc.loads(read_text(store.layout.volume_meta(volume_id), "{}"))
        except ValueError:
            record = {}
        record = {**record, "Size": size} if isinstance(record, dict) else {"Size": size}  # keeps its Parent
        atomic_write(store.layout.volume_meta(volume_id), jsonc.dumps(record).encode() + b"\n")

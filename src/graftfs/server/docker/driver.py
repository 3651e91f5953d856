"""Docker's graphdriver verbs over the snapshot core (:mod:`graftfs.store.snapshots`).

A graphdriver and a snapshotter cut a layer's life differently. dockerd ``Create``\\ s an image layer empty,
fills it with ``ApplyDiff`` and, without ever saying it is finished, names it as the parent of the next one;
a container gets an ``-init`` layer (``CreateReadWrite``, written by dockerd through ``Get``/``Put``) and, on
it, its writable layer, so a writable layer is a parent too. The core has only committed parents. The
mapping, with two small additions to the core (:meth:`Snapshotter.tree`, a snapshot's own directory, as
containerd's differs read an upperdir out of a snapshot's mounts; and ``prepare``'s ``make_dir``, for
``size=``, below):

* every graphdriver layer ``<id>`` starts as the **active** snapshot ``docker/rw/<id>`` (on its parent's
  committed snapshot, or on nothing): ``Create`` and ``CreateReadWrite`` are both ``prepare``;
* ``ApplyDiff`` unpacks the tar into that active snapshot's upper directory (it must be fresh: dockerd applies
  one diff to a new layer) and **commits** it as ``docker/layer/<id>``: an image layer is finished when its
  diff is in;
* a layer still active when it is first named as a parent (an ``-init`` layer, or any layer created without
  a diff) is committed then, under the same name; it must not be mounted (``Get`` without ``Put``), since a
  committed snapshot must not change;
* ``Get`` of an active layer mounts its own mounts; of a committed one, a read-only **view**
  ``docker/view/<id>`` made for the purpose and removed by the last ``Put``. Mount points are
  ``<store>/graphdriver/mnt/<id>``; reference counts are files in ``<store>/graphdriver/refs`` (a restarted
  plugin continues from them), checked against ``/proc/self/mountinfo`` (a count whose mount is gone, after
  a reboot, starts again from one);
* ``Remove`` removes the view, then the layer; ``Diff``, ``Changes`` and ``DiffSize`` read a layer's own
  tree against its own parent (the only parent dockerd asks about: any other is refused by name).

So the core keeps its rule (only committed snapshots are parents) and every snapshot the plugin leaves is an
ordinary one, in the core's namespace :data:`NAMESPACE`: its own ``walk`` and the store's ``cleanup`` see them
as they are, and the other front ends (graftfs's containerd snapshotter, whose garbage collector removes what
it lists, and the Python API) do not see them at all. Overlay
whiteouts and opaque directories are converted by :mod:`graftfs.layers.unpack` on the way in and
:mod:`graftfs.layers.diff` on the way out; with ``UIDMaps``/``GIDMaps`` from ``Init`` (``--userns-remap``)
the IDs are mapped on the way in and back on the way out, and a new layer's root belongs to the mapped root.
``StorageOpt`` ``size=`` (``docker run --storage-opt size=``) has the store's quota backend make the layer's
snapshot directory (the core's ``prepare(make_dir=...)``: a btrfs subvolume, an XFS project) and set its
limit; a store whose backend cannot (``none``) refuses it by name.

**Thin images** (a layer whose tree is ``/thin.json`` only): the core stacks the repository's layers under
every layer created on such a layer; ``Get`` of the thin layer itself shows its own tree (``docker save`` reads
``/thin.json`` back through it); ``Diff`` of a layer on it, directly or through its ``-init`` layer (``docker
commit``), publishes the layer's changes through S3 as ``thin publish`` does when the plugin has a bucket
(:class:`Publishing`), and answers with the new descriptor alone, so the committed image is thin again (see
:meth:`Driver.diff`).
"""

from __future__ import annotations

import os
import re
import stat
import threading

from ... import __version__ as VERSION
from ...errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unsupported
from ...idmap import IdMap, Mapping
from ...mount import kernel
from ...store.fsutil import atomic_write, read_text, unlink
from ...store.snapshots import KIND_ACTIVE, KIND_COMMITTED, Snapshotter

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import IO, Any

    from ...log import Logger
    from ...quota import Backend
    from ...repository.s3 import S3Client
    from ...repository.thin import ThinImage

#: The core's namespace for the graphdriver's snapshots (:mod:`graftfs.store.snapshots`): containerd's garbage
#: collector, through graftfs's containerd snapshotter over the same store, never sees them.
NAMESPACE = "docker"
RW = "docker/rw/"
LAYER = "docker/layer/"
VIEW = "docker/view/"
#: dockerd's layer IDs are 64 hex digits, with ``-init`` for a container's init layer; anything that is a
#: plain file name is taken.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")

#: The quota backends that can limit a layer: its snapshot directory is theirs (a btrfs subvolume, an XFS
#: project), made through the core's ``prepare(make_dir=...)``.
LIMITING = ("btrfs", "xfs")

CHANGE_MODIFY = 0
CHANGE_ADD = 1
CHANGE_DELETE = 2


def check_id(layer_id: str, what: str = "layer") -> str:
    if not isinstance(layer_id, str) or not _ID.fullmatch(layer_id):
        raise InvalidArgument(f"{what} id {layer_id!r} is not a valid graphdriver id")
    return layer_id


def id_maps(entries: Sequence[dict[str, Any]] | None, what: str) -> list[Mapping]:
    """``UIDMaps``/``GIDMaps`` as Init sends them (``container_id``, ``host_id``, ``size``)."""
    maps = []
    for entry in entries or ():
        try:
            maps.append(Mapping(int(entry["container_id"]), int(entry["host_id"]), int(entry["size"])))
        except (KeyError, TypeError, ValueError):
            raise InvalidArgument(f"{what}: {entry!r} is not a mapping (container_id, host_id, size)") from None
    return maps


class Publishing:
    """Where ``Diff`` publishes a thin image's container's changes (``serve docker-graphdriver --s3-bucket``):
    ``client`` makes an S3 client of the bucket (one per ``Diff``), ``compression`` and ``repository_name`` as
    for ``thin publish``; ``wait_seconds`` (0: do not wait), how long ``Diff`` waits for the publisher to put the
    layer in the store's layer repository before it answers (``thin publish --wait``)."""

    __slots__ = ("client", "compression", "repository_name", "wait_seconds")

    def __init__(
        self,
        client: Callable[[], S3Client],
        compression: str = "gzip",
        repository_name: str = "",
        wait_seconds: float = 0,
    ) -> None:
        self.client = client
        self.compression = compression
        self.repository_name = repository_name
        self.wait_seconds = wait_seconds


class Driver:
    """The graphdriver over the store (or bare directory) ``root``. Thread-safe: one lock per layer id in
    this process, and the core's own lock for the records. With ``publishing``, ``Diff`` of a thin image's
    container publishes its changes (see :meth:`diff`)."""

    def __init__(self, root: str, log: Logger, publishing: Publishing | None = None) -> None:
        self.sn = Snapshotter(root, log=log, namespace=NAMESPACE)
        # A store made before namespaces: the graphdriver's snapshots were the default namespace's.
        self.sn.adopt(lambda info, remote: not remote and info.name.startswith((RW, LAYER, VIEW)))
        self.log = log
        self.publishing = publishing
        self.home = os.path.join(self.sn.layout.root, "graphdriver")
        self.mnt = os.path.join(self.home, "mnt")
        self.refs = os.path.join(self.home, "refs")
        for directory, mode in ((self.home, 0o711), (self.mnt, 0o711), (self.refs, 0o700)):
            os.makedirs(directory, mode=mode, exist_ok=True)
            os.chmod(directory, mode)  # a remapped root must reach the mount points
        self.xattr_namespace = "user" if "userxattr" in self.sn.overlay_options else "trusted"
        self.uid_map = IdMap([])
        self.gid_map = IdMap([])
        self.uid_back = IdMap([])
        self.gid_back = IdMap([])
        self.docker_home = ""
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    # -- the verbs ---------------------------------------------------------------------------------------

    def init(self, home: str, opts: Sequence[str], uid_maps: list[Mapping], gid_maps: list[Mapping]) -> None:
        if opts:
            raise InvalidArgument(f"graftfs takes no --storage-opt at daemon level (got {', '.join(opts)})")
        self.docker_home = home
        self.uid_map, self.gid_map = IdMap(uid_maps), IdMap(gid_maps)
        self.uid_back = IdMap([Mapping(m.host_id, m.namespace_id, m.size) for m in uid_maps])
        self.gid_back = IdMap([Mapping(m.host_id, m.namespace_id, m.size) for m in gid_maps])

    def create(self, layer_id: str, parent: str, storage_opt: dict[str, str] | None = None) -> None:
        check_id(layer_id)
        if parent == layer_id:
            raise InvalidArgument(f"layer {layer_id} cannot be its own parent")
        size = self._size_opt(storage_opt or {})
        with self._lock(layer_id):
            if self._find(layer_id) is not None:
                raise AlreadyExists(f"layer {layer_id} already exists")
            parent_key = self._as_parent(parent) if parent else ""
            if parent_key and (self.uid_map or self.gid_map) and self._on_thin(parent_key):
                raise Unsupported(
                    f"layer {layer_id}: its parent {parent} is (or stands on) a thin image, whose layers are the "
                    "layer repository's, with their IDs unshifted: they cannot be used with --userns-remap"
                )
            backend = self._backend() if size else None
            make_dir = backend.make_image_dir if backend is not None else None
            self.sn.prepare(RW + layer_id, parent_key, {"graftfs.docker/id": layer_id}, make_dir=make_dir)
            try:
                tree = self.sn.tree(RW + layer_id)
                if self.uid_map or self.gid_map:
                    os.chown(tree, self.uid_map(0), self.gid_map(0))
                if backend is not None:
                    backend.limit(os.path.dirname(tree), size)
            except BaseException:
                self.sn.remove(RW + layer_id)
                raise

    def remove(self, layer_id: str) -> None:
        check_id(layer_id)
        with self._lock(layer_id):
            self._unmount(layer_id)
            found = self._find(layer_id)
            if found is None:
                return  # as overlay2: removing what is gone is done
            directory = os.path.dirname(self.sn.tree(found))
            self.sn.remove(found)
            if os.path.exists(self.sn.layout.quota_record(directory)):
                self._backend().release(directory)  # an XFS project's ID

    def get(self, layer_id: str) -> str:
        check_id(layer_id)
        with self._lock(layer_id):
            key = self._get(layer_id)
            point = os.path.join(self.mnt, layer_id)
            count = self._count(layer_id)
            if count > 0 and self._mounted(point):
                self._set_count(layer_id, count + 1)
                return point
            if key.startswith(RW):
                mounts = self.sn.mounts(key)
            elif self._own_tree_only(key):
                # A thin image's layer itself (dockerd reads a layer back through Get for docker save and push,
                # with its tar-split record): its own tree, /thin.json, not the repository's layers it names.
                from ...mount.spec import Mount

                mounts = [Mount("bind", self.sn.tree(key), ("ro", "rbind"))]
            else:
                try:
                    mounts = self.sn.mounts(VIEW + layer_id)
                except NotFound:
                    mounts = self.sn.view(VIEW + layer_id, key)
            os.makedirs(point, mode=0o755, exist_ok=True)
            if not self._mounted(point):
                kernel.mount_all(mounts, point)
            self._set_count(layer_id, 1)
            return point

    def put(self, layer_id: str) -> None:
        check_id(layer_id)
        with self._lock(layer_id):
            count = self._count(layer_id) - 1
            if count > 0 and self._mounted(os.path.join(self.mnt, layer_id)):
                self._set_count(layer_id, count)
                return
            self._unmount(layer_id)

    def exists(self, layer_id: str) -> bool:
        return bool(_ID.fullmatch(layer_id or "")) and self._find(layer_id) is not None

    def status(self) -> list[list[str]]:
        _, fstype, _ = kernel.mount_of(self.sn.layout.root)
        layers = active = 0
        for info in self.sn.walk():
            layers += info.name.startswith(LAYER)
            active += info.name.startswith(RW)
        mounted = len(os.listdir(self.refs))
        return [
            ["Backing Filesystem", fstype],
            ["Store", self.sn.layout.root],
            ["Layers", str(layers)],
            ["Writable layers", str(active)],
            ["Mounted", str(mounted)],
            ["Quota", self._quota()],
            ["Version", f"graftfs {VERSION}"],
        ]

    def metadata(self, layer_id: str) -> dict[str, str]:
        check_id(layer_id)
        key = self._get(layer_id)
        lowers = self._lowers(key)
        meta = {"MergedDir": os.path.join(self.mnt, layer_id)}
        if key.startswith(RW):
            meta["UpperDir"] = self.sn.tree(key)
            meta["WorkDir"] = os.path.join(os.path.dirname(meta["UpperDir"]), "work")
            if lowers:
                meta["LowerDir"] = ":".join(lowers)
        else:
            meta["LowerDir"] = ":".join([self.sn.tree(key), *lowers])
        return meta

    def cleanup(self) -> None:
        """dockerd's shutdown (after its containers are stopped): every mount undone, counts and views
        dropped, and what interrupted processes left in the store removed."""
        for name in os.listdir(self.mnt):
            if _ID.fullmatch(name):
                with self._lock(name):
                    self._unmount(name)
        removed = self.sn.cleanup()
        if removed:
            self.log.info("cleanup", removed=removed)

    def changes(self, layer_id: str, parent: str) -> list[dict[str, Any]]:
        key = self._against(layer_id, parent)
        return _changes(self.sn.tree(key), self._lowers(key), self.xattr_namespace)

    def diff_size(self, layer_id: str, parent: str) -> int:
        return _apparent_size(self.sn.tree(self._against(layer_id, parent)))

    def diff(self, layer_id: str, parent: str) -> Callable[[IO[bytes]], None]:
        """Check everything that can fail before a byte is sent; return what writes the tar.

        A layer on a thin image's layer (directly, or through its container's ``-init`` layer: ``docker
        commit``), with ``publishing`` configured: its changes are published as ``thin publish`` does (the
        layer to S3 as ``layers/<hex>``), here, before the answer, and the tar is the new descriptor alone,
        ``/thin.json`` with the layer appended on top: the committed image is thin again (with
        ``publishing.wait_seconds``, once the publisher has put the layer in the store's repository). Without
        ``publishing``, or with other layers in between, an ordinary diff (the log says why). A layer with no
        change at all is Docker's empty tar, never published."""
        from ...layers.diff import write_layer

        key = self._against(layer_id, parent)
        tree = self.sn.tree(key)
        if not os.listdir(tree):
            # No change: the empty tar Docker's own drivers give (two zero blocks, as Go's tar writer ends one),
            # which dockerd recognises (layer.DigestSHA256EmptyTar) and keeps out of the image's layers: a build's
            # ENV or CMD step adds no layer, and leaves a thin image thin (nothing is published).
            def empty(out: IO[bytes]) -> None:
                out.write(bytes(1024))

            return empty
        image = self._thin_below(layer_id, key)
        if image is not None and self.publishing is not None:
            data = self._publish(layer_id, tree, image, self.publishing)

            def descriptor(out: IO[bytes]) -> None:
                out.write(data)

            return descriptor

        def write(out: IO[bytes]) -> None:
            write_layer(tree, out, "none", self.xattr_namespace, self.uid_back, self.gid_back)

        return write

    def apply_diff(self, layer_id: str, parent: str, stream: IO[bytes]) -> int:
        from ...layers.unpack import UnpackOptions, unpack

        check_id(layer_id)
        with self._lock(layer_id):
            key = self._get(layer_id)
            if not key.startswith(RW):
                raise FailedPrecondition(f"layer {layer_id} already has its diff: a layer takes one ApplyDiff")
            info = self.sn.stat(key)
            expected = info.parent[len(LAYER) :] if info.parent.startswith(LAYER) else info.parent
            if parent and parent != expected:
                raise InvalidArgument(f"ApplyDiff: layer {layer_id} is on {expected or 'nothing'}, not on {parent}")
            if self._count(layer_id) > 0:
                raise FailedPrecondition(f"layer {layer_id} is mounted: cannot apply a diff to it")
            tree = self.sn.tree(key)
            if os.listdir(tree):
                raise FailedPrecondition(f"layer {layer_id} is not empty: a diff applies to a new layer only")
            opts = UnpackOptions(xattr_namespace=self.xattr_namespace, uid_map=self.uid_map, gid_map=self.gid_map)
            result = unpack(stream, tree, opts)
            self.sn.commit(LAYER + layer_id, key, info.labels)
            return result.bytes_written

    # -- thin images ------------------------------------------------------------------------------------

    def _thin_below(self, layer_id: str, key: str) -> ThinImage | None:
        """The descriptor of the thin image's layer right below ``key`` (or below its ``-init`` layer), if the
        chain has one; None (logged when the chain is thin all the same) otherwise."""
        name = self.sn.thin_layer(key)
        if not name:
            return None
        below = self.sn.stat(key).parent
        while below != name:
            if not below.endswith("-init"):
                self.log.info(
                    "thin-diff-ordinary",
                    layer=layer_id,
                    reason=f"{below} lies between it and the thin image's layer {name}: its changes are an "
                    "ordinary layer",
                )
                return None
            below = self.sn.stat(below).parent
        if self.publishing is None:
            self.log.info(
                "thin-diff-ordinary",
                layer=layer_id,
                reason="no S3 bucket to publish to (serve docker-graphdriver --s3-bucket): its changes are an "
                "ordinary layer on the thin image's",
            )
            return None
        return self.sn.thin(name)

    def _publish(self, layer_id: str, tree: str, image: ThinImage, publishing: Publishing) -> bytes:
        """Publish the changes in ``tree`` over the thin image ``image`` (as ``thin publish``); the new
        descriptor's layer tar."""
        from ...repository.convert import descriptor_tar
        from ...repository.publish import publish_changes

        with publishing.client() as client:
            new, published = publish_changes(
                tree,
                image,
                client,
                self.sn.layout,
                compression=publishing.compression,
                repository_name=publishing.repository_name,
                xattr_namespace=self.xattr_namespace,
                uid=self.uid_back,
                gid=self.gid_back,
                log=self.log,
            )
        self.log.info(
            "thin-layer-published", layer=layer_id, digest=published.layer.digest, uploaded=published.uploaded
        )
        if publishing.wait_seconds > 0:
            # Until the publisher has put it in the store's repository: a container of the committed image (the
            # next step of a docker build) can then start at once.
            from ...repository import layers
            from ...repository.publish import wait_for

            root = layers.parse(read_text(self.sn.layout.layer_repository_file))[0]
            wait_for(root, published.layer.digest, publishing.wait_seconds)
            self.log.info("thin-layer-in-repository", layer=layer_id, digest=published.layer.digest)
        return descriptor_tar(new.to_json())

    def _on_thin(self, key: str) -> bool:
        """Whether ``key`` is a thin image's layer or stands on one."""
        return bool(self.sn.thin_layer(key)) or self._own_tree_only(key)

    def _own_tree_only(self, key: str) -> bool:
        """Whether the committed layer ``key`` is a thin image's (a damaged descriptor counts: it is one
        file, shown as it is)."""
        from ...errors import InvalidImage

        try:
            return self.sn.thin(key) is not None
        except InvalidImage:
            return True

    # -- helpers -----------------------------------------------------------------------------------------

    def _lock(self, layer_id: str) -> threading.Lock:
        with self._locks_lock:
            return self._locks.setdefault(layer_id, threading.Lock())

    def _find(self, layer_id: str) -> str | None:
        """The key of the layer ``layer_id`` (active or committed), or None."""
        for key in (RW + layer_id, LAYER + layer_id):
            try:
                info = self.sn.stat(key)
            except NotFound:
                continue
            if info.kind in (KIND_ACTIVE, KIND_COMMITTED):
                return key
        return None

    def _get(self, layer_id: str) -> str:
        key = self._find(layer_id)
        if key is None:
            raise NotFound(f"layer {layer_id} does not exist")
        return key

    def _as_parent(self, parent: str) -> str:
        """The committed snapshot of the layer ``parent``, committing it now if it is still active."""
        check_id(parent, "parent")
        with self._lock(parent):
            key = self._find(parent)
            if key is None:
                raise NotFound(f"parent layer {parent} does not exist")
            if key.startswith(RW):
                if self._count(parent) > 0 and self._mounted(os.path.join(self.mnt, parent)):
                    raise FailedPrecondition(
                        f"parent layer {parent} is mounted (Get without Put): it cannot be a parent"
                    )
                self._unmount(parent)
                self.sn.commit(LAYER + parent, key, self.sn.stat(key).labels)
                key = LAYER + parent
            return key

    def _against(self, layer_id: str, parent: str) -> str:
        """The key of ``layer_id``, which must be on ``parent`` (dockerd's Diff, Changes and DiffSize)."""
        check_id(layer_id)
        key = self._get(layer_id)
        below = self.sn.stat(key).parent
        own = below[len(LAYER) :] if below.startswith(LAYER) else below
        if parent != own:
            raise Unsupported(
                f"layer {layer_id} is on {own or 'nothing'}: graftfs compares a layer with its own parent only, "
                f"not with {parent or 'nothing'}"
            )
        return key

    def _lowers(self, key: str) -> list[str]:
        """The directories the mounts of ``key`` stack under its own tree, nearest first (on a thin image, the
        repository's layers)."""
        return self.sn.lower_dirs(key)

    def _count(self, layer_id: str) -> int:
        text = read_text(os.path.join(self.refs, layer_id), "0").strip()
        return int(text) if text.isdigit() else 0

    def _set_count(self, layer_id: str, count: int) -> None:
        atomic_write(os.path.join(self.refs, layer_id), str(count).encode(), 0o600, sync=False)

    def _mounted(self, point: str) -> bool:
        return any(m.point == point for m in kernel.mountinfo())

    def _unmount(self, layer_id: str) -> None:
        """Undo ``Get`` whatever the count: unmount, drop the view and the count, remove the mount point."""
        point = os.path.join(self.mnt, layer_id)
        while self._mounted(point):
            kernel.unmount(point)
        try:
            self.sn.remove(VIEW + layer_id)
        except NotFound:
            pass
        unlink(os.path.join(self.refs, layer_id))
        try:
            os.rmdir(point)
        except FileNotFoundError:
            pass

    def _quota(self) -> str:
        from ...store.features import load

        if not os.path.isfile(self.sn.layout.features_file):
            return "none (a bare directory, not a store)"
        features = load(self.sn.layout)
        return features.quota if features is not None else "none"

    def _size_opt(self, storage_opt: dict[str, str]) -> int:
        size = 0
        for name, value in storage_opt.items():
            if name.lower() != "size":
                raise InvalidArgument(f"--storage-opt {name}: graftfs knows only size")
            size = parse_size(value)
        if size and self._quota() not in LIMITING:
            raise Unsupported(
                f"--storage-opt size={storage_opt.get('size', size)}: this graftfs store has no quota backend "
                f"that limits a layer (quota: {self._quota()}; a store on btrfs, or on XFS mounted with "
                "prjquota, has one)"
            )
        return size

    def _backend(self) -> Backend:
        from ...quota import load

        return load(self._quota(), self.sn.layout)


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """A size as Docker's ``--storage-opt size=`` takes it (``units.RAMInBytes``): a number of bytes with an
    optional binary unit, ``10G``, ``512m``, ``1.5GiB``."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtTbB]?)(?:i?[bB])?\s*", text or "")
    if not found:
        raise InvalidArgument(f"--storage-opt size={text}: not a size (such as 10G or 512m)")
    size = int(float(found.group(1)) * _UNITS[found.group(2).lower()])
    if size <= 0:
        raise InvalidArgument(f"--storage-opt size={text}: a size must be more than 0")
    return size


def _whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _changes(upper: str, lowers: list[str], xattr_namespace: str) -> list[dict[str, Any]]:
    """What the layer's tree ``upper`` changed over ``lowers`` (nearest first), as dockerd's
    ``archive.Change`` list: paths from ``/``, kind 0 modified, 1 added, 2 deleted; sorted by path. As
    Docker's overlay changes: a directory that is only a parent of a change, and looks as it did below, is
    reported once as modified, not as its own change."""

    def below(rel: str) -> os.stat_result | None:
        for lower in lowers:
            st = _lstat(os.path.join(lower, rel))
            if st is not None:
                return None if _whiteout(st) else st
        return None

    changes: list[dict[str, Any]] = []
    changed_dirs: set[str] = set()

    def walk(rel: str) -> None:
        for name in sorted(os.listdir(os.path.join(upper, rel))):
            path = os.path.join(rel, name)
            st = os.lstat(os.path.join(upper, path))
            shown = "/" + path
            kind = CHANGE_ADD
            if _whiteout(st):
                kind = CHANGE_DELETE
            else:
                old = below(path)
                if old is not None:
                    kind = CHANGE_MODIFY
                    if (
                        stat.S_ISDIR(old.st_mode)
                        and stat.S_ISDIR(st.st_mode)
                        and old.st_mode == st.st_mode
                        and int(old.st_mtime) == int(st.st_mtime)
                        and not _opaque(os.path.join(upper, path), xattr_namespace)
                    ):
                        kind = -1  # only the parent of what changed
            if kind in (CHANGE_ADD, CHANGE_DELETE) and rel and "/" + rel not in changed_dirs:
                changes.append({"Path": "/" + rel, "Kind": CHANGE_MODIFY})
                changed_dirs.add("/" + rel)
            if kind != -1:
                changes.append({"Path": shown, "Kind": kind})
                if stat.S_ISDIR(st.st_mode):
                    changed_dirs.add(shown)
            if stat.S_ISDIR(st.st_mode):
                walk(path)

    walk("")
    changes.sort(key=lambda c: str(c["Path"]))
    return changes


def _opaque(path: str, xattr_namespace: str) -> bool:
    try:
        return os.getxattr(path, f"{xattr_namespace}.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def _apparent_size(path: str) -> int:
    """Bytes of everything under ``path`` but directories, hard links once (Docker's ``directory.Size``)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [path]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
                    continue
                if st.st_nlink > 1:
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


__all__ = ["Driver", "check_id", "id_maps"]

"""The public Python API: ``Store(path).create(url, image_id)`` does what ``graftfs create`` does.

Every front end (the Garden CLI today) is a thin adapter over this class. It owns the data flow::

    URL ─► reference ─► source (manifest, config) ─► verified layer streams ─► volumes ─► image ─► mount
"""

from __future__ import annotations

import os
import time

from .errors import (
    AlreadyExists,
    FailedPrecondition,
    GraftfsError,
    InvalidArgument,
    KernelError,
    NotFound,
    Unsupported,
    VerificationError,
    os_reason,
)
from .log import NULL, Logger
from .mount import kernel
from .store.fsutil import atomic_write, read_text
from .store.images import DiskUsage, Images
from .store.layout import Layout, validate_image_id

TYPE_CHECKING = False  # the CLI imports this module on every run: keep typing and dataclasses out
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from .idmap import Mapping, Namespace
    from .metrics import Metrics
    from .progress import Progress
    from .pull import LayerBuilder
    from .quota import Backend
    from .repository.thin import ThinImage
    from .sources.base import ImageSpec, Source
    from .store.features import Features
    from .store.gc import CleanResult
    from .store.volumes import Volumes

IMAGE_LOCK_WAIT = 30.0
#: GrootFS's words for a store that init-store has not made (yet): scripts and Garden's operators know them.
STORE_NOT_INITIALIZED = "Store path is not initialized. Please run init-store."
#: Layers pulled at once. Docker and containerd use 3 too: enough to overlap one layer's download with
#: another's decompression and a third's unpacking, without opening many connections per create.
PULL_WORKERS = 3


class CreateOptions:
    """How to create an image (the create flags). Keyword-only, so new options never break callers."""

    __slots__ = (
        "disk_limit_bytes",
        "ephemeral",
        "exclude_image_from_quota",
        "insecure_registries",
        "mount",
        "password",
        "progress",
        "remote_layer_certificates",
        "skip_layer_validation",
        "unenforceable_disk_limit",
        "username",
    )

    def __init__(
        self,
        *,
        mount: bool = True,
        skip_layer_validation: bool = False,
        disk_limit_bytes: int = 0,
        exclude_image_from_quota: bool = False,
        insecure_registries: tuple[str, ...] = (),
        username: str = "",
        password: str = "",
        remote_layer_certificates: str = "",
        progress: Progress | None = None,
        unenforceable_disk_limit: str = "warn",
        ephemeral: bool = False,
    ) -> None:
        self.mount = mount
        self.skip_layer_validation = skip_layer_validation
        self.disk_limit_bytes = disk_limit_bytes
        self.exclude_image_from_quota = exclude_image_from_quota
        # host[:port] reached over TLS without verification, or plain HTTP when TLS fails
        self.insecure_registries = tuple(insecure_registries)
        self.username = username  # registry credentials; empty means anonymous
        self.password = password
        # A directory of CAs (*.crt) and a client pair (*.cert, *.key) for layers fetched from their `urls`
        self.remote_layer_certificates = remote_layer_certificates
        self.progress = progress  # told about every layer pulled (the CLI draws it on a terminal)
        # A disk limit on a store without quota support: "warn" (create, log disk-limit-not-enforced) or
        # "refuse" (fail the create before pulling).
        if unenforceable_disk_limit not in ("warn", "refuse"):
            raise InvalidArgument(
                f"unenforceable disk limit policy must be warn or refuse, not `{unenforceable_disk_limit}`"
            )
        self.unenforceable_disk_limit = unenforceable_disk_limit
        # The writable layer in memory (a tmpfs as large as the disk limit), gone with the image.
        self.ephemeral = ephemeral

    def __repr__(self) -> str:  # never show the password
        fields = ", ".join(
            f"{name}={'***' if name == 'password' and self.password else repr(getattr(self, name))}"
            for name in self.__slots__
        )
        return f"CreateOptions({fields})"


class DiskLimit:
    """GrootFS's disk-limit arithmetic in one place: an image may use ``bytes`` (0: no limit), its layers
    counting against them unless ``excluded`` (``--exclude-image-from-quota``). Whether the store can
    enforce it is the quota backend's to say (``create`` warns or refuses by the caller's policy)."""

    __slots__ = ("bytes", "excluded")

    def __init__(self, limit: int, excluded: bool) -> None:
        if limit < 0:
            raise InvalidArgument("invalid argument: disk limit cannot be negative")
        self.bytes = limit
        self.excluded = excluded

    @property
    def pull_budget(self) -> int:
        """Uncompressed bytes a pull may unpack before it is stopped (0: unbounded), as GrootFS stops one."""
        return 0 if self.excluded else self.bytes

    def check_layers(self, compressed: int) -> None:
        """Refuse, before pulling, an image whose compressed layers alone exceed the limit."""
        if self.bytes > 0 and not self.excluded and compressed > self.bytes:
            raise InvalidArgument(f"layers exceed disk quota {compressed}/{self.bytes} bytes")

    def writable_bytes(self, layers: int) -> int:
        """The writable layer's quota once the layers (``layers`` bytes) are there: what is left of the limit,
        or all of it when the image is excluded; 0 for no limit."""
        if self.bytes == 0:
            return 0
        if self.excluded:
            return self.bytes
        if self.bytes < layers:
            raise InvalidArgument("disk limit is smaller than volume size")
        return self.bytes - layers


class Image:
    """A created image. ``mount`` is set when the caller must perform the mount (``mount=False``)."""

    __slots__ = ("config", "env", "id", "layers_built", "mount", "path", "rootfs")

    def __init__(
        self,
        *,
        id: str,
        path: str,
        rootfs: str,
        env: list[str],
        mount: dict[str, Any] | None,
        config: dict[str, Any],
        layers_built: int,
    ) -> None:
        self.id = id
        self.path = path
        self.rootfs = rootfs
        self.env = env
        self.mount = mount
        self.config = config
        self.layers_built = layers_built

    def __repr__(self) -> str:
        return f"Image(id={self.id!r}, rootfs={self.rootfs!r})"


class Store:
    """A graftfs store at ``path``, as GrootFS's commands see it: ``init`` makes it, ``create`` makes an image
    (a root filesystem over the image's shared layers, mounted or returned as a mount), ``delete`` removes one,
    ``list``, ``stats`` and ``clean`` read and tidy it.

    Every method is safe against other processes using the same store at the same time, and against a
    process killed at any instant (see docs/architecture.md, "Store protocol"). Failures are
    :class:`graftfs.errors.GraftfsError` subclasses with one-line messages, and leave the store as it was.
    For containerd's snapshot verbs over the same store, see :class:`graftfs.store.snapshots.Snapshotter`."""

    def __init__(
        self, path: str, logger: Logger = NULL, rootless: bool = False, metrics: Metrics | None = None
    ) -> None:
        """``rootless``: this process runs as root of a user namespace made with the store's own mappings
        (see :mod:`graftfs.userns`), so IDs are written as they are and the kernel maps them. ``metrics``
        (a :class:`graftfs.metrics.Metrics`) receives GrootFS's metrics; none are measured without it."""
        self.metrics = metrics
        self.layout = Layout.at(path)
        self.rootless = rootless
        self._features: Features | None = None
        self.path = self.layout.root
        self.log = logger
        self.images = Images(self.layout)
        self._volumes: Volumes | None = None

    @property
    def volumes(self) -> Volumes:
        # Imported when first needed: delete, list and stats never touch volumes, and every import is paid
        # on each of Garden's calls.
        if self._volumes is None:
            from .store.volumes import Volumes

            self._volumes = Volumes(self.layout)
        return self._volumes

    # -- store ------------------------------------------------------------------------------------------------

    def exists(self) -> bool:
        """An initialized store is there (a bare directory is not a store)."""
        return self.layout.is_initialized()

    def require(self) -> None:
        if not self.layout.is_initialized():
            raise FailedPrecondition(STORE_NOT_INITIALIZED)

    def namespace(self) -> Namespace:
        from .idmap import Namespace

        return Namespace.from_json(read_text(self.layout.namespace_file))

    def init(
        self,
        uid_mappings: Sequence[Mapping] = (),
        gid_mappings: Sequence[Mapping] = (),
        size_bytes: int = 0,
        shared_layers: str = "",
        layer_repository: str = "",
    ) -> None:
        """Create the store (idempotent). Mappings are a property of the store and cannot change later.
        ``size_bytes`` > 0 puts the store on an XFS filesystem with project quotas, in a loop-mounted
        ``<store>.backing-store`` file of that size, as GrootFS does (unless the store is a mount already).
        ``shared_layers`` (a directory) keeps one unshifted copy of the layers there for every store that
        names it, whatever their mappings: a store with mappings then mounts its layers idmapped.
        ``layer_repository`` (a read-only directory in DUCC's layout, see :mod:`graftfs.repository.layers`)
        is where creates find layers to use in place instead of pulling them; it is checked before anything
        is written, and cannot change later either."""
        from .idmap import Namespace

        log = self.log.session("store-manager-init-store", storePath=self.path)
        log.debug("starting")
        repository = self._check_repository(layer_repository) if layer_repository else ""
        if size_bytes > 0:
            self._backing_store(size_bytes)
        wanted = Namespace(list(uid_mappings), list(gid_mappings))
        if shared_layers or self.layout.shared_layers() is not None:
            self._share_layers(shared_layers, bool(wanted.uid_mappings or wanted.gid_mappings))
        os.makedirs(self.layout.meta, mode=0o755, exist_ok=True)
        if os.path.exists(self.layout.namespace_file):
            log.debug("store-already-initialized")
            have = self.namespace()
            if sorted(have.uid_mappings) != sorted(wanted.uid_mappings):
                raise InvalidArgument("provided UID mappings do not match those already configured in the store")
            if sorted(have.gid_mappings) != sorted(wanted.gid_mappings):
                raise InvalidArgument("provided GID mappings do not match those already configured in the store")
        else:
            atomic_write(self.layout.namespace_file, wanted.to_json(), 0o644)
        owner = (0, 0) if self.rootless else wanted.owner
        for directory in [*self.layout.directories(), self.layout.released]:
            os.makedirs(directory, mode=0o755, exist_ok=True)
            if owner != (0, 0):
                os.chown(directory, *owner)
        if owner != (0, 0):
            os.chown(self.path, *owner)
        os.chmod(self.path, 0o700)
        from .store import features

        self._features = features.probe(self.layout)
        features.save(self.layout, self._features)
        if repository:
            self._record_repository(repository, wanted, log)
        log.debug("store-initialized", **self._features.as_dict())
        log.debug("ending")

    def _check_repository(self, directory: str) -> str:
        """The repository's real path: there, in DUCC's layout, root's only, and the one this store records
        if it records one (a store's repository cannot change: its images' mounts name it)."""
        from .repository import layers

        real = layers.check(directory)
        recorded = read_text(self.layout.layer_repository_file)
        if recorded and layers.parse(recorded)[0] != real:
            raise InvalidArgument(
                f"store {self.path} already uses the layer repository {layers.parse(recorded)[0]}; a store's "
                "repository cannot change"
            )
        return real

    def _record_repository(self, repository: str, namespace: Namespace, log: Logger) -> None:
        from .repository import layers

        why = ""
        if self.rootless:
            why = "rootless: the repository's files would show with IDs this store's namespace does not map"
        elif namespace.uid_mappings or namespace.gid_mappings:
            why = layers.probe_idmapped(self.layout, repository, namespace.kernel_maps())
        os.makedirs(self.layout.repository_links, mode=0o755, exist_ok=True)
        hide = not self.rootless and layers.make_hide(self.layout)
        atomic_write(self.layout.layer_repository_file, layers.record(repository, not why, why), 0o644)
        log.debug("layer-repository", path=repository, idmapped=not why, why=why, hide_markers=hide)

    def _share_layers(self, directory: str, mapped: bool) -> None:
        current = self.layout.shared_layers()
        if not directory:
            return  # re-init of a sharing store
        if not os.path.isabs(directory):
            raise InvalidArgument(f"shared layers directory `{directory}` must be an absolute path")
        directory = os.path.normpath(directory)
        if current is not None and current != directory:
            raise InvalidArgument(f"store {self.path} already shares the layers in {current}")
        if current is None and os.path.isdir(self.layout.volumes):
            raise InvalidArgument(f"store {self.path} has layers of its own; only a new store can share layers")
        if self.rootless:
            raise Unsupported("rootless: sharing layers between stores needs idmapped mounts, which need root")
        from .store.features import Features

        if mapped and not Features(kernel=os.uname().release).idmapped_mounts:
            raise Unsupported(
                "sharing layers with a store that has ID mappings needs idmapped mounts on overlay layers "
                f"(Linux 5.19 or later); this kernel is {os.uname().release}"
            )
        for name in ("volumes", "l", "meta", "locks", "stores"):
            os.makedirs(os.path.join(directory, name), mode=0o755, exist_ok=True)
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        for name in ("volumes", "l", "locks"):
            link = os.path.join(self.path, name)
            if not os.path.lexists(link):
                os.symlink(os.path.join(directory, name), link)
        member = os.path.join(directory, "stores", _store_key(self.path))
        if not os.path.lexists(member):
            os.symlink(self.path, member)

    def layers_mode(self) -> tuple[str, bool]:
        """How this store keeps its layers, in words (for ``graftfs features``), and whether its mounts are
        idmapped."""
        shared = self.layout.shared_layers()
        namespace = self.namespace()
        mapped = bool(namespace.uid_mappings or namespace.gid_mappings)
        if shared is None:
            return "this store's own" + (", unpacked with its ID mappings applied" if mapped else ""), False
        mode = f"shared, unshifted, with every store using {shared}"
        return mode + ("; this store's ID mappings are applied by idmapped mounts" if mapped else ""), mapped

    def layer_repository(self) -> str:
        """The store's layer repository and how its creates use it, in words ("" when it has none)."""
        record = read_text(self.layout.layer_repository_file)
        if not record:
            return ""
        from .repository import layers

        root, idmapped, why = layers.parse(record)
        if self.rootless:
            return f"{root}: not used (rootless: its files would show with IDs this namespace does not map)"
        namespace = self.namespace()
        if not (namespace.uid_mappings or namespace.gid_mappings):
            return f"{root}: layers found there are used in place, not pulled"
        if idmapped:
            return f"{root}: layers found there are used in place, mounted idmapped with this store's mappings"
        return f"{root}: not used, layers are pulled (this store has ID mappings, and {why})"

    def features(self) -> Features:
        """What this caller can do in this store (probed by ``init``, kept in ``meta/features.json``)."""
        if self._features is None:
            from .store import features

            self.require()
            found = features.load(self.layout)
            if found is None:  # a store from before features were recorded
                found = features.probe(self.layout)
                features.save(self.layout, found)
            self._features = found
        return self._features

    def delete_store(self) -> None:
        log = self.log.session("store-manager-delete-store")
        log.debug("starting")
        try:
            self._delete_store(log)
        finally:
            log.debug("ending")

    def _delete_store(self, log: Logger) -> None:
        """Delete every image and the store. A mount in the store that graftfs did not make (a bind of a
        host directory into an image, say) stops it before anything is removed, naming the mount."""
        if not os.path.exists(self.path):
            log.info("store-not-found", storePath=self.path)
            return
        try:
            ids = os.listdir(self.layout.images)
        except OSError as exc:
            raise FailedPrecondition(f"listing images: open {self.layout.images}: {os_reason(exc)}") from None
        self._refuse_foreign_mounts()
        for image_id in ids:
            if image_id.startswith("."):
                self.images.remove_uncommitted(image_id)  # handles dot-named leftovers too
            else:
                with self.images.lock(image_id).held(timeout=IMAGE_LOCK_WAIT):
                    self.images.delete(image_id)
        shared = self.layout.shared_layers()
        if shared is not None:
            try:
                os.unlink(os.path.join(shared, "stores", _store_key(self.path)))
            except FileNotFoundError:
                pass
        backing = self.path.rstrip("/") + ".backing-store"
        if os.path.exists(backing) and kernel.is_mountpoint(self.path):
            kernel.unmount(self.path)
            os.unlink(backing)
        from .store.images import remove

        remove(self.path, "deleting store path")

    def _refuse_foreign_mounts(self) -> None:
        from .store.images import foreign_mount, is_own_mount

        real = os.path.realpath(self.path)
        images = os.path.join(real, "images") + "/"
        for point, fstype in kernel.mount_entries(real):
            if point == real:
                continue  # the store's own backing filesystem (init-store --store-size-bytes)
            image_dir = images + point[len(images) :].split("/", 1)[0] if point.startswith(images) else ""
            if not image_dir or not is_own_mount(image_dir, point, fstype):
                raise foreign_mount("deleting image path" if image_dir else "deleting store path", point, fstype)

    def _backing_store(self, size: int) -> None:
        if os.path.isdir(self.path) and kernel.is_mountpoint(self.path):
            return
        backing = self.path.rstrip("/") + ".backing-store"
        created = not os.path.exists(self.path)
        os.makedirs(self.path, mode=0o700, exist_ok=True)
        with open(backing, "wb") as f:
            f.truncate(size)
        try:
            kernel.run("mkfs.xfs", "-f", "-q", backing)
            try:
                kernel.run("mount", "-o", "loop,pquota,noatime", backing, self.path)
            except KernelError as exc:
                # Tell a kernel without XFS quotas (CONFIG_XFS_QUOTA) from one without loop devices or XFS.
                try:
                    kernel.run("mount", "-o", "loop,noatime", backing, self.path)
                except KernelError:
                    raise exc from None
                kernel.unmount(self.path)
                raise KernelError(
                    "this kernel's XFS has no quota support (mounting with pquota fails, without it works), so "
                    "disk limits cannot be enforced on an XFS store here"
                ) from None
        except KernelError as exc:
            os.unlink(backing)
            if created:
                os.rmdir(self.path)
            raise KernelError(
                f"init-store --store-size-bytes: making the XFS backing store (needs xfsprogs, loop devices and "
                f"XFS quotas): {exc.message}"
            ) from None

    # -- images -----------------------------------------------------------------------------------------------

    def create(self, url: str, image_id: str, options: CreateOptions | None = None) -> Image:
        """Make the image ``image_id`` from ``url`` (``docker://``, ``oci://``, a rootfs tarball): resolve
        the reference, pull and verify the layers that are not in the store yet (each unpacked once, shared
        by every image), lay out the writable layer (limited by ``options.disk_limit_bytes`` where the
        store's quota backend can), then mount the rootfs or, with ``mount=False``, return the mount.

        AlreadyExists if the ID is taken; InvalidArgument for a bad URL or limit; NotFound, PermissionDenied
        or Unavailable from the source; VerificationError when a digest does not match; Unsupported for what
        this caller cannot do in this store. A failed create leaves the store as it found it."""
        start_ns = time.monotonic_ns()
        options = options or CreateOptions()
        validate_image_id(image_id)
        self.require()
        log = self.log.session("groot-creating", imageID=image_id)
        log.info("starting")
        try:
            return self._create(url, image_id, options, log, start_ns)
        except BaseException:
            log.info("ending")  # GrootFS logs the end of a session whatever happens (a deferred call)
            raise

    def _create(self, url: str, image_id: str, options: CreateOptions, log: Logger, start_ns: int) -> Image:
        limit = DiskLimit(options.disk_limit_bytes, options.exclude_image_from_quota)
        if self.images.is_committed(image_id):
            raise AlreadyExists(f"image for id `{image_id}` already exists")
        from . import reference

        ref = reference.parse(url)
        feats = self.features()
        from . import quota

        backend = quota.load(quota.chosen(feats.quota, options.ephemeral), self.layout)
        if limit.bytes > 0 and not backend.enforces and options.unenforceable_disk_limit == "refuse":
            raise Unsupported(
                f"a disk limit was asked for, and {self.path} ({feats.filesystem}) has no quota support to enforce "
                "it (create.unenforceable_disk_limit is refuse)"
            )
        self._check_possible(feats, options)

        # The store's layer repository, checked before anything is asked of the source (one failed open in a
        # store without one: nothing else is paid there).
        repository = read_text(self.layout.layer_repository_file)
        if repository:
            from .repository import layers

            layers.check(layers.parse(repository)[0])  # every create: unmounted, or made writable, since init-store

        from .sources import open_source

        source = open_source(
            ref,
            skip_layer_validation=options.skip_layer_validation,
            insecure_registries=options.insecure_registries,
            credentials=(options.username, options.password) if options.username or options.password else None,
            remote_layer_certificates=options.remote_layer_certificates,
            plain_http_hosts=self.layout.plain_http_hosts,
        )
        try:
            return self._create_from(source, image_id, options, limit, feats, backend, repository, log, start_ns)
        finally:
            close = getattr(source, "close", None)  # a registry's keep-alive connections
            if close is not None:
                close()

    def _create_from(
        self,
        source: Source,
        image_id: str,
        options: CreateOptions,
        limit: DiskLimit,
        feats: Features,
        backend: Backend,
        repository: str,
        log: Logger,
        start_ns: int,
    ) -> Image:
        spec = source.resolve()
        thin_image = None
        if len(spec.layers) == 1 and self._may_be_thin(spec):
            from .repository import thin

            thin_image = thin.read_layer(source, spec.layers[0])
            if thin_image is not None:
                self._check_thin(thin_image, repository)
                spec = thin.image_spec(thin_image, spec.config)
        limit.check_layers(spec.compressed_size)
        volume_ids = [layer.volume_id for layer in spec.layers]
        mapping = self.namespace()
        owner = (0, 0) if self.rootless else mapping.owner
        # Layers are unpacked with the store's mappings applied, except rootless (the process is already in
        # the store's namespace: the kernel maps) and in shared layers (unshifted; idmapped mounts map).
        shared = self.layout.shared_layers() is not None
        translation = mapping
        if self.rootless or shared:
            from .idmap import Namespace

            translation = Namespace([], [])
        mapped = bool(mapping.uid_mappings or mapping.gid_mappings)
        idmap = mapping.kernel_maps() if shared and mapped else None
        if idmap is not None and not options.mount:
            raise Unsupported(
                "this store's layers are shared unshifted and mounted idmapped, which a runtime spec's mount "
                "cannot express: create without --without-mount"
            )
        # Layers found in the store's layer repository are used in place, not pulled.
        in_place: dict[int, tuple[str, str, str]] = {}
        hide = ""
        if repository:
            in_place, hide = self._in_place(repository, spec, mapped, feats, options, log)
            if thin_image is not None and len(in_place) != len(spec.layers):
                raise Unsupported(
                    f"thin image: {len(spec.layers) - len(in_place)} of its layers cannot be used in place from "
                    "the store's layer repository (the log says why), and a thin image has no layers to pull"
                )
            if in_place and mapped:
                idmap = mapping.kernel_maps()  # repository layers are unshifted: bound idmapped
        # The layers this store holds (pulls, if missing), bottom first, and the chain ID below each.
        own = [i for i in range(len(volume_ids)) if i not in in_place]
        own_ids = [volume_ids[i] for i in own]
        if in_place and own and not mapped:
            self._record_repository_chains(spec, volume_ids, in_place)
        # Refuse an image the kernel could never mount (too many layers) before pulling anything.
        driver = "fuse-overlayfs" if feats.overlay == "fuse-overlayfs" else "kernel"
        overlay = self.images.overlay(
            image_id, volume_ids, feats.overlay_options(), driver, idmap, in_place, unshifted_volumes=shared, hide=hide
        )
        overlay.check()
        builder: LayerBuilder | None = None

        def build(index: int, directory: str) -> int:
            # The builder (and what it imports) is only made when a layer is missing: not on a warm create.
            nonlocal builder
            if builder is None:
                from .pull import LayerBuilder

                builder = LayerBuilder(
                    self.layout,
                    source,
                    spec,
                    translation,
                    feats,
                    log,
                    options.progress,
                    self.metrics,
                    limit.pull_budget,
                )
            return builder.build(own[index], directory)

        with self.images.lock(image_id).held(timeout=IMAGE_LOCK_WAIT) as image_lock:
            try:
                # A base-directory layer takes owners from the layers below it, so it needs them built first.
                workers = 1 if any(layer.base_directory for layer in spec.layers) else PULL_WORKERS
                parents = [volume_ids[i - 1] if i > 0 else "" for i in own] if in_place else None
                lease = self.volumes.lease(own_ids, build, workers, parents)
                try:
                    base_size = sum(self.volumes.size(v) for v in own_ids)
                    quota_bytes = limit.writable_bytes(base_size)
                    if limit.bytes > 0 and not backend.enforces:
                        log.error("disk-limit-not-enforced", "this store has no quota support", limit=limit.bytes)
                    making = log.session("making-image", storePath=self.path, id=image_id)
                    making.info("starting")
                    path = self.images.create(image_id, own_ids, base_size, owner, backend, quota_bytes)
                    try:
                        if thin_image is not None:
                            # What publish stacks a new layer on: the descriptor this image was made from.
                            from . import jsonc

                            for name, data in (
                                ("thin.json", thin_image.to_json()),
                                ("thin-config.json", jsonc.dumps(spec.config).encode()),
                            ):
                                atomic_write(os.path.join(path, name), data, 0o600, sync=False)
                                backend.leave_out(os.path.join(path, name))
                        # Mounted before the commit record, while the lease still protects the layers: a
                        # create killed in between leaves an uncommitted directory that the next create of
                        # this ID (or clean) unmounts and removes, never a listed image without its mount.
                        if options.mount:
                            self.images.mount(overlay)
                        # The record names the store's volumes only: clean never looks at the repository.
                        self.images.commit(image_id, own_ids)
                        making.info("ending")
                    except BaseException:
                        self.images.remove_uncommitted(image_id)
                        raise
                except BaseException:
                    self.volumes.abandon(lease)
                    raise
            except BaseException:
                if not os.path.lexists(self.layout.image(image_id)) and not self.images.is_committed(image_id):
                    image_lock.discard()  # a failed create leaves no lock file behind either
                raise
            lease.release()
        if in_place:
            log.info("ending", layers=len(volume_ids), built=len(lease.built), in_repository=len(in_place))
        else:
            log.info("ending", layers=len(volume_ids), built=len(lease.built))
        if self.metrics is not None:
            self.metrics.since("ImageCreationTime", start_ns)
            downloaded = sum(layer.expect.size for layer in spec.layers if layer.volume_id in lease.built)
            self.metrics.size("DownloadedLayersSizeInBytes", max(downloaded, 0))
            self._emit_store_metrics(self.metrics, committed=True)
        return Image(
            id=image_id,
            path=path,
            rootfs=os.path.join(path, "rootfs"),
            env=spec.env,
            mount=None if options.mount else overlay.runtime_mount(),
            config=spec.config,
            layers_built=len(lease.built),
        )

    def _may_be_thin(self, spec: ImageSpec) -> bool:
        """Whether a one-layer image could be thin (its layer holding ``/thin.json`` only), found without
        reading it: a small blob that this store has not pulled as a layer already (a warm ordinary image)."""
        layer = spec.layers[0]
        size = layer.expect.size
        if size < 0 and not layer.blob.startswith("sha256:"):
            try:
                size = os.stat(layer.blob).st_size  # a rootfs tarball
            except OSError:
                return False
        if not 0 <= size <= 64 << 10:
            return False
        return not os.path.isdir(self.layout.volume(layer.volume_id))

    def _check_thin(self, image: ThinImage, record: str) -> None:
        """A thin image's layers must all be in the store's layer repository: refused, in one line naming the
        missing ones, when they are not, or when the store has no repository."""
        from .repository import layers, thin

        if not record:
            raise FailedPrecondition(thin.no_repository(image, self.path))
        root = layers.parse(record)[0]
        missing = [
            lay.digest for lay in image.layers if not os.path.isdir(layers.layer_dir(root, "sha256:" + lay.digest))
        ]
        if missing:
            raise NotFound(thin.missing(image, missing, root))

    def _in_place(
        self, record: str, spec: ImageSpec, mapped: bool, feats: Features, options: CreateOptions, log: Logger
    ) -> tuple[dict[int, tuple[str, str, str]], str]:
        """The layers of ``spec`` to use in place from the store's layer repository (index → short link
        relative to the store, layerfs path, its shim relative to the store if it has whiteouts), and the lower
        that hides DUCC's markers ("" if none is needed).
        A repository that is gone or writable by others fails the create; a layer that cannot be used in place
        is pulled, and the log says why (see :mod:`graftfs.repository.layers`)."""
        from .repository import layers

        root, idmapped, why = layers.parse(record)
        repository = layers.Repository(self.layout, root)
        found = [(i, layer.blob, repository.find(layer.blob)) for i, layer in enumerate(spec.layers)]
        present = [(i, digest, path) for i, digest, path in found if path is not None]
        if not present:
            return {}, ""
        reason = ""
        if self.rootless:
            reason = "rootless: the repository's files would show with IDs this store's namespace does not map"
        elif any(layer.base_directory for layer in spec.layers):
            reason = "the image has a base-directory layer, which takes its owners from the layers below it"
        elif mapped and not idmapped:
            reason = f"this store has ID mappings, and the repository's layers cannot be idmapped: {why}"
        elif mapped and not options.mount:
            reason = (
                "this store has ID mappings: the repository's layers are mounted idmapped, which a runtime spec's "
                "mount cannot express (create without --without-mount to use them)"
            )
        elif feats.overlay != "kernel":
            reason = f"this store's overlay is {feats.overlay}, not the kernel's"
        if reason:
            log.info("layer-repository-not-used", repository=root, layers=len(present), reason=reason)
            return {}, ""
        in_place: dict[int, tuple[str, str, str]] = {}
        hide = ""
        hide_ready = os.path.lexists(os.path.join(self.layout.repository_hide, layers.CATALOG_MARKER))
        for index, digest, path in present:
            flags = repository.verdict(digest, path).split(",")
            why_not = ""
            if layers.HIDE in flags and not hide_ready:
                why_not = "it has a .cvmfscatalog marker, and this store has no whiteout to hide it with"
            elif layers.SHIM in flags and feats.whiteouts != "device":
                why_not = (
                    "it holds OCI whiteouts as plain files, which overlayfs does not read as deletions, and this "
                    "caller cannot make the overlay whiteouts (0:0 character devices) that would apply them"
                )
            if why_not:
                log.info("layer-repository-layer-pulled", repository=root, digest=digest, reason=why_not)
                continue
            if layers.HIDE in flags:
                hide = os.path.relpath(self.layout.repository_hide, self.layout.root)
            shim = ""
            if layers.SHIM in flags:
                from .idmap import IdMap

                namespace = self.namespace()
                uid, gid = IdMap(namespace.uid_mappings), IdMap(namespace.gid_mappings)
                shim = repository.shim(digest, path, uid, gid, feats.xattrs)
            in_place[index] = (repository.link(digest, path) if not mapped else "", path, shim)
        return in_place, hide

    def _record_repository_chains(
        self, spec: ImageSpec, volume_ids: Sequence[str], in_place: dict[int, tuple[str, str, str]]
    ) -> None:
        """For each layer used in place, ``meta/repository-chains/<its chain ID>``: its digest and the chain ID
        below it, so that the snapshot core can stack the pulled layers above it (their records name their
        parent by chain ID only). Written once (a few bytes; never collected, like the verdicts); not fsynced:
        a lost one is written by the next create of an image that has the layer."""
        from . import jsonc

        for index in in_place:
            path = os.path.join(self.layout.repository_chains, volume_ids[index])
            if os.path.lexists(path):
                continue
            record = {"digest": spec.layers[index].blob, "parent": volume_ids[index - 1] if index else ""}
            os.makedirs(self.layout.repository_chains, mode=0o755, exist_ok=True)
            atomic_write(path, jsonc.dumps(record).encode(), sync=False)

    def delete(self, image_id_or_path: str) -> str:
        """Delete an image by ID or by its path. Returns the ID. Raises NotFound if there is none."""
        image_id = self.resolve_id(image_id_or_path)
        if not self.layout.is_initialized():
            # Garden deletes every container from both of its stores; one may never have been created.
            raise NotFound(f"Image `{image_id}` not found.")
        if not self.images.is_committed(image_id) and not os.path.lexists(self.layout.image(image_id)):
            # GrootFS finds the image before its delete session starts: an unknown ID (Garden asks both of
            # its stores) logs no groot-deleting.
            raise NotFound(f"Image `{image_id}` not found.")
        log = self.log.session("groot-deleting", imageID=image_id)
        log.info("starting")
        start_ns = time.monotonic_ns()
        try:
            with self.images.lock(image_id).held(timeout=IMAGE_LOCK_WAIT) as lock:
                deleting = log.session("deleting-image", storePath=self.path, id=image_id)
                deleting.info("starting")
                self.images.delete(image_id)
                lock.discard()  # one lock file per container ever created would pile up otherwise
                deleting.info("ending")
        finally:
            log.info("ending")
        if self.metrics is not None:
            self.metrics.since("ImageDeletionTime", start_ns)
            self._emit_store_metrics(self.metrics)
        return image_id

    def _check_possible(self, feats: Features, options: CreateOptions) -> None:
        """Refuse, before anything is pulled, what this caller cannot mount in this store."""
        if options.mount and self.rootless:
            # --without-mount is advised only where the runtime's own overlay mount would be accepted.
            raise Unsupported(
                "rootless: an overlay mounted by graftfs would exist only in its own user namespace; "
                + (
                    "use create --without-mount (create.without_mount: true) and let the runtime mount it"
                    if feats.runtime_can_mount
                    else f"and the kernel will not stack overlayfs on {self.path} ({feats.filesystem}), whoever "
                    f"mounts it: keep the store on a filesystem that is not {feats.filesystem} (a volume)"
                )
            )
        if feats.overlay == "none" and (options.mount or not feats.runtime_can_mount):
            # Without a mount the runtime's would be refused too: refused here, by name, rather than there.
            why, advice = feats.no_mount()
            raise Unsupported(
                f"this caller cannot mount overlayfs on {self.path} ({feats.filesystem}, kernel {feats.kernel}): "
                f"{why}: {advice}"
            )
        if not options.mount and feats.overlay == "fuse-overlayfs":
            raise Unsupported(
                f"the kernel will not stack overlayfs on {self.path} ({feats.filesystem}), so no overlay mount "
                "can be handed to the runtime; "
                # A rootless graftfs's own mount is refused above: only another filesystem helps it.
                + (
                    f"keep the store on a filesystem that is not {feats.filesystem} (a volume)"
                    if self.rootless
                    else "graftfs mounts this store with fuse-overlayfs: create without --without-mount"
                )
            )

    def _emit_store_metrics(self, metrics: Metrics, committed: bool = False) -> None:
        """UsedLayersSize and UnusedLayersSize (volumes some image uses, and the rest), and with
        ``committed`` also CommittedQuotaInBytes and UsedBackingStoreInBytes, as GrootFS emits them."""
        from .store.gc import committed_quota, in_use

        sizes = {v: self.volumes.size(v) for v in self.volumes.ids()}
        used = in_use(self.images)
        metrics.size("UsedLayersSize", sum(sizes[v] for v in used if v in sizes))
        metrics.size("UnusedLayersSize", sum(n for v, n in sizes.items() if v not in used))
        if committed:
            metrics.size("CommittedQuotaInBytes", committed_quota(self.layout, self.images))
            st = os.statvfs(self.path)
            metrics.size("UsedBackingStoreInBytes", (st.f_blocks - st.f_bfree) * st.f_frsize)

    def resolve_id(self, image_id_or_path: str) -> str:
        if image_id_or_path.startswith("/"):
            prefix = self.layout.images + "/"
            if not image_id_or_path.startswith(prefix):
                raise NotFound(f"path `{image_id_or_path}` is outside store path")
            image_id_or_path = image_id_or_path[len(prefix) :].rstrip("/")
        return validate_image_id(image_id_or_path)

    def list(self) -> list[str]:
        if not os.path.isdir(self.path):
            raise NotFound(f"no store found at {self.path}")
        log = self.log.session("groot-listing", storePath=self.path)
        log.info("starting")
        try:
            paths = [self.layout.image(i) for i in self.images.ids()]
            log.debug("list-images", imagePaths=paths)
            return paths
        finally:
            log.info("ending")

    def regenerate_volume_sizes(self) -> None:
        """Recompute every volume's size record from what is on disk (GrootFS's hidden
        generate-volume-size-metadata, used after upgrades)."""
        from . import jsonc

        self.require()
        for volume_id in self.volumes.ids():
            size = 0
            for root, _dirs, files in os.walk(self.layout.volume(volume_id)):
                for name in files:
                    st = os.lstat(os.path.join(root, name))
                    if not os.path.islink(os.path.join(root, name)):
                        size += st.st_size
            try:
                record = jsonc.loads(read_text(self.layout.volume_meta(volume_id), "{}"))
            except ValueError:
                record = {}
            record = {**record, "Size": size} if isinstance(record, dict) else {"Size": size}  # keeps its Parent
            atomic_write(self.layout.volume_meta(volume_id), jsonc.dumps(record).encode() + b"\n")

    def stats(self, image_id_or_path: str) -> DiskUsage:
        image_id = self.resolve_id(image_id_or_path)
        log = self.log.session("groot-stats", imageID=image_id)
        log.debug("starting")
        try:
            return self.images.usage(image_id, self.features().quota if self.exists() else "none")
        finally:
            log.debug("ending")

    def clean(self, threshold_bytes: int = 0, keep_seconds: float = 0) -> CleanResult:
        """GrootFS's clean; ``keep_seconds`` > 0 also keeps layers an image used that recently."""
        if threshold_bytes < 0:
            raise InvalidArgument("invalid argument: clean threshold cannot be negative")
        if not self.exists():
            raise NotFound(f"no store found at {self.path}")
        from .store.gc import clean

        log = self.log.session("groot-cleaning")
        log.info("starting", threshold=threshold_bytes)
        start = time.monotonic()
        start_ns = time.monotonic_ns()
        try:
            result = clean(self.layout, threshold_bytes, keep_seconds)
        except BaseException:
            log.info("ending")
            raise
        if self.metrics is not None:
            self.metrics.since("ImageCleanTime", start_ns)
            self._emit_store_metrics(self.metrics)
        log.info(
            "ending",
            ran=result.ran,
            collected=len(result.collected),
            leftovers=len(result.leftovers),
            seconds=round(time.monotonic() - start, 3),
        )
        return result


def _store_key(path: str) -> str:
    from hashlib import sha256

    return sha256(path.encode()).hexdigest()[:16]


__all__ = [
    "AlreadyExists",
    "CreateOptions",
    "DiskUsage",
    "FailedPrecondition",
    "GraftfsError",
    "Image",
    "KernelError",
    "NotFound",
    "Store",
    "VerificationError",
]

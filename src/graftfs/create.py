"""Making an image, the work of :meth:`graftfs.api.Store.create`: graftfs's data flow::

    URL ─► reference ─► source (manifest, config) ─► verified layer streams ─► volumes ─► image ─► mount

A module of its own so that the commands that do not create (a delete above all: Garden runs one process
per container create and one per delete) do not load it.
"""

from __future__ import annotations

import os

from . import quota, reference
from .api import IMAGE_LOCK_WAIT, Image
from .errors import AlreadyExists, InvalidArgument, Unsupported
from .sources import open_source
from .store.fsutil import atomic_write, read_text

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .api import CreateOptions, Store
    from .log import Logger
    from .pull import LayerBuilder
    from .quota import Backend
    from .sources.base import ImageSpec, Source
    from .store.features import Features

#: Layers pulled at once. Docker and containerd use 3 too: enough to overlap one layer's download with
#: another's decompression and a third's unpacking, without opening many connections per create.
PULL_WORKERS = 3


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


def create(store: Store, url: str, image_id: str, options: CreateOptions, log: Logger, start_ns: int) -> Image:
    """:meth:`Store.create` once it has checked the ID and the store and opened its log session."""
    limit = DiskLimit(options.disk_limit_bytes, options.exclude_image_from_quota)
    if store.images.is_committed(image_id):
        raise AlreadyExists(f"image for id `{image_id}` already exists")
    ref = reference.parse(url)
    feats = store.features()
    backend = quota.load(quota.chosen(feats.quota, options.ephemeral), store.layout)
    if limit.bytes > 0 and not backend.enforces and options.unenforceable_disk_limit == "refuse":
        raise Unsupported(
            f"a disk limit was asked for, and {store.path} ({feats.filesystem}) has no quota support to enforce "
            "it (create.unenforceable_disk_limit is refuse)"
        )
    _check_possible(store, feats, options)

    # The store's layer repository, checked before anything is asked of the source (one failed open in a
    # store without one: nothing else is paid there).
    repository = read_text(store.layout.layer_repository_file)
    if repository:
        from .repository import layers

        layers.check(layers.parse(repository)[0])  # every create: unmounted, or made writable, since init-store

    source = open_source(
        ref,
        skip_layer_validation=options.skip_layer_validation,
        insecure_registries=options.insecure_registries,
        credentials=(options.username, options.password) if options.username or options.password else None,
        remote_layer_certificates=options.remote_layer_certificates,
        plain_http_hosts=store.layout.plain_http_hosts,
        documents=store.layout.documents,
    )
    try:
        image = _create_from(store, source, image_id, options, limit, feats, backend, repository, log, start_ns)
    finally:
        close = getattr(source, "close", None)  # a registry's keep-alive connections
        if close is not None:
            close()
    remember = getattr(source, "remember", None)  # a registry's manifests and configs, for the next create
    if remember is not None:
        remember()
    return image


def _create_from(
    store: Store,
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
    if len(spec.layers) == 1 and _may_be_thin(store, spec):
        from .repository import layers, thin

        # Read once: an ordinary layer's pull takes the blob from the bytes read here (and verifies them).
        thin_image, source = thin.look_into(source, spec.layers[0])
        if thin_image is not None:
            layers.check_thin(store.path, thin_image, repository)
            spec = thin.image_spec(thin_image, spec.config)
    limit.check_layers(spec.compressed_size)
    volume_ids = [layer.volume_id for layer in spec.layers]
    mapping = store.namespace()
    owner = (0, 0) if store.rootless else mapping.owner
    # Layers are unpacked with the store's mappings applied, except rootless (the process is already in
    # the store's namespace: the kernel maps) and in shared layers (unshifted; idmapped mounts map).
    shared = store.layout.shared_layers() is not None
    translation = mapping
    if store.rootless or shared:
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
        from .repository import layers

        in_place, hide = layers.use_in_place(store, repository, spec, mapped, feats, options.mount, log)
        if thin_image is not None and len(in_place) != len(spec.layers):
            raise Unsupported(
                f"thin image: {len(spec.layers) - len(in_place)} of its layers cannot be used in place from "
                "the store's layer repository (the log says why), and a thin image has no layers to pull"
            )
        if in_place and mapped:
            idmap = mapping.kernel_maps()  # repository layers are unshifted: bound idmapped
        if in_place and len(in_place) < len(volume_ids) and not mapped:  # some are pulled, above these
            layers.record_chains(store.layout, spec, volume_ids, in_place)
    # The layers this store holds (pulls, if missing), bottom first, and the chain ID below each.
    own = [i for i in range(len(volume_ids)) if i not in in_place]
    own_ids = [volume_ids[i] for i in own]
    # Refuse an image the kernel could never mount (too many layers) before pulling anything.
    driver = "fuse-overlayfs" if feats.overlay == "fuse-overlayfs" else "kernel"
    overlay_options = feats.overlay_options()
    if options.mount and feats.volatile_overlay:
        # The rootfs graftfs mounts is `volatile`, as CRI-O's and podman's --rm containers are: no container
        # outlives its host's crash (and a power cut leaves this image garbage anyway: Images.commit), so
        # the kernel skips every sync of the store's filesystem for it: the container's fsyncs, and the
        # unmount's, which would otherwise write out the whole store filesystem's dirty data (every
        # container's) before delete removes this layer. What --without-mount prints stays GrootFS's.
        overlay_options += ("volatile",)
    overlay = store.images.overlay(
        image_id, volume_ids, overlay_options, driver, idmap, in_place, unshifted_volumes=shared, hide=hide
    )
    overlay.check()
    builder: LayerBuilder | None = None

    def build(index: int, directory: str) -> int:
        # The builder (and what it imports) is only made when a layer is missing: not on a warm create.
        nonlocal builder
        if builder is None:
            from .pull import LayerBuilder

            builder = LayerBuilder(
                store.layout,
                source,
                spec,
                translation,
                feats,
                log,
                options.progress,
                store.metrics,
                limit.pull_budget,
            )
        return builder.build(own[index], directory)

    with store.images.lock(image_id).held(timeout=IMAGE_LOCK_WAIT) as image_lock:
        try:
            # A base-directory layer takes owners from the layers below it, so it needs them built first.
            workers = 1 if any(layer.base_directory for layer in spec.layers) else PULL_WORKERS
            parents = [volume_ids[i - 1] if i > 0 else "" for i in own] if in_place else None
            lease = store.volumes.lease(own_ids, build, workers, parents)
            try:
                base_size = sum(store.volumes.size(v) for v in own_ids)
                quota_bytes = limit.writable_bytes(base_size)
                if limit.bytes > 0 and not backend.enforces:
                    log.error("disk-limit-not-enforced", "this store has no quota support", limit=limit.bytes)
                making = log.session("making-image", storePath=store.path, id=image_id)
                making.info("starting")
                path = store.images.create(image_id, own_ids, base_size, owner, backend, quota_bytes)
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
                        store.images.mount(overlay)
                    # The record names the store's volumes only: clean never looks at the repository.
                    store.images.commit(image_id, own_ids)
                    making.info("ending")
                except BaseException:
                    store.images.remove_uncommitted(image_id)
                    raise
            except BaseException:
                store.volumes.abandon(lease)
                raise
        except BaseException:
            if not os.path.lexists(store.layout.image(image_id)) and not store.images.is_committed(image_id):
                image_lock.discard()  # a failed create leaves no lock file behind either
            raise
        lease.release()
    if in_place:
        log.info("ending", layers=len(volume_ids), built=len(lease.built), in_repository=len(in_place))
    else:
        log.info("ending", layers=len(volume_ids), built=len(lease.built))
    if store.metrics is not None:
        store.metrics.since("ImageCreationTime", start_ns)
        downloaded = sum(layer.expect.size for layer in spec.layers if layer.volume_id in lease.built)
        store.metrics.size("DownloadedLayersSizeInBytes", max(downloaded, 0))
        store._emit_store_metrics(store.metrics, committed=True)
    return Image(
        id=image_id,
        path=path,
        rootfs=os.path.join(path, "rootfs"),
        env=spec.env,
        mount=None if options.mount else overlay.runtime_mount(),
        config=spec.config,
        layers_built=len(lease.built),
    )


def _may_be_thin(store: Store, spec: ImageSpec) -> bool:
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
    return not os.path.isdir(store.layout.volume(layer.volume_id))


def _check_possible(store: Store, feats: Features, options: CreateOptions) -> None:
    """Refuse, before anything is pulled, what this caller cannot mount in this store."""
    if options.mount and store.rootless:
        # --without-mount is advised only where the runtime's own overlay mount would be accepted.
        raise Unsupported(
            "rootless: an overlay mounted by graftfs would exist only in its own user namespace; "
            + (
                "use create --without-mount (create.without_mount: true) and let the runtime mount it"
                if feats.runtime_can_mount
                else f"and the kernel will not stack overlayfs on {store.path} ({feats.filesystem}), whoever "
                f"mounts it: keep the store on a filesystem that is not {feats.filesystem} (a volume)"
            )
        )
    if feats.overlay == "none" and (options.mount or not feats.runtime_can_mount):
        # Without a mount the runtime's would be refused too: refused here, by name, rather than there.
        why, advice = feats.no_mount()
        raise Unsupported(
            f"this caller cannot mount overlayfs on {store.path} ({feats.filesystem}, kernel {feats.kernel}): "
            f"{why}: {advice}"
        )
    if not options.mount and feats.overlay == "fuse-overlayfs":
        raise Unsupported(
            f"the kernel will not stack overlayfs on {store.path} ({feats.filesystem}), so no overlay mount "
            "can be handed to the runtime; "
            # A rootless graftfs's own mount is refused above: only another filesystem helps it.
            + (
                f"keep the store on a filesystem that is not {feats.filesystem} (a volume)"
                if store.rootless
                else "graftfs mounts this store with fuse-overlayfs: create without --without-mount"
            )
        )

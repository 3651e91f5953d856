"""The public Python API: ``Store(path).create(url, image_id)`` does what ``graftfs create`` does.

Every front end (the Garden CLI, the servers) is a thin adapter over this class. Making an image, the data
flow from URL to mount, is :mod:`graftfs.create`'s: a module of its own, which only creates load.
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
    VerificationError,
)
from .log import NULL, Logger
from .store.fsutil import read_text
from .store.images import DiskUsage, Images
from .store.layout import Layout, validate_image_id

TYPE_CHECKING = False  # the CLI imports this module on every run: keep typing and dataclasses out
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from .idmap import Mapping, Namespace
    from .metrics import Metrics
    from .progress import Progress
    from .repository.publish import Published
    from .store.features import Features
    from .store.gc import CleanResult
    from .store.volumes import Volumes

IMAGE_LOCK_WAIT = 30.0
#: GrootFS's words for a store that init-store has not made (yet): scripts and Garden's operators know them.
STORE_NOT_INITIALIZED = "Store path is not initialized. Please run init-store."


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
        from .store import lifecycle

        self._features = lifecycle.init(self, uid_mappings, gid_mappings, size_bytes, shared_layers, layer_repository)

    def features(self) -> Features:
        """What this caller can do in this store (probed by ``init``, kept in ``meta/features.json``)."""
        if self._features is None:
            from .store import features

            self.require()
            found = features.load(self.layout)
            if found is None:  # a store from before features were recorded
                from .store import probe

                found = probe.probe(self.layout)
                features.save(self.layout, found)
            self._features = found
        return self._features

    def delete_store(self) -> None:
        """Delete every image and the store. A mount in the store that graftfs did not make (a bind of a host
        directory into an image, say) stops it before anything is removed, naming the mount."""
        from .store import lifecycle

        lifecycle.delete_store(self)

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
        from .create import create  # its own module: delete, list and stats never load it

        try:
            return create(self, url, image_id, options, log, start_ns)
        except BaseException:
            log.info("ending")  # GrootFS logs the end of a session whatever happens (a deferred call)
            raise

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
            prefix = self.layout.images + os.sep  # IDs are single path components (validate_image_id)
            paths = [prefix + i for i in self.images.ids()]
            log.debug("list-images", imagePaths=paths)
            return paths
        finally:
            log.info("ending")

    def regenerate_volume_sizes(self) -> None:
        """Recompute every volume's size record from what is on disk (GrootFS's hidden
        generate-volume-size-metadata, used after upgrades)."""
        from .store import lifecycle

        lifecycle.regenerate_volume_sizes(self)

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

    # -- thin images -------------------------------------------------------------------------------------------

    def thin_publish(
        self,
        image_id: str,
        output: str,
        bucket: str,
        *,
        endpoint: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        compression: str = "gzip",
        repository_name: str = "",
        wait_repository: str = "",
        wait_timeout: float = 600.0,
    ) -> Published:
        """What ``graftfs thin publish ID --output oci:///PATH[:TAG]`` does, from Python: publish the changes
        of image ``image_id`` (created from a thin image) as a new layer, and write the thin image that has it
        on top of the image's own layers to ``output`` (an OCI layout, ``oci:///PATH[:TAG]``).

        The image's writable layer becomes an OCI layer (overlay whiteouts and opaque directories as ``.wh.``
        entries, deterministic; ``compression`` ``gzip`` or ``zstd``), uploaded to the S3 bucket ``bucket``
        as ``layers/<hex>`` (its digest) with ``If-None-Match: *``: the same changes published twice upload
        nothing the second time (the result's ``uploaded`` is False). ``endpoint``, ``region``,
        ``access_key`` and ``secret_key`` left None are read from the ``AWS_*`` environment variables as the
        AWS tools read them; secrets never appear in a message or a log. The new descriptor is the one the
        image was created from with the layer appended, its urls naming ``repository_name`` (default: the
        repository the descriptor names). With ``wait_repository`` (a repository directory, as a publisher
        fills it: ``graftfs thin publisher``), returns only once the layer is there, or raises Unavailable
        after ``wait_timeout`` seconds.

        Returns a :class:`graftfs.ThinPublished` (``layer``: its digest and url; ``key``; ``uploaded``;
        ``manifest``: the new image's manifest digest). FailedPrecondition for an image not in the store or
        not created from a thin image; InvalidArgument for a bad output, bucket or compression; S3's
        refusals (PermissionDenied, ...) and an unreachable S3 (Unavailable) in one line: then nothing is
        written (the output layout is written only once the upload has succeeded)."""
        from .repository.convert import parse_output, repository_dir
        from .repository.publish import publish, wait_for
        from .repository.s3 import S3Client

        parse_output(output)
        if compression not in ("gzip", "zstd"):
            raise InvalidArgument(f"invalid argument: compression `{compression}`: gzip or zstd")
        repository = repository_dir(wait_repository) if wait_repository else ""
        log = self.log
        client = S3Client(
            bucket, endpoint=endpoint, region=region, access_key=access_key, secret_key=secret_key, log=log
        )
        with client:
            result = publish(
                self, image_id, client, output, compression=compression, repository_name=repository_name, log=log
            )
        if repository:
            wait_for(repository, result.layer.digest, wait_timeout)
        return result


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

"""``graftfs thin convert``: a regular image's layers into a layer repository, and the thin image that names
them, written as an OCI image layout.

Each layer of the source (any source graftfs reads: ``docker://``, ``oci://``, a rootfs tarball) is ingested
into the repository directory (:mod:`.ingest`: DUCC's layout, verified while it streams, built under a
temporary name and renamed; a layer already there is not fetched). The thin image is then written: one
layer whose only file is ``thin.json`` (:mod:`.thin`), base-first layers with DUCC's urls
(``cvmfs://<repository name>/.layers/<hh>/<hex>/layerfs``), and a config that keeps the source's env,
entrypoint, cmd, user and working directory, plus ``CVMFS_IMAGE=true`` as DUCC's thin images have.

From Python: :func:`thin_convert` (``graftfs.thin_convert``), which the command calls.

The layout is written deterministically (sorted keys, no timestamps, the thin layer's tar and gzip headers
with time zero): the same source and repository name give the same manifest digest. An existing layout at
the path gets the image added, replacing the entry of the same tag; ``index.json`` is replaced atomically.
"""

from __future__ import annotations

import os

from ..errors import FailedPrecondition, InvalidArgument
from ..log import NULL
from . import thin

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import IO, Any

    from ..layers import Expect
    from ..log import Logger
    from ..reference import ImageRef
    from ..sources.base import LayerInfo, Source

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
#: What the thin image's config keeps of the source's (``config`` object keys).
KEPT = ("Env", "Entrypoint", "Cmd", "User", "WorkingDir", "ExposedPorts", "Volumes", "Labels", "StopSignal")
MARKER_ENV = "CVMFS_IMAGE=true"


def _canonical(doc: object) -> bytes:
    import json

    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _sha256(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor_tar(descriptor: bytes) -> bytes:
    """An uncompressed tar whose only entry is ``thin.json`` (mode 0644, root's, time zero)."""
    import io
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(thin.DESCRIPTOR)
        info.size = len(descriptor)
        info.mode = 0o644
        info.mtime = 0
        tar.addfile(info, io.BytesIO(descriptor))
    return out.getvalue()


def thin_blobs(image: thin.ThinImage, source_config: dict[str, Any]) -> tuple[bytes, bytes, str]:
    """The thin image's layer blob (gzip), its config, and the layer's diffID."""
    import gzip

    tar = descriptor_tar(image.to_json())
    blob = gzip.compress(tar, compresslevel=9, mtime=0)
    diff_id = _sha256(tar)
    found = source_config.get("config")
    kept: dict[str, Any] = found if isinstance(found, dict) else {}
    container = {k: kept[k] for k in KEPT if k in kept}
    env = [e for e in container.get("Env") or [] if isinstance(e, str) and not e.startswith("CVMFS_IMAGE=")]
    container["Env"] = [*env, MARKER_ENV]
    config: dict[str, Any] = {
        "architecture": source_config.get("architecture") or _host_arch(),
        "os": source_config.get("os") or "linux",
        "config": container,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": f"graftfs thin convert {image.origin}".rstrip(), "comment": "thin image"}],
    }
    if source_config.get("variant"):
        config["variant"] = source_config["variant"]
    return blob, _canonical(config), diff_id


def _host_arch() -> str:
    from ..sources import platform

    return platform.host()[1]


def write_layout(path: str, tag: str, blobs: list[bytes], config: bytes, layers: list[bytes]) -> str:
    """Add one image (``config`` and ``layers``, which ``blobs`` lists with them) to the OCI layout at
    ``path``, tagged ``tag`` (untagged when empty); returns the manifest's digest."""
    from ..store.fsutil import atomic_write

    blob_dir = os.path.join(path, "blobs", "sha256")
    os.makedirs(blob_dir, mode=0o755, exist_ok=True)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": _sha256(config), "size": len(config)},
        "layers": [{"mediaType": MEDIA_LAYER, "digest": _sha256(layer), "size": len(layer)} for layer in layers],
    }
    manifest_bytes = _canonical(manifest)
    for data in [*blobs, config, *layers, manifest_bytes]:
        target = os.path.join(blob_dir, _sha256(data).partition(":")[2])
        if not os.path.exists(target):
            atomic_write(target, data, 0o644, sync=False)
    layout_file = os.path.join(path, "oci-layout")
    if not os.path.exists(layout_file):
        atomic_write(layout_file, _canonical({"imageLayoutVersion": "1.0.0"}), 0o644, sync=False)
    entry: dict[str, Any] = {
        "mediaType": MEDIA_MANIFEST,
        "digest": _sha256(manifest_bytes),
        "size": len(manifest_bytes),
    }
    if tag:
        entry["annotations"] = {REF_NAME: tag}
    index_path = os.path.join(path, "index.json")
    # Writers of one layout take turns (a flock on its directory): index.json is read, changed and replaced.
    import fcntl

    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return _add_to_index(index_path, entry, tag)
    finally:
        os.close(fd)


def _add_to_index(index_path: str, entry: dict[str, Any], tag: str) -> str:
    from ..store.fsutil import atomic_write

    path = os.path.dirname(index_path)
    manifests: list[Any] = []
    try:
        with open(index_path, "rb") as f:
            import json

            old = json.loads(f.read())
        manifests = [
            m
            for m in (old.get("manifests") or [])
            if isinstance(m, dict) and ((m.get("annotations") or {}).get(REF_NAME) != tag if tag else m != entry)
        ]
    except FileNotFoundError:
        pass
    except ValueError:
        raise InvalidArgument(f"output {path}: index.json is not JSON: not an OCI layout to add to") from None
    index = {"schemaVersion": 2, "manifests": [*manifests, entry]}
    atomic_write(index_path, _canonical(index), 0o644, sync=True)
    return str(entry["digest"])


def parse_output(url: str) -> ImageRef:
    """``oci:///PATH[:TAG]``, the only output a thin image is written to."""
    from .. import reference

    ref = reference.parse(url)
    if ref.kind != "oci":
        raise InvalidArgument(f"--output `{url}`: a thin image is written as an OCI layout: oci:///PATH[:TAG]")
    return ref


def write_thin(output: str, image: thin.ThinImage, source_config: dict[str, Any]) -> str:
    """Write ``image`` as a thin image to ``output`` (``oci:///PATH[:TAG]``); returns the manifest digest."""
    ref = parse_output(output)
    blob, config, _ = thin_blobs(image, source_config)
    return write_layout(ref.path, ref.tag, [], config, [blob])


def thin_url(repository_name: str, digest: str) -> str:
    hexd = digest.partition(":")[2]
    return f"{thin.SCHEME}{repository_name}/.layers/{hexd[:2]}/{hexd}/layerfs"


class Converted:
    """What :func:`thin_convert` did: the thin image's descriptor (``image``: its layers base first, each with
    its digest and ``cvmfs://`` url), the layout it was written to (``output``) and its manifest digest
    (``manifest``)."""

    __slots__ = ("image", "manifest", "output")

    def __init__(self, image: thin.ThinImage, manifest: str, output: str) -> None:
        self.image = image
        self.manifest = manifest
        self.output = output

    @property
    def layers(self) -> list[str]:
        """The layers' digests (bare hex, as ``thin.json`` names them), base first."""
        return [layer.digest for layer in self.image.layers]

    def __repr__(self) -> str:
        return f"Converted(output={self.output!r}, manifest={self.manifest!r}, layers={self.layers!r})"


def repository_dir(path: str) -> str:
    """A layer repository directory to write into: ``path`` made absolute, which must be a directory; its
    ``.layers`` is made if missing."""
    from .layers import LAYERS

    if not path:
        raise InvalidArgument("invalid argument: a layer repository directory is needed")
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FailedPrecondition(f"layer repository {path} is not a directory")
    os.makedirs(os.path.join(path, LAYERS), mode=0o755, exist_ok=True)
    return path


def thin_convert(
    source_url: str,
    repository: str,
    output: str,
    *,
    repository_name: str = "",
    insecure_registries: Sequence[str] = (),
    username: str = "",
    password: str = "",
    skip_layer_validation: bool = False,
    remote_layer_certificates: str = "",
    log: Logger | None = None,
) -> Converted:
    """What ``graftfs thin convert SOURCE --repository DIR --output oci:///PATH[:TAG]`` does, from Python:
    ingest every layer of the image ``source_url`` (``docker://``, ``oci://``, a rootfs tarball) into the
    layer repository directory ``repository`` in DUCC's layout, then write the thin image that names them to
    ``output``, an OCI layout (``oci:///PATH[:TAG]``, made or added to; the tag's entry replaced).

    ``repository_name`` names the repository in the layers' urls (``cvmfs://<name>/.layers/<hh>/<hex>/layerfs``;
    default: the directory's name). ``insecure_registries``, ``username``/``password``,
    ``skip_layer_validation`` and ``remote_layer_certificates`` are as for :class:`graftfs.CreateOptions`.

    Each layer is verified (size, digest, diffID) while it streams, built under a temporary name and renamed
    into place with its ``.metadata/layers.json``; a layer already there is not fetched. Converts of images
    sharing layers may run at once, in processes or threads: one builds each layer, the others wait for it.
    The same source and name always give the same manifest digest. The thin image keeps the source's env
    (plus ``CVMFS_IMAGE=true``), entrypoint, cmd, user and working directory.

    Raises InvalidArgument for an output that is not an OCI layout or a bad name (before anything is fetched),
    FailedPrecondition when ``repository`` is not a directory, the source's errors (NotFound,
    PermissionDenied, Unavailable), VerificationError when a blob is not what its manifest says (nothing of
    that layer is left; layers ingested before it stay, complete); the output is written only once every
    layer is in the repository."""
    from .. import reference
    from ..sources import open_source

    parse_output(output)
    repository = repository_dir(repository)
    name = repository_name or os.path.basename(os.path.realpath(repository))
    source = open_source(
        reference.parse(source_url),
        skip_layer_validation=skip_layer_validation,
        insecure_registries=tuple(insecure_registries),
        credentials=(username, password) if username or password else None,
        remote_layer_certificates=remote_layer_certificates,
    )
    try:
        image, digest = convert(source_url, source, repository, name, output, log or NULL)
    finally:
        close = getattr(source, "close", None)  # a registry's keep-alive connections
        if close is not None:
            close()
    return Converted(image, digest, output)


def convert(
    source_url: str,
    source: Source,
    repository: str,
    repository_name: str,
    output: str,
    log: Logger,
) -> tuple[thin.ThinImage, str]:
    """Ingest the layers of ``source`` into the repository at ``repository`` and write the thin image to
    ``output``; returns it and its manifest digest (the part of :func:`thin_convert` after the source is
    open)."""
    from ..layers import Expect
    from . import ingest

    parse_output(output)  # refused before anything is fetched
    if not repository_name or "/" in repository_name:
        raise InvalidArgument(f"repository name `{repository_name}` must be one path component")
    spec = source.resolve()
    layers: list[thin.ThinLayer] = []
    for layer in spec.layers:
        expect = layer.expect
        if not layer.blob.startswith("sha256:"):
            expect = _digest_of(source, layer)  # a rootfs tarball: its digest is its name in the repository
        elif not expect.digest:
            expect = Expect(layer.blob, expect.size, expect.diff_id)  # --skip-layer-validation: still its name
        built = ingest.ingest(repository, expect, _opener(source, layer))
        log.info("layer-ingested" if built else "layer-already-there", digest=expect.digest)
        layers.append(thin.ThinLayer(expect.digest.partition(":")[2], thin_url(repository_name, expect.digest)))
    image = thin.ThinImage(layers, origin=source_url)
    return image, write_thin(output, image, spec.config)


def _opener(source: Source, layer: LayerInfo) -> Callable[[], IO[bytes]]:
    return lambda: source.open_blob(layer)


def _digest_of(source: Source, layer: LayerInfo) -> Expect:
    """A blob without a digest (a rootfs tarball) read once to find it."""
    import hashlib

    from ..layers import Expect

    digest = hashlib.sha256()
    size = 0
    blob: IO[bytes]
    with source.open_blob(layer) as blob:
        while chunk := blob.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return Expect("sha256:" + digest.hexdigest(), size)

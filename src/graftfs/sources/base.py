"""The typed interface between sources and the rest of graftfs."""

from __future__ import annotations

from .. import jsonc
from ..errors import InvalidImage, VerificationError
from ..layers import Expect

TYPE_CHECKING = False  # typing and dataclasses cost more than the interpreter start-up; annotations are strings
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import IO, Any, Protocol

try:
    # The builtin sha256: importing hashlib loads OpenSSL (milliseconds), and the warm path only hashes a
    # few kilobytes of manifest. Layers, which are large, are hashed with hashlib in layers.stream.
    from _sha256 import sha256  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - other interpreters
    from hashlib import sha256

_HEX = frozenset("0123456789abcdef")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + str(sha256(data).hexdigest())


def check_digest(digest: object, what: str) -> str:
    """Digests index blob files by name: anything but a well-formed sha256 could walk out of ``blobs/``."""
    if not (isinstance(digest, str) and len(digest) == 71 and digest.startswith("sha256:") and set(digest[7:]) <= _HEX):
        raise InvalidImage(f"invalid {what} digest `{digest}`: only sha256 digests are supported")
    return digest


LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "",
}
BASE_DIRECTORY = "org.cloudfoundry.experimental.image.base-directory"


def verify_blob(data: bytes, digest: str, size: object, what: str) -> None:
    """Small blobs read whole (indexes, manifests, configs) must match the descriptor that named them."""
    actual = sha256_digest(data)
    if actual != digest:
        raise VerificationError(f"{what} digest mismatch: expected: {digest}, actual: {actual}")
    if isinstance(size, int) and size >= 0 and size != len(data):
        raise VerificationError(f"{what} size mismatch: expected: {size}, actual {len(data)}")


def parse_object(data: bytes, what: str) -> dict[str, Any]:
    """A JSON document that must be an object (index, manifest, config)."""
    try:
        doc = jsonc.loads(data)
    except ValueError as exc:
        raise InvalidImage(f"invalid {what}: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidImage(f"invalid {what}: not a JSON object")
    return doc


def chain_ids(diff_ids: Iterable[str]) -> list[str]:
    """OCI chain IDs: ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)).

    (GrootFS hashes the bare hex strings instead; the image spec's form lets a store be compared with
    containerd's and skopeo's outputs.)
    """
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append(sha256_digest(f"{out[-1]} {diff_id}".encode()))
    return out


class LayerInfo:
    """One layer as the store needs it. ``volume_id`` names its volume: the chain ID's hex."""

    __slots__ = ("base_directory", "blob", "expect", "urls", "volume_id")

    def __init__(
        self,
        volume_id: str,
        blob: str,  # source-specific handle: a digest, or the tar file path
        expect: Expect | None = None,
        base_directory: str = "",
        urls: tuple[str, ...] = (),
    ) -> None:
        self.volume_id = volume_id
        self.blob = blob
        self.expect = expect or Expect()
        self.base_directory = base_directory
        self.urls = urls

    def __repr__(self) -> str:
        return f"LayerInfo(volume_id={self.volume_id!r}, blob={self.blob!r})"


class ImageSpec:
    __slots__ = ("config", "layers")

    def __init__(self, layers: tuple[LayerInfo, ...], config: dict[str, Any] | None = None) -> None:
        self.layers = layers  # bottom layer first
        self.config = config or {}

    @property
    def env(self) -> list[str]:
        cfg = self.config.get("config") or {}
        env = cfg.get("Env") if isinstance(cfg, dict) else None
        return [e for e in env if isinstance(e, str)] if isinstance(env, list) else []

    @property
    def compressed_size(self) -> int:
        return sum(max(layer.expect.size, 0) for layer in self.layers)


def image_spec(layers: list[Any], config: dict[str, Any], verify: bool = True) -> ImageSpec:
    """Describe the layers of an image manifest (``layers``) whose config is ``config``: one place for the
    checks every source needs (a diff_id per layer, sha256 digests only, known media types)."""
    rootfs = config.get("rootfs") or {}
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
        raise InvalidImage(
            f"image config lists {len(diff_ids) if isinstance(diff_ids, list) else 0} diff_ids for {len(layers)} layers"
        )
    for d in diff_ids:
        check_digest(d, "diff_id")
    out = []
    for layer, diff_id, chain in zip(layers, diff_ids, chain_ids(diff_ids), strict=True):
        if not isinstance(layer, dict):
            raise InvalidImage("manifest layer is not a descriptor")
        media_type = layer.get("mediaType", "")
        if media_type not in LAYER_TYPES:
            raise InvalidImage(f"unsupported layer media type `{media_type}`")
        digest = check_digest(layer.get("digest"), "layer")
        size = layer.get("size", -1)
        annotations = layer.get("annotations") or {}
        out.append(
            LayerInfo(
                volume_id=chain.partition(":")[2],
                blob=digest,
                expect=Expect(digest, size if isinstance(size, int) else -1, diff_id) if verify else Expect(),
                base_directory=str(annotations.get(BASE_DIRECTORY, "")),
                urls=tuple(u for u in layer.get("urls") or () if isinstance(u, str)),
            )
        )
    return ImageSpec(layers=tuple(out), config=config)


if TYPE_CHECKING:

    class Source(Protocol):
        def resolve(self) -> ImageSpec:
            """Read the manifest and config (verified against their digests) and describe the layers."""
            ...

        def open_blob(self, layer: LayerInfo) -> IO[bytes]:
            """Open the layer's (possibly compressed) blob for one sequential read."""
            ...

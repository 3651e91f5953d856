"""Thin images: the descriptor the CernVM-FS graphdriver defined, listing the layers to stack from a layer
repository instead of layers of the image's own.

A thin image is an ordinary image (registry, OCI layout, tarball) with one layer whose only file is
``/thin.json``::

    {"version": "1.0", "origin": "docker://registry/repo:tag",
     "layers": [{"digest": "<hex>", "url": "cvmfs://<repo>/.layers/<hh>/<hex>/layerfs"}, ...]}

``layers`` is base first (the manifest's order); ``digest`` is the layer's compressed blob digest as bare hex
(DUCC's key); ``url`` names where it is, ``cvmfs://`` and the repository's name, then the path in it.
``min_version`` and ``comment`` may be there too. The graphdriver put a committed container's layer at the
*front* of ``layers`` (the bottom of the stack, below the base, which cannot be what it meant); graftfs
appends it, on top, and reads any descriptor as base first.
"""

from __future__ import annotations

import io

from ..errors import InvalidImage

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import IO, Any

    from ..sources.base import ImageSpec, LayerInfo, Source

#: The file a thin image's only layer holds.
DESCRIPTOR = "thin.json"
VERSION = "1.0"
SCHEME = "cvmfs://"


class ThinLayer:
    """One layer of a thin image: its digest (bare hex, compressed) and where it is."""

    __slots__ = ("digest", "url")

    def __init__(self, digest: str, url: str = "") -> None:
        self.digest = digest
        self.url = url

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ThinLayer) and (self.digest, self.url) == (other.digest, other.url)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ThinLayer(digest={self.digest!r}, url={self.url!r})"

    def location(self) -> tuple[str, str]:
        """``(repository name, path in it)`` from the ``cvmfs://<repo>/<path>`` url."""
        if not self.url.startswith(SCHEME):
            raise InvalidImage(f"thin image layer {self.digest}: url `{self.url}` is not cvmfs://<repository>/<path>")
        repo, _, path = self.url[len(SCHEME) :].partition("/")
        if not repo or not path or any(part in ("", ".", "..") for part in path.split("/")):
            raise InvalidImage(f"thin image layer {self.digest}: url `{self.url}` is not cvmfs://<repository>/<path>")
        return repo, path


class ThinImage:
    """A thin image's descriptor. ``layers`` base first."""

    __slots__ = ("comment", "layers", "min_version", "origin", "version")

    def __init__(
        self,
        layers: Sequence[ThinLayer],
        origin: str = "",
        version: str = VERSION,
        min_version: str = "",
        comment: str = "",
    ) -> None:
        self.layers = list(layers)
        self.origin = origin
        self.version = version
        self.min_version = min_version
        self.comment = comment

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ThinImage) and all(getattr(self, s) == getattr(other, s) for s in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def with_layer(self, layer: ThinLayer) -> ThinImage:
        """This image with ``layer`` on top: what committing a container of it gives."""
        return ThinImage([*self.layers, layer], self.origin, self.version, self.min_version, self.comment)

    def to_json(self) -> bytes:
        """The descriptor, keys in the graphdriver's order and empty optional fields left out (so the same
        image always gives the same bytes, and the same layer digest)."""
        from .. import jsonc

        doc: dict[str, object] = {"version": self.version}
        if self.min_version:
            doc["min_version"] = self.min_version
        if self.origin:
            doc["origin"] = self.origin
        doc["layers"] = [{"digest": lay.digest, **({"url": lay.url} if lay.url else {})} for lay in self.layers]
        if self.comment:
            doc["comment"] = self.comment
        return jsonc.dumps(doc).encode() + b"\n"


#: A thin image's only layer is one small file: a one-layer image whose blob is larger is not looked into.
DETECT_MAX = 64 << 10


def look_into(source: Source, layer: LayerInfo) -> tuple[ThinImage | None, Source]:
    """Whether the small one-layer image ``layer`` is thin, its tar holding exactly one entry, a regular file
    ``thin.json`` (the rule: such a layer is a thin image's): ``(descriptor, source)``, or ``(None, source)``
    for an ordinary layer. Its blob is fetched once, read whole (at most
    :data:`DETECT_MAX` bytes); the source returned serves this blob from those bytes (and every other from
    ``source``), so the pull of an ordinary layer does not fetch it again, and verifies it as it would the
    source's. A thin layer is verified here (size, digest, diffID); a blob that is not a readable tar, or not
    what it claims, is left to the pull, which reports it as for any layer."""
    from ..errors import GraftfsError
    from ..layers.stream import LayerStream
    from ..layers.tarreader import REG, TarReader

    with source.open_blob(layer) as blob:
        data = _read_at_most(blob, DETECT_MAX + 1)
    if len(data) > DETECT_MAX:
        return None, source  # larger than declared: the pull reports it (and fetches it again to say so)
    kept = Prefetched(source, layer.blob, data)
    stream = LayerStream(io.BytesIO(data), layer.expect)
    try:
        try:
            tar = TarReader(stream.tar)
            first = tar.next()
            if (
                first is None
                or first.type != REG
                or first.name not in (DESCRIPTOR, "./" + DESCRIPTOR, "/" + DESCRIPTOR)
                or first.size > DETECT_MAX
            ):
                return None, kept
            descriptor = bytearray(first.size)
            view = memoryview(descriptor)
            got = 0
            while got < first.size:
                n = tar.readinto(view[got:])
                if not n:
                    break
                got += n
            if tar.next() is not None:
                return None, kept
        except GraftfsError:
            return None, kept  # not a readable tar, or not what its descriptor says: the pull explains which
        stream.finish()
    finally:
        stream.close()
    return parse(bytes(descriptor), f"thin image {DESCRIPTOR}"), kept


def _read_at_most(blob: IO[bytes], limit: int) -> bytes:
    parts = []
    left = limit
    while left > 0:
        chunk = blob.read(left)
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


class Prefetched:
    """A source one of whose blobs was read already: ``open_blob`` of that blob gives its bytes again, of any
    other asks ``source``."""

    __slots__ = ("blob", "data", "source")

    def __init__(self, source: Source, blob: str, data: bytes) -> None:
        self.source = source
        self.blob = blob
        self.data = data

    def resolve(self) -> ImageSpec:
        return self.source.resolve()

    def open_blob(self, layer: LayerInfo) -> IO[bytes]:
        if layer.blob == self.blob:
            return io.BytesIO(self.data)
        return self.source.open_blob(layer)


def image_spec(image: ThinImage, config: dict[str, Any]) -> ImageSpec:
    """The layers a thin image stacks, base first, as a create sees them: each named by its digest (the
    repository's key); their volume IDs are the digests too (never pulled: they are in place or refused)."""
    from ..sources.base import ImageSpec, LayerInfo

    return ImageSpec(
        layers=tuple(LayerInfo(volume_id=lay.digest, blob="sha256:" + lay.digest) for lay in image.layers),
        config=config,
    )


def no_repository(image: ThinImage, store: str, what: str = "thin image") -> str:
    """The one line refusing a thin image in a store without a layer repository."""
    return (
        f"{what} ({len(image.layers)} layers named by /{DESCRIPTOR}): store {store} has no layer repository to "
        "stack them from (init-store --layer-repository DIR)"
    )


def missing(image: ThinImage, digests: Sequence[str], root: str, what: str = "thin image") -> str:
    """The one line refusing a thin image whose layers ``digests`` (bare hex) the repository ``root`` lacks."""
    return f"{what}: {len(digests)} of its {len(image.layers)} layers not in the layer repository {root}: " + ", ".join(
        digests
    )


def parse(data: bytes, where: str = DESCRIPTOR) -> ThinImage:
    """A descriptor from its bytes; InvalidImage, in one line naming ``where``, if it is not one."""
    from .. import jsonc

    try:
        doc = jsonc.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidImage(f"{where}: not a thin image descriptor: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidImage(f"{where}: not a thin image descriptor: a JSON object was expected")
    version, layers = doc.get("version"), doc.get("layers")
    if not isinstance(version, str) or not version:
        raise InvalidImage(f"{where}: thin image descriptor without a version")
    if not isinstance(layers, list):
        raise InvalidImage(f"{where}: thin image descriptor without a list of layers")
    parsed = []
    for index, layer in enumerate(layers):
        digest = layer.get("digest") if isinstance(layer, dict) else None
        url = layer.get("url", "") if isinstance(layer, dict) else None
        if not isinstance(digest, str) or not isinstance(url, str):
            raise InvalidImage(f"{where}: thin image layer {index} needs a digest (and a url, if any, as text)")
        digest = digest.removeprefix("sha256:")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise InvalidImage(f"{where}: thin image layer {index}: `{digest}` is not a sha256 digest")
        parsed.append(ThinLayer(digest, url))
    optional = {}
    for key in ("origin", "min_version", "comment"):
        value = doc.get(key, "")
        if not isinstance(value, str):
            raise InvalidImage(f"{where}: thin image descriptor's {key} is not text")
        optional[key] = value
    return ThinImage(parsed, version=version, **optional)


__all__ = ["DESCRIPTOR", "ThinImage", "ThinLayer", "missing", "no_repository", "parse"]

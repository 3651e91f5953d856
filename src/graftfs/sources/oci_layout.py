"""OCI image layouts on local disk (``oci:///path[:tag]``), per the OCI image-layout spec.

Everything read from the layout is checked: the manifest and config against the digests and sizes that
point to them (they are small and read whole), and the layers while they stream (see layers.stream).
Digests double as file names under ``blobs/``, so they are validated before they touch a path.
"""

from __future__ import annotations

import os

from ..errors import GraftfsError, InvalidImage, NotFound, Unavailable
from ..reference import ImageRef
from .base import (
    BASE_DIRECTORY,
    LAYER_TYPES,
    ImageSpec,
    LayerInfo,
    check_digest,
    image_spec,
    parse_object,
    verify_blob,
)

TYPE_CHECKING = False  # keep typing off the start-up path
if TYPE_CHECKING:
    from typing import IO, Any

    from .transport import Transport

REF_NAME = "org.opencontainers.image.ref.name"
INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
MAX_JSON = 4 << 20  # manifests and configs are small; a huge one is an attack or a mistake
MAX_INDEX_DEPTH = 4


class OCILayoutSource:
    def __init__(self, ref: ImageRef, verify: bool = True, certificates: str = "") -> None:
        self.path = ref.path
        self.tag = ref.tag
        self.verify = verify
        self.certificates = certificates  # CAs and client pair for layers fetched from their `urls`
        self._transport: Transport | None = None

    # -- blobs ---------------------------------------------------------------------------------------------

    def _blob_path(self, digest: str) -> str:
        algo, _, hexpart = check_digest(digest, "blob").partition(":")
        return os.path.join(self.path, "blobs", algo, hexpart)

    def _read_json(self, desc: dict[str, Any], what: str) -> dict[str, Any]:
        digest = check_digest(desc.get("digest"), what)
        size = desc.get("size", -1)
        try:
            with open(self._blob_path(digest), "rb") as f:
                data = f.read(MAX_JSON + 1)
        except FileNotFoundError:
            raise NotFound(f"{what} blob `{digest}` not found in OCI layout {self.path}") from None
        if len(data) > MAX_JSON:
            raise InvalidImage(f"{what} `{digest}` is larger than {MAX_JSON} bytes")
        verify_blob(data, digest, size, what)
        return parse_object(data, f"{what} `{digest}`")

    # -- resolution ----------------------------------------------------------------------------------------

    def resolve(self) -> ImageSpec:
        try:
            with open(os.path.join(self.path, "index.json"), "rb") as f:
                index = parse_object(f.read(MAX_JSON + 1), "index.json")
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound("Image source doesn't exist") from None
        manifests = _descriptors(index, "index.json")
        if self.tag:
            manifests = [d for d in manifests if (d.get("annotations") or {}).get(REF_NAME) == self.tag]
            if not manifests:
                raise NotFound(f"tag `{self.tag}` not found in OCI layout {self.path}")
        desc = self._pick(manifests, "index.json")
        try:
            return self._from_descriptor(desc, depth=0)
        except GraftfsError as exc:
            raise exc.wrap("fetching image reference") from exc

    def _pick(self, descriptors: list[dict[str, Any]], where: str) -> dict[str, Any]:
        # A lone descriptor is taken as it is unless it says it is for another platform: an index with only
        # an s390x image used to be unpacked on amd64 (GrootFS/containers/image refuse: no image for the
        # platform). One without a platform (or without an architecture) stays accepted.
        if len(descriptors) == 1:
            plat = descriptors[0].get("platform")
            if not (isinstance(plat, dict) and plat.get("architecture")):
                return descriptors[0]
        if not descriptors:
            raise InvalidImage(f"{where} lists no manifests")
        from . import platform  # only for a choice among several (or a platform to check): not a warm create's

        chosen = platform.choose(descriptors)
        if chosen is None:
            if not any("platform" in d for d in descriptors):
                raise InvalidImage(f"{where} lists {len(descriptors)} images: choose one with oci:///path:tag")
            raise NotFound(f"no image for platform {platform.host_string()} in {where}")
        return chosen

    def _from_descriptor(self, desc: dict[str, Any], depth: int) -> ImageSpec:
        doc = self._read_json(desc, "manifest")
        if desc.get("mediaType") in INDEX_TYPES or doc.get("mediaType") in INDEX_TYPES or "manifests" in doc:
            if depth >= MAX_INDEX_DEPTH:
                raise InvalidImage("image indexes are nested too deeply")
            return self._from_descriptor(self._pick(_descriptors(doc, "image index"), "image index"), depth + 1)
        return self._from_manifest(doc)

    def _from_manifest(self, manifest: dict[str, Any]) -> ImageSpec:
        cfg_desc = manifest.get("config")
        layers = manifest.get("layers")
        if not isinstance(cfg_desc, dict) or not isinstance(layers, list):
            raise InvalidImage("manifest has no config or no layers")
        config = self._read_json(cfg_desc, "config")
        return image_spec(layers, config, verify=self.verify)

    def open_blob(self, layer: LayerInfo) -> IO[bytes]:
        path = self._blob_path(layer.blob)
        if any(url.startswith(("http://", "https://")) for url in layer.urls):
            # As GrootFS: a layer with http(s) urls comes from there (Garden's preloaded+layer images put
            # the app layer's download URL here), the layout's own blob only otherwise.
            if self._transport is None:
                from .transport import Transport

                self._transport = Transport(extra_certs=self.certificates)
            stream, errors = self._transport.open_first(layer.urls)
            if stream is not None:
                return stream
            raise Unavailable(f"fetching foreign layer `{layer.blob}`: {'; '.join(errors)}")
        try:
            return open(path, "rb", buffering=0)
        except FileNotFoundError:
            raise NotFound(f"layer blob `{layer.blob}` not found in OCI layout {self.path}") from None


def _descriptors(doc: dict[str, Any], what: str) -> list[dict[str, Any]]:
    manifests = doc.get("manifests")
    if not isinstance(manifests, list) or not all(isinstance(d, dict) for d in manifests):
        raise InvalidImage(f"invalid {what}: no manifests list")
    return manifests


# Re-exported: the registry source and callers name them from here.
__all__ = ["BASE_DIRECTORY", "INDEX_TYPES", "LAYER_TYPES", "MAX_INDEX_DEPTH", "MAX_JSON", "OCILayoutSource"]

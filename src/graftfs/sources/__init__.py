"""Image sources: where manifests, configs and layer blobs come from.

A source turns a reference into an :class:`~graftfs.sources.base.ImageSpec` (the layers bottom-first, each
with what must be verified, and the image config) and opens a layer's blob as a stream. It never unpacks
or writes to the store; verification happens in :mod:`graftfs.layers.stream` while the blob is read.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..reference import ImageRef
    from .base import Source


def open_source(
    ref: ImageRef,
    *,
    skip_layer_validation: bool = False,
    insecure_registries: tuple[str, ...] = (),
    credentials: tuple[str, str] | None = None,
    remote_layer_certificates: str = "",
    plain_http_hosts: str = "",
    documents: str = "",
) -> Source:
    """``credentials`` (username, password) are for registries; ``remote_layer_certificates`` is the
    directory of CAs and a client pair used for layers that an OCI layout fetches from their ``urls``;
    ``plain_http_hosts`` a directory where insecure registries found to speak plain HTTP are remembered,
    ``documents`` one where manifests and configs are kept by digest (see :mod:`.registry`)."""
    if ref.kind == "tar":
        from .tarball import TarballSource

        return TarballSource(ref)
    if ref.kind == "oci":
        from .oci_layout import OCILayoutSource

        return OCILayoutSource(ref, verify=not skip_layer_validation, certificates=remote_layer_certificates)
    from .registry import RegistrySource

    return RegistrySource(
        ref,
        insecure=insecure_registries,
        credentials=credentials,
        plain_http_hosts=plain_http_hosts,
        documents=documents,
    )


__all__ = ["open_source"]

"""Image URLs, as Garden passes them, turned into typed references.

Accepted forms (the GrootFS set):
  /abs/path/rootfs.tar          a root filesystem tarball (plain, gzip or zstd)
  oci:///abs/layout[:tag]       an OCI image layout directory
  docker://[host[:port]]/repo   a registry image (pulled by the registry source)

Anything else with a scheme is refused with a clear error (GrootFS panics there).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Literal

from .errors import InvalidArgument

Kind = Literal["tar", "oci", "docker"]
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


@dataclass(frozen=True)
class ImageRef:
    kind: Kind
    original: str
    path: str = ""  # tar file or OCI layout directory (absolute)
    tag: str = ""  # OCI ref.name annotation; docker reference for docker://
    docker: str = ""  # everything after docker:// (host/repo:tag or /repo:tag)


def parse(url: str) -> ImageRef:
    if not url:
        raise InvalidArgument("image URL is empty")
    if "\x00" in url:
        raise InvalidArgument("image URL contains a NUL byte")
    m = _SCHEME.match(url)
    if m is None:
        # No scheme: a local rootfs tarball. Relative paths are taken from the caller's directory.
        return ImageRef("tar", url, path=os.path.abspath(url))
    scheme = m.group(1).lower()
    rest = url[m.end() :]
    if scheme == "oci":
        # containers/image splits "path:reference" at the first colon, so a layout path cannot hold one.
        path = "/" + rest.lstrip("/")
        path, _, tag = path.partition(":")
        if path == "/":
            raise InvalidArgument(f"invalid OCI image URL `{url}`: no layout path")
        return ImageRef("oci", url, path=os.path.normpath(path), tag=tag)
    if scheme == "docker":
        if not rest.startswith("//"):
            raise InvalidArgument(f"invalid docker image URL `{url}`: expected docker://[host]/repository[:tag]")
        return ImageRef("docker", url, docker=rest[2:])
    raise InvalidArgument(
        f"unsupported image URL scheme `{scheme}` in `{url}`: use docker://, oci:// or the path of a rootfs tar file"
    )

"""Image URLs, as Garden passes them, turned into typed references.

Accepted forms (the GrootFS set):
  /abs/path/rootfs.tar          a root filesystem tarball (plain, gzip or zstd)
  oci:///abs/layout[:tag]       an OCI image layout directory
  docker://[host[:port]]/repo   a registry image (pulled by the registry source)

Anything else with a scheme is refused with a clear error (GrootFS panics there).
"""

from __future__ import annotations

import os

from .errors import InvalidArgument

TYPE_CHECKING = False  # typing and dataclasses cost more than the interpreter start-up; annotations are strings
if TYPE_CHECKING:
    from typing import Literal

    Kind = Literal["tar", "oci", "docker"]

_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")


class ImageRef:
    kind: Kind
    original: str
    path: str
    tag: str
    docker: str
    __slots__ = ("docker", "kind", "original", "path", "tag")

    def __init__(self, kind: Kind, original: str, path: str = "", tag: str = "", docker: str = "") -> None:
        init = object.__setattr__
        init(self, "kind", kind)
        init(self, "original", original)
        init(self, "path", path)  # tar file or OCI layout directory (absolute)
        init(self, "tag", tag)  # OCI ref.name annotation
        init(self, "docker", docker)  # everything after docker:// (host/repo:tag or /repo:tag)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"ImageRef is immutable: cannot set {name}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImageRef) and all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, k) for k in self.__slots__))

    def __repr__(self) -> str:
        return f"ImageRef({self.kind!r}, {self.original!r}, path={self.path!r}, tag={self.tag!r})"


def _scheme(url: str) -> str | None:
    """RFC 3986 scheme (``ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":"``), or None."""
    head, colon, _ = url.partition(":")
    if colon and head and head[0].isascii() and head[0].isalpha() and set(head) <= _SCHEME_CHARS:
        return head
    return None


def parse(url: str) -> ImageRef:
    if not url:
        raise InvalidArgument("image URL is empty")
    if "\x00" in url:
        raise InvalidArgument("image URL contains a NUL byte")
    raw_scheme = _scheme(url)
    if raw_scheme is None:
        # No scheme: a local rootfs tarball. Relative paths are taken from the caller's directory.
        return ImageRef("tar", url, path=os.path.abspath(url))
    scheme = raw_scheme.lower()
    rest = url[len(raw_scheme) + 1 :]
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

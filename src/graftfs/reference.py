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
_LOWER_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_SEPARATORS = frozenset("._-")
_TAG_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_HEX = frozenset("0123456789abcdef")
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:[]")
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"


class ImageRef:
    kind: Kind
    original: str
    path: str
    tag: str
    host: str
    repository: str
    digest: str
    __slots__ = ("digest", "host", "kind", "original", "path", "repository", "tag")

    def __init__(
        self,
        kind: Kind,
        original: str,
        path: str = "",
        tag: str = "",
        host: str = "",
        repository: str = "",
        digest: str = "",
    ) -> None:
        init = object.__setattr__
        init(self, "kind", kind)
        init(self, "original", original)
        init(self, "path", path)  # tar file or OCI layout directory (absolute)
        init(self, "tag", tag)  # OCI ref.name annotation, or the docker tag ("" when pulling by digest)
        init(self, "host", host)  # registry host[:port] to talk to (Docker Hub: registry-1.docker.io)
        init(self, "repository", repository)  # normalised repository name (library/busybox)
        init(self, "digest", digest)  # sha256:<hex> when pulling by digest

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
        return _docker(url, rest[2:])
    raise InvalidArgument(
        f"unsupported image URL scheme `{scheme}` in `{url}`: use docker://, oci:// or the path of a rootfs tar file"
    )


def _valid_component(component: str) -> bool:
    """Docker's path component: ``[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*`` (checked without ``re``)."""
    if not component or not set(component) <= _LOWER_ALNUM | _SEPARATORS:
        return False
    if component[0] in _SEPARATORS or component[-1] in _SEPARATORS:
        return False
    run = ""
    for ch in component + "a":
        if ch in _SEPARATORS:
            run += ch
            continue
        if run and not (run in (".", "_", "__") or set(run) == {"-"}):
            return False
        run = ""
    return True


def _docker(url: str, name: str) -> ImageRef:
    """Docker's reference normalisation (distribution/reference ParseNormalizedNamed), without ``re``."""

    def bad(why: str) -> InvalidArgument:
        return InvalidArgument(f"invalid docker image URL `{url}`: {why}")

    rest = name.lstrip("/")  # docker:///busybox: no host in the URL, Docker Hub
    if not rest:
        raise bad("no repository")
    rest, at, digest = rest.partition("@")
    if at:
        algo, _, hexpart = digest.partition(":")
        if algo != "sha256":
            raise bad("only sha256 digests are supported")
        if len(hexpart) != 64 or not set(hexpart) <= _HEX:
            raise bad(f"invalid digest `{digest}`")
    tag = ""
    last_colon = rest.rfind(":")
    if last_colon > rest.rfind("/"):
        rest, tag = rest[:last_colon], rest[last_colon + 1 :]
        if not tag or len(tag) > 128 or tag[0] in ".-" or not set(tag) <= _TAG_CHARS:
            raise bad(f"invalid tag `{tag}`")
    if at and tag:
        raise bad("references with both a tag and a digest are not supported")
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        host, repository = first, remainder
        if not set(host) <= _HOST_CHARS or host.startswith((":", ".", "-")) or host.endswith(":"):
            raise bad(f"invalid registry host `{host}`")
    else:
        host, repository = DOCKER_HUB, rest
    if host in (DOCKER_HUB, "index.docker.io"):
        host = DOCKER_HUB_API
        if "/" not in repository:
            repository = "library/" + repository
    if repository != repository.lower():
        raise bad(f"repository name `{repository}` must be lowercase")
    if len(repository) > 255:
        raise bad("repository name is longer than 255 characters")
    if not all(_valid_component(c) for c in repository.split("/")):
        raise bad(
            f"invalid repository name `{repository}`: components are lowercase letters and digits, "
            "separated by `.`, `_`, `__` or dashes, joined by `/`"
        )
    if not at and not tag:
        tag = "latest"
    return ImageRef("docker", url, host=host, repository=repository, tag=tag, digest=digest)

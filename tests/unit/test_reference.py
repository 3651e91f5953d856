"""graftfs.reference: the image URLs Garden passes to ``create``."""

from __future__ import annotations

import os

import pytest

from graftfs.errors import InvalidArgument
from graftfs.reference import ImageRef, parse


def test_absolute_path_is_a_rootfs_tarball() -> None:
    assert parse("/var/vcap/packages/rootfs.tar") == ImageRef(
        "tar", "/var/vcap/packages/rootfs.tar", path="/var/vcap/packages/rootfs.tar"
    )


def test_relative_path_is_taken_from_the_callers_directory(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    ref = parse("images/rootfs.tgz")
    assert ref.kind == "tar"
    assert ref.path == os.path.join(os.fspath(tmp_path), "images", "rootfs.tgz")
    assert ref.original == "images/rootfs.tgz"


def test_a_path_with_a_colon_but_no_scheme_is_a_tarball() -> None:
    ref = parse("/tmp/odd:name.tar")
    assert (ref.kind, ref.path) == ("tar", "/tmp/odd:name.tar")


@pytest.mark.parametrize(
    ("url", "path", "tag"),
    [
        ("oci:///var/lib/image", "/var/lib/image", ""),
        ("oci:///var/lib/image:latest", "/var/lib/image", "latest"),
        ("oci:///var/lib/image/:v1.2", "/var/lib/image", "v1.2"),
        ("oci://var/lib/image", "/var/lib/image", ""),
        ("oci:///a//b/../c:t", "/a/c", "t"),
        ("OCI:///upper/case:Tag", "/upper/case", "Tag"),
        ("oci:///depot/handle/image", "/depot/handle/image", ""),
    ],
)
def test_oci_layout_urls(url: str, path: str, tag: str) -> None:
    ref = parse(url)
    assert (ref.kind, ref.path, ref.tag, ref.original) == ("oci", path, tag, url)


def test_oci_tag_is_split_at_the_first_colon() -> None:
    # containers/image's rule: a layout path cannot hold a colon, everything after the first one is the tag.
    ref = parse("oci:///layout:tag:with:colons")
    assert (ref.path, ref.tag) == ("/layout", "tag:with:colons")


@pytest.mark.parametrize("url", ["oci://", "oci:///", "oci:///:tag"])
def test_oci_url_without_a_layout_path(url: str) -> None:
    with pytest.raises(InvalidArgument, match="no layout path"):
        parse(url)


@pytest.mark.parametrize(
    "url",
    [
        "docker:///busybox",
        "docker:///busybox:1.26.1",
        "docker://registry.example.com:5000/org/app:tag",
        "docker:///cfgarden/empty@sha256:" + "a" * 64,
    ],
)
def test_docker_urls(url: str) -> None:
    ref = parse(url)
    assert (ref.kind, ref.original, ref.path) == ("docker", url, "")


def test_docker_url_needs_slashes() -> None:
    with pytest.raises(InvalidArgument, match=r"invalid docker image URL `docker:busybox`"):
        parse("docker:busybox")


@pytest.mark.parametrize(
    "url", ["http://example.com/rootfs.tar", "https://x/y", "raw:///x", "preloaded+layer:///x", "file:///x.tar"]
)
def test_unsupported_schemes_are_a_clear_error_not_a_panic(url: str) -> None:
    scheme = url.partition(":")[0]
    with pytest.raises(InvalidArgument) as err:
        parse(url)
    assert str(err.value) == (
        f"unsupported image URL scheme `{scheme}` in `{url}`: use docker://, oci:// or the path of a rootfs tar file"
    )


@pytest.mark.parametrize(("url", "message"), [("", "image URL is empty"), ("/x\x00y", "NUL byte")])
def test_empty_and_nul_urls(url: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse(url)


def test_refs_are_immutable_values() -> None:
    ref = parse("oci:///x:y")
    assert ref == parse("oci:///x:y")
    with pytest.raises(AttributeError):
        ref.tag = "z"


DIGEST = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("url", "host", "repository", "tag", "digest"),
    [
        ("docker:///busybox", "registry-1.docker.io", "library/busybox", "latest", ""),
        ("docker://busybox", "registry-1.docker.io", "library/busybox", "latest", ""),
        ("docker:///busybox:1.26.1", "registry-1.docker.io", "library/busybox", "1.26.1", ""),
        ("docker:///cfgarden/empty:v0.1.1", "registry-1.docker.io", "cfgarden/empty", "v0.1.1", ""),
        ("docker:///busybox@" + DIGEST, "registry-1.docker.io", "library/busybox", "", DIGEST),
        ("docker://docker.io/busybox", "registry-1.docker.io", "library/busybox", "latest", ""),
        ("docker://index.docker.io/org/app", "registry-1.docker.io", "org/app", "latest", ""),
        ("docker://127.0.0.1:5000/team/app:1.2", "127.0.0.1:5000", "team/app", "1.2", ""),
        ("docker://localhost/app", "localhost", "app", "latest", ""),
        ("docker://localhost:5000/app@" + DIGEST, "localhost:5000", "app", "", DIGEST),
        ("docker://registry.example.com/a/b/c:T_1.x-y", "registry.example.com", "a/b/c", "T_1.x-y", ""),
        ("docker:///team/app", "registry-1.docker.io", "team/app", "latest", ""),  # `team` is no host
        ("docker:///a__b/c.d-e---f_g", "registry-1.docker.io", "a__b/c.d-e---f_g", "latest", ""),
    ],
)
def test_docker_references_are_normalised_like_docker(
    url: str, host: str, repository: str, tag: str, digest: str
) -> None:
    ref = parse(url)
    assert (ref.kind, ref.host, ref.repository, ref.tag, ref.digest) == ("docker", host, repository, tag, digest)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("docker:///", "no repository"),
        ("docker:///BusyBox", "must be lowercase"),
        ("docker://Registry.Example.com/Org/app", "must be lowercase"),
        ("docker:///a//b", "invalid repository name `a//b`"),
        ("docker:///-a", "invalid repository name"),
        ("docker:///a.", "invalid repository name"),
        ("docker:///a_-b", "invalid repository name"),
        ("docker:///a___b", "invalid repository name"),
        ("docker:///a b", "invalid repository name"),
        ("docker:///busybox:", "invalid tag ``"),
        ("docker:///busybox:-x", "invalid tag `-x`"),
        ("docker:///busybox:" + "x" * 129, "invalid tag"),
        ("docker:///busybox@sha256:abc", "invalid digest `sha256:abc`"),
        ("docker:///busybox@sha512:" + "a" * 128, "only sha256 digests are supported"),
        ("docker:///busybox:1@" + DIGEST, "both a tag and a digest"),
        ("docker:///" + "a" * 256, "longer than 255"),
    ],
)
def test_invalid_docker_references_are_a_clear_error(url: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=r"^invalid docker image URL `") as err:
        parse(url)
    assert message in str(err.value)

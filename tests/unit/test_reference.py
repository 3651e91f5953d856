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
    ("url", "docker"),
    [
        ("docker:///busybox", "/busybox"),
        ("docker:///busybox:1.26.1", "/busybox:1.26.1"),
        ("docker://registry.example.com:5000/org/app:tag", "registry.example.com:5000/org/app:tag"),
        ("docker:///cfgarden/empty@sha256:" + "a" * 64, "/cfgarden/empty@sha256:" + "a" * 64),
    ],
)
def test_docker_urls(url: str, docker: str) -> None:
    ref = parse(url)
    assert (ref.kind, ref.docker, ref.original, ref.path) == ("docker", docker, url, "")


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

"""graftfs.sources.oci_layout: resolving oci:// layouts written by tests/support/images.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from graftfs.errors import GraftfsError, InvalidImage, NotFound, VerificationError
from graftfs.layers import Expect
from graftfs.layers.stream import LayerStream
from graftfs.reference import parse
from graftfs.sources import open_source
from graftfs.sources.base import ImageSpec, chain_ids
from graftfs.sources.oci_layout import BASE_DIRECTORY, OCILayoutSource
from graftfs.sources.platform import choose, host
from tests.support.images import (
    MEDIA_TYPE_LAYOUT_INDEX,
    MEDIA_TYPE_MANIFEST,
    OCIImageInfo,
    TarBuilder,
    host_arch,
    sha256_digest,
    write_layout_with_wrong_diffid,
    write_oci_layout,
)

BASE = TarBuilder().dir("etc").file("etc/os-release", b"ID=test\n").build()
TOP = TarBuilder().dir("app").file("app/run", b"#!/bin/sh\n", mode=0o755).build()
OTHER_ARCH = "s390x" if host_arch() != "s390x" else "ppc64le"
THIRD_ARCH = "riscv64" if host_arch() != "riscv64" else "mips64le"


def resolve(url: str, verify: bool = True) -> ImageSpec:
    return OCILayoutSource(parse(url), verify=verify).resolve()


def layer_hexes(info: OCIImageInfo) -> list[str]:
    return [c.partition(":")[2] for c in info.chain_ids]


def put_blob(layout: Path, doc: Any) -> tuple[str, int]:
    data = json.dumps(doc).encode() if not isinstance(doc, bytes) else doc
    digest = sha256_digest(data)
    (layout / "blobs" / "sha256" / digest.partition(":")[2]).write_bytes(data)
    return digest, len(data)


def read_blob(layout: Path, digest: str) -> Any:
    return json.loads((layout / "blobs" / "sha256" / digest.partition(":")[2]).read_bytes())


def set_index(layout: Path, manifests: list[dict[str, Any]]) -> None:
    doc = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_LAYOUT_INDEX, "manifests": manifests}
    (layout / "index.json").write_text(json.dumps(doc))


def rewrite_manifest(info: OCIImageInfo, change: Any) -> None:
    """Edit the (single-platform) manifest and point index.json at the edited copy."""
    manifest = read_blob(info.path, info.manifest_digest)
    change(manifest)
    digest, size = put_blob(info.path, manifest)
    set_index(info.path, [{"mediaType": MEDIA_TYPE_MANIFEST, "digest": digest, "size": size}])


# -- selection -----------------------------------------------------------------------------------------------


def test_single_image_with_tag(tmp_path: Path) -> None:
    info = write_oci_layout(tmp_path / "img", [BASE, TOP], compression=["gzip", "zstd"], env=["A=1", "B=2"])
    spec = resolve(info.url())
    assert [layer.volume_id for layer in spec.layers] == layer_hexes(info)
    assert [layer.blob for layer in spec.layers] == info.layer_digests
    for layer, digest, diff_id, size in zip(
        spec.layers, info.layer_digests, info.diff_ids, info.manifests[0].layer_sizes, strict=True
    ):
        assert layer.expect == Expect(digest=digest, size=size, diff_id=diff_id)
    assert spec.env == ["A=1", "B=2"]
    assert spec.compressed_size == sum(info.manifests[0].layer_sizes)
    assert spec.config["rootfs"]["diff_ids"] == info.diff_ids


def test_chain_ids_are_the_oci_ones(tmp_path: Path) -> None:
    info = write_oci_layout(tmp_path / "img", [BASE, TOP, BASE])
    assert chain_ids(info.diff_ids) == info.chain_ids
    assert [layer.volume_id for layer in resolve(info.url()).layers] == layer_hexes(info)


def test_tag_selects_among_several_images(tmp_path: Path) -> None:
    one = write_oci_layout(tmp_path / "img", [BASE], tag="one", env=["WHICH=one"])
    two = write_oci_layout(tmp_path / "img", [BASE, TOP], tag="two", env=["WHICH=two"])
    assert resolve(one.url()).env == ["WHICH=one"]
    spec = resolve(two.url())
    assert spec.env == ["WHICH=two"]
    assert [layer.volume_id for layer in spec.layers] == layer_hexes(two)


def test_several_images_and_no_tag_is_ambiguous(tmp_path: Path) -> None:
    write_oci_layout(tmp_path / "img", [BASE], tag="one")
    info = write_oci_layout(tmp_path / "img", [TOP], tag="two")
    with pytest.raises(InvalidImage, match=r"index.json lists 2 images: choose one with oci:///path:tag"):
        resolve(info.url(tag=False))


def test_one_manifest_without_a_tag(tmp_path: Path) -> None:
    info = write_oci_layout(tmp_path / "img", [BASE, TOP], tag=None)
    assert info.url() == f"oci://{tmp_path / 'img'}"
    assert [layer.volume_id for layer in resolve(info.url()).layers] == layer_hexes(info)


def test_untagged_layout_asked_for_a_tag(tmp_path: Path) -> None:
    info = write_oci_layout(tmp_path / "img", [BASE], tag=None)
    with pytest.raises(NotFound, match="tag `latest` not found"):
        resolve(info.url() + ":latest")


def test_unknown_tag(tmp_path: Path) -> None:
    info = write_oci_layout(tmp_path / "img", [BASE], tag="v1")
    with pytest.raises(NotFound) as err:
        resolve(info.url(tag=False) + ":v2")
    assert str(err.value) == f"tag `v2` not found in OCI layout {tmp_path / 'img'}"


@pytest.mark.parametrize("nested", [True, False], ids=["nested-index", "flat-index"])
def test_multi_platform_layout_chooses_the_host(tmp_path: Path, nested: bool) -> None:
    plats = [("linux", OTHER_ARCH, None), ("linux", host_arch(), None), ("linux", THIRD_ARCH, None)]
    info = write_oci_layout(tmp_path / "img", [BASE, TOP], platforms=plats, nested_index=nested)
    assert (info.index_digest is not None) == nested
    spec = resolve(info.url())
    assert [layer.volume_id for layer in spec.layers] == layer_hexes(info)
    assert spec.config["architecture"] == host_arch()


@pytest.mark.parametrize("nested", [True, False], ids=["nested-index", "flat-index"])
def test_multi_platform_without_tag_still_chooses_the_host(tmp_path: Path, nested: bool) -> None:
    plats = [("linux", OTHER_ARCH, None), ("linux", host_arch(), None)]
    info = write_oci_layout(tmp_path / "img", [TOP], platforms=plats, nested_index=nested, tag=None)
    assert resolve(info.url()).config["architecture"] == host_arch()


@pytest.mark.parametrize("nested", [True, False], ids=["nested-index", "flat-index"])
@pytest.mark.parametrize("count", [1, 2])
def test_only_other_platforms_is_a_clear_error(tmp_path: Path, nested: bool, count: int) -> None:
    plats = [("linux", OTHER_ARCH, None), ("linux", THIRD_ARCH, None)][:count]
    info = write_oci_layout(tmp_path / "img", [BASE], platforms=plats, nested_index=nested)
    os_, arch, variant = host()
    want = f"{os_}/{arch}" + (f"/{variant}" if variant else "")
    with pytest.raises(NotFound, match=f"no image for platform {want}"):
        resolve(info.url())


def test_windows_image_is_not_chosen(tmp_path: Path) -> None:
    plats = [("windows", host_arch(), None), ("linux", host_arch(), None)]
    info = write_oci_layout(tmp_path / "img", [TOP], platforms=plats)
    assert resolve(info.url()).config["os"] == "linux"


def test_platform_matching_rules() -> None:
    def d(arch: str, variant: str | None = None, os_: str = "linux") -> dict[str, Any]:
        plat = {"os": os_, "architecture": arch}
        if variant:
            plat["variant"] = variant
        return {"platform": plat, "digest": f"{os_}/{arch}/{variant}"}

    arm64 = ("linux", "arm64", "v8")
    assert choose([d("amd64"), d("arm64")], arm64) == d("arm64")  # missing variant matches v8
    assert choose([d("arm64"), d("arm64", "v8")], arm64) == d("arm64", "v8")  # exact variant wins
    assert choose([d("arm", "v6"), d("arm", "v7")], ("linux", "arm", "v7")) == d("arm", "v7")
    assert choose([d("arm", "v6")], ("linux", "arm", "v7")) is None
    assert choose([d("amd64", os_="windows")], ("linux", "amd64", "")) is None
    assert choose([], ("linux", "amd64", "")) is None


# -- verification --------------------------------------------------------------------------------------------


def test_config_digest_mismatch(tmp_path: Path) -> None:
    info = write_oci_layout(tmp_path / "img", [BASE])
    blob = info.blob_path(info.config_digest)
    blob.write_bytes(blob.read_bytes().replace(b'"Env"', b'"ENV"'))
    with pytest.raises(VerificationError) as err:
        resolve(info.url())
    actual = "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    assert str(err.value) == (
        f"fetching image reference: config digest mismatch: expected: {info.config_digest}, actual: {actual}"
    )


def test_manifest_digest_mismatch(tmp_path: Path) -> None:
    info = write_oci_layout(tmp_path / "img", [BASE])
    blob = info.blob_path(info.manifest_digest)
    blob.write_bytes(blob.read_bytes() + b" ")
    with pytest.raises(VerificationError, match="manifest digest mismatch"):
        resolve(info.url())


def test_manifest_size_mismatch(tmp_path: Path) -> None:
    info = write_oci_layout(tmp_path / "img", [BASE])
    index = json.loads((info.path / "index.json").read_text())
    index["manifests"][0]["size"] += 1
    (info.path / "index.json").write_text(json.dumps(index))
    with pytest.raises(VerificationError, match="manifest size mismatch"):
        resolve(info.url())


def test_wrong_diff_id_is_caught_while_streaming(tmp_path: Path) -> None:
    info = write_layout_with_wrong_diffid(tmp_path / "img", [BASE, TOP], layer_index=1, compression="gzip")
    source = OCILayoutSource(parse(info.url()))
    spec = source.resolve()
    first, second = spec.layers
    with source.open_blob(first) as blob:
        assert LayerStream(blob, first.expect).finish() == info.diff_ids[0]
    with source.open_blob(second) as blob, pytest.raises(VerificationError, match="diffID digest mismatch"):
        LayerStream(blob, second.expect).finish()


def test_skip_layer_validation_expects_nothing_of_layers(tmp_path: Path) -> None:
    info = write_layout_with_wrong_diffid(tmp_path / "img", [BASE])
    spec = resolve(info.url(), verify=False)
    assert spec.layers[0].expect == Expect()
    source = open_source(parse(info.url()), skip_layer_validation=True)
    layer = source.resolve().layers[0]
    with source.open_blob(layer) as blob:
        assert LayerStream(blob, layer.expect).finish() == info.diff_ids[0]


def test_open_blob_streams_the_compressed_layer(tmp_path: Path) -> None:
    info = write_oci_layout(tmp_path / "img", [BASE, TOP], compression="zstd")
    source = OCILayoutSource(parse(info.url()))
    for layer, diff_id in zip(source.resolve().layers, info.diff_ids, strict=True):
        with source.open_blob(layer) as blob:
            assert LayerStream(blob, layer.expect).finish() == diff_id


def test_missing_layer_blob(tmp_path: Path) -> None:
    info = write_oci_layout(tmp_path / "img", [BASE])
    source = OCILayoutSource(parse(info.url()))
    layer = source.resolve().layers[0]
    info.blob_path(info.layer_digests[0]).unlink()
    with pytest.raises(NotFound, match=f"layer blob `{info.layer_digests[0]}` not found"):
        source.open_blob(layer)


# -- hostile and malformed layouts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:../../x",
        "sha256:../../../../etc/passwd",
        "sha256:" + "A" * 64,
        "sha512:" + "a" * 128,
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 64 + "/..",
        "/etc/passwd",
        "",
        None,
        42,
    ],
)
def test_malicious_manifest_digests_are_refused(tmp_path: Path, digest: Any) -> None:
    info = write_oci_layout(tmp_path / "img", [BASE], tag=None)
    set_index(info.path, [{"mediaType": MEDIA_TYPE_MANIFEST, "digest": digest, "size": 10}])
    with pytest.raises(InvalidImage, match="only sha256 digests are supported"):
        resolve(info.url())


@pytest.mark.parametrize("where", ["config", "layer", "diff_id"])
def test_malicious_digests_inside_the_manifest_are_refused(tmp_path: Path, where: str) -> None:
    info = write_oci_layout(tmp_path / "img", [BASE], tag=None)
    evil = "sha256:../../../outside"

    def change(manifest: dict[str, Any]) -> None:
        if where == "config":
            manifest["config"]["digest"] = evil
        elif where == "layer":
            manifest["layers"][0]["digest"] = evil
        else:
            config = read_blob(info.path, info.config_digest)
            config["rootfs"]["diff_ids"] = [evil]
            manifest["config"]["digest"], manifest["config"]["size"] = put_blob(info.path, config)

    rewrite_manifest(info, change)
    with pytest.raises(InvalidImage, match=f"invalid {where} digest `sha256:../../../outside`"):
        resolve(info.url())


def test_missing_layout_is_image_source_doesnt_exist(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as err:
        resolve(f"oci://{tmp_path / 'nope'}")
    assert str(err.value) == "Image source doesn't exist"
    (tmp_path / "file").write_text("not a layout")
    with pytest.raises(NotFound, match=r"^Image source doesn't exist$"):
        resolve(f"oci://{tmp_path / 'file'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFound, match=r"^Image source doesn't exist$"):
        resolve(f"oci://{tmp_path / 'empty'}")


def test_corrupt_index_json(tmp_path: Path) -> None:
    info = write_oci_layout(tmp_path / "img", [BASE])
    (info.path / "index.json").write_text("{not json")
    with pytest.raises(InvalidImage, match=r"invalid index.json"):
        resolve(info.url())
    (info.path / "index.json").write_text('{"manifests": "nope"}')
    with pytest.raises(InvalidImage, match="no manifests list"):
        resolve(info.url())
    set_index(info.path, [])
    with pytest.raises(InvalidImage, match="lists no manifests"):
        resolve(info.url(tag=False))


def test_missing_manifest_blob(tmp_path: Path) -> None:
    info = write_oci_layout(tmp_path / "img", [BASE])
    info.blob_path(info.manifest_digest).unlink()
    with pytest.raises(NotFound, match=f"manifest blob `{info.manifest_digest}` not found"):
        resolve(info.url())


def test_config_and_layer_count_must_agree(tmp_path: Path) -> None:
    info = write_oci_layout(tmp_path / "img", [BASE, TOP], tag=None)
    rewrite_manifest(info, lambda m: m["layers"].pop())
    with pytest.raises(InvalidImage, match="image config lists 2 diff_ids for 1 layers"):
        resolve(info.url())


def test_unsupported_layer_media_type(tmp_path: Path) -> None:
    info = write_oci_layout(tmp_path / "img", [BASE], tag=None)

    def change(m: dict[str, Any]) -> None:
        m["layers"][0]["mediaType"] = "application/vnd.example.squashfs"

    rewrite_manifest(info, change)
    with pytest.raises(InvalidImage, match=r"unsupported layer media type `application/vnd.example.squashfs`"):
        resolve(info.url())


def test_index_nesting_is_bounded(tmp_path: Path) -> None:
    info = write_oci_layout(tmp_path / "img", [BASE], tag=None)
    desc: dict[str, Any] = {
        "mediaType": MEDIA_TYPE_MANIFEST,
        "digest": info.manifest_digest,
        "size": info.manifests[0].size,
    }
    for _ in range(6):
        digest, size = put_blob(
            info.path, {"schemaVersion": 2, "mediaType": MEDIA_TYPE_LAYOUT_INDEX, "manifests": [desc]}
        )
        desc = {"mediaType": MEDIA_TYPE_LAYOUT_INDEX, "digest": digest, "size": size}
    set_index(info.path, [desc])
    with pytest.raises(InvalidImage, match="nested too deeply"):
        resolve(info.url())


# -- Garden's preloaded+layer layout -------------------------------------------------------------------------


def test_base_directory_annotation_and_foreign_urls(tmp_path: Path) -> None:
    info = write_oci_layout(tmp_path / "img", [BASE, TOP], compression=["none", "gzip"], tag=None)

    def change(m: dict[str, Any]) -> None:
        m["layers"][1]["annotations"] = {BASE_DIRECTORY: "/home/vcap"}
        # Port 9 (discard) on loopback: nothing listens, so the fetch is refused at once.
        m["layers"][1]["urls"] = ["http://127.0.0.1:9/droplet.tgz", 7]

    rewrite_manifest(info, change)
    source = OCILayoutSource(parse(info.url()))
    base, top = source.resolve().layers
    assert (base.base_directory, base.urls) == ("", ())
    assert top.base_directory == "/home/vcap"
    assert top.urls == ("http://127.0.0.1:9/droplet.tgz",)
    # The urls win over the layout's own blob (GrootFS): a failing url is the error, naming it.
    with pytest.raises(
        GraftfsError, match=r"fetching foreign layer .*http://127.0.0.1:9/droplet.tgz: connection refused"
    ):
        source.open_blob(top)


def test_malformed_platform_fields_do_not_crash(tmp_path: Path) -> None:
    info = write_oci_layout(tmp_path / "img", [BASE], tag=None)
    desc = {"mediaType": MEDIA_TYPE_MANIFEST, "digest": info.manifest_digest, "size": info.manifests[0].size}
    set_index(info.path, [{**desc, "platform": "linux/amd64"}])
    assert len(resolve(info.url()).layers) == 1  # a lone descriptor without a usable platform is taken
    set_index(info.path, [{**desc, "platform": "linux/amd64"}, {**desc, "platform": ["x"]}])
    with pytest.raises(NotFound, match="no image for platform"):
        resolve(info.url())

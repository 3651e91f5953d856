"""The thin image's OCI layout writer and the thin-layer test a create runs (graftfs.repository.convert, .thin)."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import IO

import pytest

from graftfs.errors import InvalidArgument, InvalidImage
from graftfs.layers import Expect
from graftfs.reference import parse as parse_ref
from graftfs.repository import convert, thin
from graftfs.sources import open_source
from graftfs.sources.base import LayerInfo
from tests.support.images import TarBuilder, sha256_digest

HEX = "ab" * 32
IMAGE = thin.ThinImage(
    [thin.ThinLayer(HEX, convert.thin_url("repo.example", "sha256:" + HEX))], origin="docker://x/y:1"
)
SOURCE_CONFIG = {
    "architecture": "amd64",
    "os": "linux",
    "config": {"Env": ["A=1"], "Cmd": ["/bin/sh"], "User": "1000", "WorkingDir": "/w", "Healthcheck": {}},
}


def test_the_url_is_ducc_s() -> None:
    assert convert.thin_url("unpacked.cern.ch", "sha256:" + HEX) == f"cvmfs://unpacked.cern.ch/.layers/ab/{HEX}/layerfs"


def test_the_thin_layer_holds_thin_json_only_and_is_deterministic() -> None:
    blob, config, diff_id = convert.thin_blobs(IMAGE, SOURCE_CONFIG)
    assert convert.thin_blobs(IMAGE, SOURCE_CONFIG) == (blob, config, diff_id)
    tar = gzip.decompress(blob)
    assert sha256_digest(tar) == diff_id
    doc = json.loads(config)
    assert doc["config"] == {"Env": ["A=1", "CVMFS_IMAGE=true"], "Cmd": ["/bin/sh"], "User": "1000", "WorkingDir": "/w"}
    assert doc["rootfs"] == {"type": "layers", "diff_ids": [diff_id]}


def test_the_layout_gets_the_image_and_replaces_the_tag(tmp_path: Path) -> None:
    first = convert.write_thin(f"oci://{tmp_path}/out:1", IMAGE, SOURCE_CONFIG)
    again = convert.write_thin(f"oci://{tmp_path}/out:1", IMAGE, SOURCE_CONFIG)
    assert first == again
    other = convert.write_thin(f"oci://{tmp_path}/out:2", IMAGE.with_layer(thin.ThinLayer("cd" * 32)), SOURCE_CONFIG)
    index = json.loads((tmp_path / "out/index.json").read_text())
    assert [(m["annotations"]["org.opencontainers.image.ref.name"], m["digest"]) for m in index["manifests"]] == [
        ("1", first),
        ("2", other),
    ]
    # What graftfs reads back: a thin image.
    source = open_source(parse_ref(f"oci://{tmp_path}/out:1"))
    spec = source.resolve()
    assert len(spec.layers) == 1
    assert thin.look_into(source, spec.layers[0])[0] == IMAGE
    assert [layer.blob for layer in thin.image_spec(IMAGE, spec.config).layers] == ["sha256:" + HEX]


def test_only_an_oci_layout_is_an_output() -> None:
    with pytest.raises(InvalidArgument, match="oci:///PATH"):
        convert.parse_output("docker://registry/x:1")


class _Blob:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def resolve(self) -> None:
        raise AssertionError

    def open_blob(self, layer: LayerInfo) -> IO[bytes]:
        return io.BytesIO(self.data)


@pytest.mark.parametrize(
    ("tar", "thin_expected"),
    [
        (TarBuilder().file("thin.json", IMAGE.to_json()).build(), True),
        (TarBuilder().file("./thin.json", IMAGE.to_json()).build(), True),
        (TarBuilder().file("thin.json", IMAGE.to_json()).file("other", b"").build(), False),
        (TarBuilder().dir("etc").build(), False),
        (TarBuilder().file("etc/thin.json", IMAGE.to_json()).build(), False),
    ],
)
def test_a_layer_is_thin_when_its_only_entry_is_thin_json(tar: bytes, thin_expected: bool) -> None:
    layer = LayerInfo("v", "sha256:" + HEX, Expect(diff_id=sha256_digest(tar)))
    found = thin.look_into(_Blob(tar), layer)[0]  # type: ignore[arg-type]
    assert (found == IMAGE) if thin_expected else found is None


def test_a_thin_json_that_is_not_a_descriptor_is_one_line() -> None:
    tar = TarBuilder().file("thin.json", b"{nope").build()
    with pytest.raises(InvalidImage, match="not a thin image descriptor") as err:
        thin.look_into(_Blob(tar), LayerInfo("v", "sha256:" + HEX))[0]  # type: ignore[arg-type]
    assert "\n" not in str(err.value)


def test_publish_maps_a_store_s_ids_back_and_fills_the_ingest_command() -> None:
    from graftfs.idmap import Mapping
    from graftfs.repository import publish

    back = publish._to_image([Mapping(0, 100000, 65536)])
    assert (back(100000), back(100005), back(42)) == (0, 5, 42)
    argv = publish.command_for(
        ["cvmfs_server", "ingest", "-t", "-", "-b", "{path}", "repo", "{digest}"], "sha256:" + HEX
    )
    assert argv[5] == f".layers/ab/{HEX}/layerfs"
    assert argv[7] == "sha256:" + HEX

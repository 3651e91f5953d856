"""The thin image descriptor, as the CernVM-FS graphdriver and DUCC write it."""

from __future__ import annotations

import pytest

from graftfs.errors import InvalidImage
from graftfs.repository.thin import ThinImage, ThinLayer, parse

A, B, C = "a" * 64, "b" * 64, "c" * 64

# What DUCC writes (base first; bare hex digests; urls into .layers/).
DUCC = (
    '{"version":"1.0","origin":"https://registry.hub.docker.com/library/centos:centos7","layers":['
    f'{{"digest":"{A}","url":"cvmfs://unpacked.cern.ch/.layers/aa/{A}/layerfs"}},'
    f'{{"digest":"{B}","url":"cvmfs://unpacked.cern.ch/.layers/bb/{B}/layerfs"}}]}}'
).encode()


def test_a_ducc_descriptor_reads_base_first() -> None:
    thin = parse(DUCC)
    assert [layer.digest for layer in thin.layers] == [A, B]
    assert thin.layers[0].location() == ("unpacked.cern.ch", f".layers/aa/{A}/layerfs")
    assert thin.origin.endswith("centos:centos7") and thin.version == "1.0"


def test_it_round_trips_and_a_commit_goes_on_top() -> None:
    thin = parse(DUCC)
    assert parse(thin.to_json()) == thin
    committed = thin.with_layer(ThinLayer(C, f"cvmfs://unpacked.cern.ch/.layers/cc/{C}/layerfs"))
    assert [layer.digest for layer in committed.layers] == [A, B, C]
    assert thin.to_json() == parse(thin.to_json()).to_json()  # the same image, the same bytes


def test_the_graphdriver_test_data_an_empty_image() -> None:
    assert parse(b'{"version": "0.1", "layers": []}') == ThinImage([], version="0.1")


def test_a_prefixed_digest_is_read_as_bare_hex() -> None:
    assert parse(b'{"version":"1.0","layers":[{"digest":"sha256:' + A.encode() + b'"}]}').layers == [ThinLayer(A)]


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"not json", "not a thin image descriptor"),
        (b"[]", "a JSON object was expected"),
        (b'{"layers": []}', "without a version"),
        (b'{"version": "1.0"}', "without a list of layers"),
        (b'{"version": "1.0", "layers": [{"url": "cvmfs://r/p"}]}', "layer 0 needs a digest"),
        (b'{"version": "1.0", "layers": [{"digest": "abc"}]}', "`abc` is not a sha256 digest"),
        (b'{"version": "1.0", "layers": [], "origin": 7}', "origin is not text"),
    ],
)
def test_what_is_not_a_descriptor_is_one_line_naming_the_file(data: bytes, text: str) -> None:
    with pytest.raises(InvalidImage) as info:
        parse(data, "/thin.json of docker://x")
    assert str(info.value).startswith("/thin.json of docker://x: ") and text in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("url", ["http://r/p", "cvmfs://", "cvmfs://repo", "cvmfs://repo/../etc", "cvmfs://repo/a//b"])
def test_a_url_outside_a_repository_is_refused(url: str) -> None:
    with pytest.raises(InvalidImage, match="is not cvmfs://<repository>/<path>"):
        ThinLayer(A, url).location()

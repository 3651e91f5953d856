"""Small pure pieces behind issue 5 and 6: the features record, kernel ID maps, metric names, mountinfo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graftfs.idmap import Mapping, Namespace
from graftfs.metrics import prometheus_name
from graftfs.store import features
from graftfs.store.layout import Layout
from graftfs.store.quota import mount_of


def test_features_record_round_trip_and_damaged_records(tmp_path: Path) -> None:
    layout = Layout.at(str(tmp_path))
    (tmp_path / "meta").mkdir()
    assert features.load(layout) is None  # no record yet: the caller probes
    recorded = features.Features(kernel="6.18.0", filesystem="xfs", xattrs="user", ids="single", quota="xfs")
    features.save(layout, recorded)
    loaded = features.load(layout)
    assert loaded is not None and loaded.as_dict() == recorded.as_dict()
    for damage in ("{not json", "[]", json.dumps({**recorded.as_dict(), "userns": "yes"}), json.dumps({"version": 1})):
        Path(layout.features_file).write_text(damage)
        assert features.load(layout) is None, damage


@pytest.mark.parametrize(
    ("kernel", "idmapped"), [("6.18.44-fc", True), ("5.19.0", True), ("5.15.0-91", False), ("x", False)]
)
def test_idmapped_mounts_need_linux_5_19(kernel: str, idmapped: bool) -> None:
    assert features.Features(kernel=kernel).idmapped_mounts is idmapped


def test_kernel_maps_of_a_namespace() -> None:
    garden = [Mapping(0, 4294967294, 1), Mapping(1, 1, 4294967293)]
    assert Namespace(garden, garden).kernel_maps() == ("0 4294967294 1\n1 1 4294967293\n",) * 2
    assert Namespace([Mapping(0, 1000, 1)], []).kernel_maps() == ("0 1000 1\n", "0 0 4294967295\n")


@pytest.mark.parametrize(
    ("name", "unit", "metric", "scale"),
    [
        ("ImageCreationTime", "nanos", "graftfs_image_creation_time_seconds", 1e-9),
        ("UsedLayersSize", "bytes", "graftfs_used_layers_size_bytes", 1.0),
        ("DownloadedLayersSizeInBytes", "bytes", "graftfs_downloaded_layers_size_bytes", 1.0),
        ("UsedBackingStoreInBytes", "bytes", "graftfs_used_backing_store_bytes", 1.0),
    ],
)
def test_prometheus_names_in_base_units(name: str, unit: str, metric: str, scale: float) -> None:
    assert prometheus_name(name, unit) == (metric, scale)


def test_mount_of_finds_the_longest_mount() -> None:
    point, fstype, options = mount_of("/proc/self")
    assert (point, fstype) == ("/proc", "proc") and options
    assert mount_of("/")[0] == "/"

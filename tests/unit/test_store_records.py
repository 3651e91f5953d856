"""Small pure pieces: the features record, kernel ID maps, metric names, the commit records clean reads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from graftfs.idmap import Mapping, Namespace
from graftfs.metrics import prometheus_name
from graftfs.store import features, probe
from graftfs.store.images import Images
from graftfs.store.layout import Layout


def test_features_record_round_trip_and_damaged_records(tmp_path: Path) -> None:
    layout = Layout.at(str(tmp_path))
    (tmp_path / "meta").mkdir()
    assert features.load(layout) is None  # no record yet: the caller probes
    recorded = features.Features(kernel="6.18.0", filesystem="xfs", xattrs="user", ids="single", quota="xfs")
    features.save(layout, recorded)
    loaded = features.load(layout)
    assert loaded is not None and loaded.as_dict() == recorded.as_dict()
    damaged = [
        "{not json",
        "[]",
        json.dumps({**recorded.as_dict(), "userns": "yes"}),
        json.dumps({**recorded.as_dict(), "caps_missing": [21]}),
        json.dumps({"version": 1}),
    ]
    for damage in damaged:
        Path(layout.features_file).write_text(damage)
        assert features.load(layout) is None, damage


def test_missing_capabilities_are_read_from_capeff(tmp_path: Path) -> None:
    status = tmp_path / "status"
    # Docker's default set (no CAP_SYS_ADMIN, bit 21), less CAP_SETFCAP (bit 31).
    status.write_text("Name:\tx\nCapPrm:\t00000000a80425fb\nCapEff:\t00000000280425fb\n")
    assert probe._caps_missing(str(status)) == ["CAP_SETFCAP", "CAP_SYS_ADMIN"]
    status.write_text("CapEff:\t000001ffffffffff\n")
    assert probe._caps_missing(str(status)) == []
    status.write_text("Name:\tx\n")
    assert probe._caps_missing(str(status)) == []  # unknown: nothing is claimed missing


def test_features_name_missing_capabilities_and_what_each_costs() -> None:
    lacking = ["CAP_CHOWN", "CAP_FOWNER", "CAP_SETFCAP"]
    report = probe.describe(features.Features(ids="single", caps_missing=lacking), "/s")
    assert "file owners      this process lacks CAP_CHOWN: every file belongs to root in the container" in report
    # Files all keep the caller's own ID: no override (CAP_FOWNER) is needed to unpack them.
    assert [line.split(":")[0] for line in report if "missing" in line] == [
        "capabilities     missing CAP_CHOWN",
        "                 missing CAP_SETFCAP",
    ]
    assert any("security.capability" in line and "fail to unpack" in line for line in report), report
    report = probe.describe(features.Features(ids="all", caps_missing=["CAP_FOWNER"]), "/s")
    assert report[-1].startswith("capabilities     missing CAP_FOWNER: layers with files owned by other users")
    assert probe.describe(features.Features(), "/s")[-1] == "capabilities     all that graftfs uses"
    one_id = probe.describe(features.Features(ids="single", userns=True), "/s")
    assert "file owners      only one ID is mapped here: every file belongs to root in the container" in one_id


@pytest.mark.parametrize(
    ("filesystem", "fuse", "caps", "why", "advice"),
    [
        # On a container's overlay root nobody's kernel mount works: fix fuse-overlayfs or move the store.
        (
            "overlay",
            "no-device",
            [],
            "the kernel will not stack overlayfs on overlay, whoever mounts it; fuse-overlayfs cannot be used: "
            "/dev/fuse is missing",
            "give the container /dev/fuse or keep the store on a filesystem that is not overlay (a volume)",
        ),
        (
            "fuse.fuse-overlayfs",
            "mount-refused",
            [],
            "the kernel will not stack overlayfs on fuse.fuse-overlayfs, whoever mounts it; fuse-overlayfs "
            "cannot be used: it could not mount here",
            "keep the store on a filesystem that is not fuse.fuse-overlayfs (a volume)",
        ),
        # Elsewhere the runtime, with the privileges graftfs lacks, can mount what --without-mount prepares.
        (
            "ext4",
            "device-refused",
            ["CAP_SYS_ADMIN"],
            "this process lacks CAP_SYS_ADMIN; fuse-overlayfs cannot be used: /dev/fuse cannot be opened",
            "use create --without-mount and let the runtime mount it",
        ),
    ],
)
def test_no_mount_says_why_and_advises_only_what_works(
    filesystem: str, fuse: str, caps: list[str], why: str, advice: str
) -> None:
    feats = features.Features(filesystem=filesystem, overlay="none", fuse=fuse, caps_missing=caps)
    assert feats.no_mount() == (why, advice)
    assert f"overlay          cannot be mounted here: {why}: {advice}" in probe.describe(feats, "/s")


@pytest.mark.parametrize(
    ("kernel", "idmapped"), [("6.18.44-fc", True), ("5.19.0", True), ("5.15.0-91", False), ("x", False)]
)
def test_idmapped_mounts_need_linux_5_19(kernel: str, idmapped: bool) -> None:
    assert features.Features(kernel=kernel).idmapped_mounts is idmapped


def test_committed_images_are_those_with_a_directory_and_a_record(tmp_path: Path) -> None:
    layout = Layout.at(str(tmp_path))
    for name in ("listed", "no-record", ".dot-creating-1-ab", "record-is-a-dir"):
        (tmp_path / "images" / name).mkdir(parents=True)
    records = tmp_path / "meta" / "dependencies"
    records.mkdir(parents=True)
    for name in ("image:listed.json", "image:no-dir.json", "image:no-record.json-tmp-1-ab", "other.json"):
        (records / name).write_text("[]")
    (records / "image:record-is-a-dir.json").mkdir()
    assert Images(layout).ids() == ["listed"]
    assert [i for i in os.listdir(tmp_path / "images") if Images(layout).is_committed(i)] == ["listed"]


@pytest.mark.parametrize(
    ("kernel", "overlay", "volatile"),
    [
        ("6.18.44-fc", "kernel", True),
        ("5.10.0", "kernel", True),
        ("5.4.0", "kernel", False),
        ("6.1", "fuse-overlayfs", False),
    ],
)
def test_rootfs_mounts_are_volatile_where_the_kernel_overlay_takes_it(
    kernel: str, overlay: str, volatile: bool
) -> None:
    feats = features.Features(kernel=kernel, overlay=overlay)
    assert feats.volatile_overlay is volatile
    [line] = [line for line in probe.describe(feats, "/s") if line.startswith("container writes ")]
    assert line.startswith("container writes volatile: ") is volatile, line


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


def test_clean_reads_records_only_until_its_candidates_are_all_named(tmp_path: Path) -> None:
    """In a store of many images of the same few layers, clean stops reading commit records once every
    candidate is named; a later refresh reads the rest, and one without a wish reads them all."""
    from graftfs.store.gc import Records

    layout = Layout.at(str(tmp_path))
    deps = Path(layout.dependencies)
    deps.mkdir(parents=True)
    for i in range(50):
        (deps / f"image:i{i}.json").write_text(json.dumps(["shared", f"own-{i}"]))
    (deps / "image:broken.json").write_text("")
    records = Records(layout)
    assert "shared" in records.refresh({"shared"})
    read = len(records.seen)
    assert read <= 2  # it stops at the first good record (each names "shared"), the damaged one perhaps first
    assert records.refresh(set()) == records.used and len(records.seen) == read  # nothing wanted: nothing read
    assert records.refresh({"own-7", "missing"}) >= {"shared", "own-7"}
    assert len(records.seen) == 51 and records.damaged == ["image:broken.json"]  # "missing" made it read all
    assert records.refresh() == {"shared", *(f"own-{i}" for i in range(50))}

"""Metrics: the dropsonde datagrams a Loggregator agent would receive, decoded here from the wire with a
protobuf reader of the tests' own, and the Prometheus text file, read with prometheus_client's parser."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Graftfs
from tests.support.images import TarBuilder, busybox_layer, write_oci_layout


def _fields(data: bytes) -> dict[int, list[bytes | int]]:
    """Decode one protobuf message: field number -> values (varints as int, the rest as bytes)."""
    out: dict[int, list[bytes | int]] = {}
    i = 0

    def varint() -> int:
        nonlocal i
        shift = value = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while i < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        value: bytes | int
        if wire == 0:
            value = varint()
        elif wire == 1:
            value, i = data[i : i + 8], i + 8
        elif wire == 2:
            length = varint()
            value, i = data[i : i + length], i + length
        else:
            raise AssertionError(f"unexpected wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


def _decode(packet: bytes) -> tuple[str, int, int, str, float, str]:
    """(origin, eventType, timestamp, name, value, unit) of a dropsonde Envelope with a ValueMetric."""
    env = _fields(packet)
    metric = _fields(env[9][0])  # type: ignore[arg-type]
    origin, event_type, timestamp = env[1][0], env[2][0], env[6][0]
    name, value, unit = metric[1][0], metric[2][0], metric[3][0]
    assert isinstance(origin, bytes) and isinstance(name, bytes) and isinstance(unit, bytes)
    assert isinstance(event_type, int) and isinstance(timestamp, int) and isinstance(value, bytes)
    return origin.decode(), event_type, timestamp, name.decode(), struct.unpack("<d", value)[0], unit.decode()


def _image(workdir: Path) -> str:
    return write_oci_layout(workdir / "img", [busybox_layer(), TarBuilder().file("f", b"x" * 5000).build()]).url()


def test_dropsonde_value_metrics_reach_the_agent(gfs: Graftfs, workdir: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as agent:
        agent.bind(("127.0.0.1", 0))
        agent.settimeout(5)
        endpoint = f"127.0.0.1:{agent.getsockname()[1]}"
        before = time.time_ns()
        url = _image(workdir)
        gfs.run("--metron-endpoint", endpoint, "create", "--disk-limit-size-bytes", str(50 << 20), url, "m")
        gfs.run("--metron-endpoint", endpoint, "delete", "m")
        gfs.run("--metron-endpoint", endpoint, "clean")
        received = []
        agent.settimeout(0.5)
        try:
            while True:
                received.append(_decode(agent.recv(65536)))
        except TimeoutError:
            pass
    after = time.time_ns()
    assert received
    assert {r[0] for r in received} == {"grootfs"} and {r[1] for r in received} == {6}
    assert all(before <= r[2] <= after for r in received)
    units = {name: unit for _, _, _, name, _, unit in received}
    nanos = ["ImageCreationTime", "ImageDeletionTime", "ImageCleanTime", "UnpackTime", "DownloadTime"]
    nanos += ["ExclusiveLockingTime", "SharedLockingTime"]
    sizes = ["UsedLayersSize", "UnusedLayersSize", "DownloadedLayersSizeInBytes", "CommittedQuotaInBytes"]
    sizes += ["UsedBackingStoreInBytes"]
    assert units == {**dict.fromkeys(nanos, "nanos"), **dict.fromkeys(sizes, "bytes")}
    values = {name: value for _, _, _, name, value, _ in received}
    assert values["ImageCreationTime"] > values["UnpackTime"] > 0
    assert values["CommittedQuotaInBytes"] > 0 and values["DownloadedLayersSizeInBytes"] > 5000
    # After the delete and the clean, nothing is used and the layers are gone.
    assert [v for _, _, _, n, v, _ in received if n == "UsedLayersSize"][-1] == 0


def test_prometheus_text_file(gfs: Graftfs, workdir: Path) -> None:
    textfile = workdir / "graftfs.prom"
    url = _image(workdir)
    gfs.run("--metrics-textfile", str(textfile), "create", url, "p")
    gfs.run("--metrics-textfile", str(textfile), "delete", "p")
    families = {f.name: f for f in text_string_to_metric_families(textfile.read_text())}
    # The delete added its values without losing the create's.
    for name in ("graftfs_image_creation_time_seconds", "graftfs_image_deletion_time_seconds"):
        assert families[name].type == "gauge"
        (sample,) = families[name].samples
        assert 0 < sample.value < 60
    assert families["graftfs_downloaded_layers_size_bytes"].samples[0].value > 5000
    assert families["graftfs_used_layers_size_bytes"].samples[0].value == 0

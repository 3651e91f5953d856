"""Benchmark: unpack throughput on one layer of 20,000 small files, cold (empty store), against its peers.

    sudo .venv/bin/python -m bench.unpack [--quick] [--runs 3] [--json bench/results/unpack.json]

The layer (bench/images.small_files_layer: 20,000 files of 1-8 KiB in 220 directories, ~108 MB of tar,
~54 MB of gzip) is the only layer of an image in a local OCI layout, on the same fresh XFS filesystem as
every store. Each run of each tool starts from an empty store; runs are interleaved, after one untimed
round. MB/s is the layer's uncompressed (tar) size, in 10^6 bytes, over the wall time of the timed
command; files/s is the number of files over the same time. What is timed:

* graftfs: ``graftfs create oci://LAYOUT:latest ID`` (read and verify the blob, decompress, unpack, mount);
* umoci: ``umoci unpack --image LAYOUT:latest BUNDLE`` (the same, plus the bundle's mtree manifest);
* containerd: the image is first imported from an OCI archive of the layout, without unpacking (``ctr
  images import --no-unpack``, untimed: it copies and verifies the blob into the content store); then
  ``ctr images mount --rw REF TARGET`` is timed: the daemon decompresses and unpacks the layer into the
  overlayfs snapshotter, and ctr prepares a writable snapshot on it and mounts it;
* podman: ``podman pull oci:LAYOUT:latest`` (copy the blob to a temporary file, verify, unpack into the
  overlay store; no container is made).
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    Part,
    Results,
    Row,
    Sample,
    duration,
    environment,
    fresh_dir,
    graftfs_script,
    installed,
    measured,
    part_main,
    peak_rss,
    run,
    statistics_of,
    xfs_scratch,
)
from bench.images import small_files_layer
from bench.peers import COMMANDS, containerd, podman
from tests.support.images import OCIImageInfo, write_oci_layout

GRAFTFS = "graftfs create"
REF = "bench/files:latest"


@dataclass(frozen=True)
class Source:
    layout: Path
    archive: Path  # the same layout as an OCI archive (a tar of its directory), for ctr images import
    last_file: str  # in the unpacked rootfs, when every file is there
    graftfs: str


def check_rootfs(rootfs: Path, source: Source) -> None:
    if not (rootfs / source.last_file).is_file():
        raise RuntimeError(f"{rootfs} lacks {source.last_file}")


def run_graftfs(source: Source, work: Path) -> Sample:
    base = [source.graftfs, "--store", str(work / "store"), "--log-level", "error"]
    run([*base, "init-store"])
    seconds, rss = measured([*base, "create", f"oci://{source.layout}:latest", "files"], work)
    check_rootfs(work / "store" / "images" / "files" / "rootfs", source)
    run([*base, "delete", "files"])
    return Sample(seconds, rss)


def run_umoci(source: Source, work: Path) -> Sample:
    seconds, rss = measured(["umoci", "unpack", "--image", f"{source.layout}:latest", str(work / "bundle")], work)
    check_rootfs(work / "bundle" / "rootfs", source)
    return Sample(seconds, rss)


def run_containerd(source: Source, work: Path) -> Sample:
    target = work / "rootfs"
    target.mkdir()
    with containerd(work / "containerd") as daemon:
        run(daemon.ctr("images", "import", "--no-unpack", "--base-name", REF.split(":")[0], str(source.archive)))
        seconds, rss = measured(daemon.ctr("images", "mount", "--rw", REF, str(target)), work)
        check_rootfs(target, source)
        run(daemon.ctr("images", "unmount", "--rm", str(target)))
        return Sample(seconds, rss, daemon.vm_hwm_kib())


def run_podman(source: Source, work: Path) -> Sample:
    return Sample(*measured([*podman(work), "pull", "--quiet", f"oci:{source.layout}:latest"], work))


@dataclass(frozen=True)
class Tool:
    name: str
    commands: tuple[str, ...]  # what must be installed
    run: Callable[[Source, Path], Sample]


TOOLS = (
    Tool(GRAFTFS, (), run_graftfs),
    Tool("umoci unpack", ("umoci",), run_umoci),
    Tool("ctr images mount --rw", ("containerd", "ctr"), run_containerd),
    Tool("podman pull", ("podman",), run_podman),
)


def archive(info: OCIImageInfo, path: Path) -> Path:
    with tarfile.open(path, "w") as tf:
        for entry in sorted(info.path.rglob("*")):
            tf.add(entry, arcname=str(entry.relative_to(info.path)), recursive=False)
    return path


def run_part(quick: bool, runs: int | None) -> Results:
    runs = runs or (1 if quick else 3)
    files = 2000 if quick else 20_000
    graftfs = graftfs_script()
    tools = [tool for tool in TOOLS if installed(*tool.commands)]
    samples: dict[str, list[Sample]] = {tool.name: [] for tool in tools}
    with xfs_scratch(4096) as scratch:
        layer = small_files_layer(files)
        info = write_oci_layout(scratch / "layout", [layer])
        compressed = info.blob_path(info.layer_digests[0]).stat().st_size
        last = files - 1
        source = Source(
            info.path,
            archive(info, scratch / "image.tar"),
            f"data/{last // 1000:03d}/{last // 100 % 10}/{last:05d}",
            graftfs,
        )
        for tool in tools:  # untimed: the layout and every tool's binaries reach the page cache
            with fresh_dir(scratch / "warmup") as work:
                tool.run(source, work)
        for i in range(runs):
            for tool in tools[i % len(tools) :] + tools[: i % len(tools)]:
                with fresh_dir(scratch / "run") as work:
                    samples[tool.name].append(tool.run(source, work))
    return {
        **environment(COMMANDS),
        "runs": runs,
        "skipped": [f"{tool.name}: not installed" for tool in TOOLS if tool not in tools],
        "layer": {"files": files, "uncompressed_bytes": len(layer), "compressed_bytes": compressed},
        "tools": {name: statistics_of(series) for name, series in samples.items()},
    }


def rows(results: Results) -> list[Row]:
    layer, tools = results["layer"], results["tools"]
    assert isinstance(layer, dict) and isinstance(tools, dict)
    what = f"unpack {layer['files']:,} small files ({layer['uncompressed_bytes'] / 1e6:.0f} MB)"
    ours = tools[GRAFTFS]["median_ms"]
    out: list[Row] = []
    for name, stats in tools.items():
        seconds = stats["median_ms"] / 1000
        speed = f"{layer['uncompressed_bytes'] / 1e6 / seconds:.0f} MB/s, {layer['files'] / seconds:,.0f} files/s"
        result = f"{speed} ({duration(stats['median_ms'])} median; peak RSS {peak_rss(stats)})"
        out.append(Row(what, name, result, ours / stats["median_ms"]))
    return out


PART = Part(
    "unpack",
    "Unpack throughput: one layer of many small files, cold",
    run_part,
    rows,
    "MB/s: uncompressed layer bytes (10^6) over the median wall time. graftfs / tool: times; below 1, graftfs\n"
    "is faster. ctr's time starts after the blob is in its content store (see bench/unpack.py).",
)

if __name__ == "__main__":
    part_main(PART, __doc__)

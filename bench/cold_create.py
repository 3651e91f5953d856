"""Benchmark: cold create (empty store) of a ~120 MB, 5-layer image and of a 128-layer image from a local
registry, against its peers.

    sudo .venv/bin/python -m bench.cold_create [--quick] [--runs 5] [--json bench/results/cold_create.json]

The images are built here (bench/images.py): the big one from this machine's own files, the deep one from
busybox plus 127 one-file layers, to show that deep stacks work. Both are pushed to Debian's
``docker-registry`` on 127.0.0.1. Each run of each tool starts from an empty store on one fresh XFS
filesystem (on a loop device: the root ext4 here is mounted with ``discard``), and runs are interleaved, one
round of every tool at a time, so drift hits every tool alike. What is timed:

* graftfs: ``graftfs create`` (download, verify, unpack every layer, mount the rootfs);
* containerd: ``ctr image pull`` against a containerd of our own, fresh root per run (download into its
  content store, then unpack into the overlayfs snapshotter: that half runs in the daemon); no rootfs is
  prepared or mounted;
* skopeo + umoci: ``skopeo copy`` to an OCI layout, then ``umoci unpack`` into a bundle;
* podman (when installed): ``podman pull`` into a fresh overlay store; no container is created.

Registry blobs stay in the page cache for every tool alike (one untimed warm-up round first); dirty pages
are written back before each timed command, so no tool pays for the previous one's writes.
"""

from __future__ import annotations

import gzip
import shutil
import statistics
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
    target,
    xfs_scratch,
)
from bench.images import DEBIAN_LIKE, debian_like_image
from bench.peers import COMMANDS, containerd, podman
from tests.support.images import OCIImageInfo, many_layers_image
from tests.support.registry import start_registry

GRAFTFS = "graftfs create"
SKOPEO_UMOCI = "skopeo copy + umoci unpack"
IMAGE_ID = "bench"


@dataclass(frozen=True)
class Image:
    key: str  # its repository, bench/<key>, and its key in the results
    label: str
    build: Callable[[Path, bool], OCIImageInfo]  # (layout path, quick)
    expected: tuple[str, ...]  # what every unpacked rootfs must hold: its lowest and its top layer's files


IMAGES = (
    Image(
        "big",
        "~120 MB, 5 layers",
        lambda path, quick: debian_like_image(path, size_mb=30 if quick else 120),
        ("bin/busybox", DEBIAN_LIKE[-1].root.lstrip("/")),
    ),
    Image("deep", "128 layers", lambda path, quick: many_layers_image(path, 128), ("bin/busybox", "layers/127")),
)


@dataclass(frozen=True)
class Target:
    host: str  # 127.0.0.1:<port>
    ref: str  # 127.0.0.1:<port>/bench/<key>:latest
    layers: int
    expected: tuple[str, ...]
    graftfs: str  # the console script


def check_rootfs(rootfs: Path, target: Target) -> None:
    missing = [name for name in target.expected if not (rootfs / name).exists()]
    if missing:
        raise RuntimeError(f"{rootfs} lacks {missing}")


def run_graftfs(target: Target, work: Path) -> Sample:
    base = [target.graftfs, "--store", str(work / "store"), "--log-level", "error"]
    run([*base, "init-store"])
    seconds, rss = measured(
        [*base, "create", "--insecure-registry", target.host, f"docker://{target.ref}", IMAGE_ID], work
    )
    check_rootfs(work / "store" / "images" / IMAGE_ID / "rootfs", target)
    run([*base, "delete", IMAGE_ID])
    run([*base, "delete-store"])
    return Sample(seconds, rss)


def run_containerd(target: Target, work: Path) -> Sample:
    # A fresh daemon per run: empty content store and snapshotter, and VmHWM covers this pull alone.
    with containerd(work) as daemon:
        seconds, rss = measured(daemon.ctr("image", "pull", "--plain-http", target.ref), work)
        daemon_rss = daemon.vm_hwm_kib()
    snapshots = work / "root" / "io.containerd.snapshotter.v1.overlayfs" / "snapshots"
    if len(list(snapshots.iterdir())) != target.layers:
        raise RuntimeError(f"containerd unpacked {len(list(snapshots.iterdir()))} of {target.layers} layers")
    return Sample(seconds, rss, daemon_rss)


def run_skopeo_umoci(target: Target, work: Path) -> Sample:
    layout, bundle = work / "oci", work / "bundle"
    copy = ["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{target.ref}", f"oci:{layout}:latest"]
    copy_s, copy_rss = measured(copy, work)
    unpack_s, unpack_rss = measured(["umoci", "unpack", "--image", f"{layout}:latest", str(bundle)], work)
    check_rootfs(bundle / "rootfs", target)
    return Sample(copy_s + unpack_s, max(copy_rss, unpack_rss))


def run_podman(target: Target, work: Path) -> Sample:
    argv = [*podman(work), "pull", "--quiet", "--tls-verify=false", f"docker://{target.ref}"]
    seconds, rss = measured(argv, work)
    return Sample(seconds, rss)


@dataclass(frozen=True)
class Tool:
    name: str
    commands: tuple[str, ...]  # what must be installed
    run: Callable[[Target, Path], Sample]


TOOLS = (
    Tool(GRAFTFS, (), run_graftfs),
    Tool("ctr image pull", ("containerd", "ctr"), run_containerd),
    Tool(SKOPEO_UMOCI, ("skopeo", "umoci"), run_skopeo_umoci),
    Tool("podman pull", ("podman",), run_podman),
)


def once(tool: Tool, target: Target, work: Path) -> Sample:
    with fresh_dir(work):
        return tool.run(target, work)


def measure_image(image: Image, tools: list[Tool], runs: int, quick: bool, scratch: Path, graftfs: str) -> Results:
    samples: dict[str, list[Sample]] = {tool.name: [] for tool in tools}
    with start_registry(scratch / "registry") as registry:
        info = image.build(scratch / "layout", quick)
        registry.push(info.path, "latest", f"bench/{image.key}")
        blobs = [info.blob_path(digest).read_bytes() for digest in info.layer_digests]
        described: Results = {
            "label": image.label,
            "ref": f"bench/{image.key}:latest",
            "manifest": info.manifest_digest,
            "layers": len(blobs),
            "compressed_bytes": sum(len(blob) for blob in blobs),
            "uncompressed_bytes": sum(len(gzip.decompress(blob)) for blob in blobs),
        }
        shutil.rmtree(info.path)
        ref = f"{registry.host}/bench/{image.key}:latest"
        target = Target(registry.host, ref, len(blobs), image.expected, graftfs)
        # Untimed: brings the registry's blobs and every tool's binaries into the page cache.
        for tool in tools:
            once(tool, target, scratch / "warmup")
        for i in range(runs):
            # Interleaved, and rotated so that each tool takes each place in the round in turn.
            for tool in tools[i % len(tools) :] + tools[: i % len(tools)]:
                samples[tool.name].append(once(tool, target, scratch / "run"))
    medians = {name: statistics.median(s.seconds for s in series) for name, series in samples.items()}
    return {
        "image": described,
        "tools": {name: statistics_of(series) for name, series in samples.items()},
        "ratios": {f"graftfs/{name}": medians[GRAFTFS] / medians[name] for name in medians},
    }


def run_part(quick: bool, runs: int | None) -> Results:
    runs = runs or (1 if quick else 5)
    graftfs = graftfs_script()
    tools = [tool for tool in TOOLS if installed(*tool.commands)]
    results: Results = {
        **environment(COMMANDS),
        "runs": runs,
        "skipped": [f"{tool.name}: not installed" for tool in TOOLS if tool not in tools],
    }
    targets: list[Results] = []
    with xfs_scratch(4096) as scratch:
        for image in IMAGES:
            measured_image = measure_image(image, tools, runs, quick, scratch, graftfs)
            results[image.key] = measured_image
            ratios = measured_image["ratios"]
            assert isinstance(ratios, dict)
            ours = measured_image["tools"]
            assert isinstance(ours, dict)
            rss_mib = ours[GRAFTFS]["peak_rss_kib"] / 1024
            targets.append(target(f"cold create ({image.label}): peak RSS, MiB", rss_mib, 60))
            if SKOPEO_UMOCI in [tool.name for tool in tools]:
                speedup = 1 / ratios[f"graftfs/{SKOPEO_UMOCI}"]
                what = f"cold create ({image.label}): x faster than {SKOPEO_UMOCI}"
                targets.append(target(what, speedup, 1.5, at_most=False))
    results["targets"] = targets
    return results


def rows(results: Results) -> list[Row]:
    out: list[Row] = []
    for image in IMAGES:
        measured_image = results[image.key]
        assert isinstance(measured_image, dict)
        for name, row in measured_image["tools"].items():
            p95 = f", {duration(row['p95_ms'])} p95" if "p95_ms" in row else ""
            result = f"{duration(row['median_ms'])} median{p95}; peak RSS {peak_rss(row)}"
            ratio = measured_image["ratios"][f"graftfs/{name}"]
            out.append(Row(f"cold create, {image.label}", name, result, ratio))
    return out


PART = Part(
    "cold_create",
    "Cold create (empty store), from a local registry",
    run_part,
    rows,
    "Peak RSS: the timed command (skopeo + umoci: the larger of the two); containerd's own peak is shown apart,\n"
    "since it, not ctr, unpacks the layers.",
)

if __name__ == "__main__":
    part_main(PART, __doc__)

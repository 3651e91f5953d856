"""Benchmark: cold create (empty store) of a ~100 MB, 5-layer image from a local registry, against its peers.

    sudo .venv/bin/python -m bench.cold_create [--runs 5] [--json bench/results/cold_create.json]

The image is built here from this machine's own files (bench/images.py) and pushed to Debian's
``docker-registry`` on 127.0.0.1. Each run of each tool starts from an empty store on one fresh XFS
filesystem (on a loop device: the root ext4 here is mounted with ``discard``), and runs are interleaved, one
round of every tool at a time, so drift hits every tool alike. What is timed:

* graftfs: ``graftfs create`` (download, verify, unpack every layer, mount the rootfs);
* containerd: ``ctr image pull`` against a containerd of our own, fresh root per run (download into its
  content store, then unpack into the overlayfs snapshotter: that half runs in the daemon);
* skopeo + umoci: ``skopeo copy`` to an OCI layout, then ``umoci unpack`` into a bundle;
* podman (when installed): ``podman pull`` into a fresh overlay store.

Registry blobs stay in the page cache for every tool alike (one untimed warm-up round first); dirty pages
are written back before each timed command, so no tool pays for the previous one's writes.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.common import ENV, cpu_model, graftfs_script, machine, summary, unmount_under, xfs_scratch
from bench.images import DEBIAN_LIKE, debian_like_image
from tests.support.registry import start_registry
from tests.support.rss import measured_argv, read_report

GRAFTFS = "graftfs create"
REPO = "bench/big"
IMAGE_ID = "bench"
# What every unpacked rootfs must hold: the base layer's shell and the top layer's tree.
EXPECTED = ("bin/busybox", DEBIAN_LIKE[-1].root.lstrip("/"))


@dataclass(frozen=True)
class Sample:
    seconds: float
    rss_kib: int  # peak RSS of the timed command (the largest of them) and its waited-for children
    daemon_rss_kib: int | None = None  # peak RSS of the daemon that did part of the work, if any


@dataclass(frozen=True)
class Target:
    host: str  # 127.0.0.1:<port>
    ref: str  # 127.0.0.1:<port>/bench/big:latest
    layers: int
    graftfs: str  # the console script


def measured(argv: list[str], work: Path) -> tuple[float, int]:
    """Run ``argv`` to completion; its wall time and peak RSS in KiB, both taken by a small launcher
    (tests/support/rss.py: this process's own peak would otherwise show in the child's ``ru_maxrss``)."""
    name = Path(argv[0]).name
    report = work / f"{name}.rss"
    with open(work / f"{name}.log", "ab") as log:
        # TMPDIR: whatever a tool spools goes to the scratch filesystem too, and is removed with the run.
        env = {**ENV, "TMPDIR": str(work)}
        os.sync()  # the previous command's dirty pages are written back on its time, not this one's
        # Its own process group, so that an interrupted run stops the tool itself, not only the launcher.
        proc = subprocess.Popen(
            measured_argv(argv, report),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=env,
            start_new_session=True,
        )
        try:
            proc.wait()
        except BaseException:
            # Gone already when the interrupt came just as it ended.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    code, seconds, rss_kib = read_report(report)
    if code != 0:
        tail = (work / f"{name}.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{argv} exited {code}:\n{tail}")
    return seconds, rss_kib


def check_rootfs(rootfs: Path) -> None:
    missing = [name for name in EXPECTED if not (rootfs / name).exists()]
    if missing:
        raise RuntimeError(f"{rootfs} lacks {missing}")


def run_graftfs(target: Target, work: Path) -> Sample:
    base = [target.graftfs, "--store", str(work / "store"), "--log-level", "error"]
    subprocess.run([*base, "init-store"], check=True, env=ENV)
    seconds, rss = measured(
        [*base, "create", "--insecure-registry", target.host, f"docker://{target.ref}", IMAGE_ID], work
    )
    check_rootfs(work / "store" / "images" / IMAGE_ID / "rootfs")
    subprocess.run([*base, "delete", IMAGE_ID], check=True, env=ENV, stdout=subprocess.DEVNULL)
    subprocess.run([*base, "delete-store"], check=True, env=ENV)
    return Sample(seconds, rss)


@contextlib.contextmanager
def containerd(work: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A containerd with root, state, socket and opt dir under ``work``; yields (socket, daemon)."""
    sock = work / "state" / "containerd.sock"
    config = work / "containerd.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{work / "root"}"\n'
        f'state = "{work / "state"}"\n'
        # No CRI (nothing here is Kubernetes), and none of the snapshotters that can only log why they cannot start.
        'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",'
        ' "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",'
        ' "io.containerd.snapshotter.v1.zfs"]\n'
        f'[grpc]\n  address = "{sock}"\n'
        f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{work / "opt"}"\n'
    )
    with open(work / "containerd.log", "wb") as log:
        # Its own session, so a Ctrl-C reaches only us and ctr: the finally below stops it, after ctr is gone.
        daemon = subprocess.Popen(
            ["containerd", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 20
        ping = ["ctr", "--address", str(sock), "version"]
        while subprocess.run(ping, capture_output=True, check=False).returncode != 0:
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start: {(work / 'containerd.log').read_text()[-2000:]}")
            time.sleep(0.05)
        yield str(sock), daemon
    finally:
        stop(daemon)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def vm_hwm_kib(pid: int) -> int:
    """Peak RSS of a live process, from /proc (a daemon is not ours to wait4 until it stops)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def run_containerd(target: Target, work: Path) -> Sample:
    # A fresh daemon per run: empty content store and snapshotter, and VmHWM covers this pull alone.
    with containerd(work) as (sock, daemon):
        seconds, rss = measured(["ctr", "--address", sock, "image", "pull", "--plain-http", target.ref], work)
        daemon_rss = vm_hwm_kib(daemon.pid)
    snapshots = work / "root" / "io.containerd.snapshotter.v1.overlayfs" / "snapshots"
    if len(list(snapshots.iterdir())) != target.layers:
        raise RuntimeError(f"containerd unpacked {len(list(snapshots.iterdir()))} of {target.layers} layers")
    return Sample(seconds, rss, daemon_rss)


def run_skopeo_umoci(target: Target, work: Path) -> Sample:
    layout, bundle = work / "oci", work / "bundle"
    copy = ["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{target.ref}", f"oci:{layout}:latest"]
    copy_s, copy_rss = measured(copy, work)
    unpack_s, unpack_rss = measured(["umoci", "unpack", "--image", f"{layout}:latest", str(bundle)], work)
    check_rootfs(bundle / "rootfs")
    return Sample(copy_s + unpack_s, max(copy_rss, unpack_rss))


def run_podman(target: Target, work: Path) -> Sample:
    argv = ["podman", "--root", str(work / "root"), "--runroot", str(work / "runroot"), "--tmpdir", str(work)]
    argv += ["--storage-driver", "overlay", "pull", "--quiet", "--tls-verify=false", f"docker://{target.ref}"]
    seconds, rss = measured(argv, work)
    return Sample(seconds, rss)


@dataclass(frozen=True)
class Tool:
    name: str
    commands: tuple[str, ...]  # what must be installed; each answers --version
    run: Callable[[Target, Path], Sample]


TOOLS = (
    Tool(GRAFTFS, (), run_graftfs),
    Tool("containerd (ctr pull)", ("containerd", "ctr"), run_containerd),
    Tool("skopeo copy + umoci unpack", ("skopeo", "umoci"), run_skopeo_umoci),
    Tool("podman pull", ("podman",), run_podman),
)


def version(command: str) -> str:
    out = subprocess.run([command, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"


def versions(tools: list[Tool]) -> dict[str, str]:
    repo = Path(__file__).resolve().parent.parent
    rev = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty"], capture_output=True, text=True)
    found = {"graftfs": f"{importlib.metadata.version('graftfs')} ({rev.stdout.strip() or 'no git'})"}
    for command in dict.fromkeys(("docker-registry", "skopeo", *(c for tool in tools for c in tool.commands))):
        found[command] = version(command)
    return found


def once(tool: Tool, target: Target, work: Path) -> Sample:
    work.mkdir()
    try:
        return tool.run(target, work)
    finally:
        # After a failure or Ctrl-C a store may still hold a mount; the next run starts empty regardless.
        unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)


def run(runs: int) -> dict[str, object]:
    graftfs = graftfs_script()
    tools = [tool for tool in TOOLS if all(shutil.which(c) for c in tool.commands)]
    results: dict[str, object] = {
        "machine": machine(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "runs": runs,
        "versions": versions(tools),
        "skipped": [f"{tool.name}: not installed" for tool in TOOLS if tool not in tools],
    }
    samples: dict[str, list[Sample]] = {tool.name: [] for tool in tools}
    with xfs_scratch(4096) as scratch, start_registry(scratch / "registry") as registry:
        info = debian_like_image(scratch / "layout")
        registry.push(info.path, "latest", REPO)
        blobs = [info.blob_path(digest).read_bytes() for digest in info.layer_digests]
        results["image"] = {
            "ref": f"{REPO}:latest",
            "manifest": info.manifest_digest,
            "layers": len(blobs),
            "compressed_bytes": sum(len(blob) for blob in blobs),
            "uncompressed_bytes": sum(len(gzip.decompress(blob)) for blob in blobs),
        }
        shutil.rmtree(info.path)
        target = Target(registry.host, f"{registry.host}/{REPO}:latest", len(blobs), graftfs)
        # Untimed: brings the registry's blobs and every tool's binaries into the page cache.
        for tool in tools:
            once(tool, target, scratch / "warmup")
        for i in range(runs):
            # Interleaved, and rotated so that each tool takes each place in the round in turn.
            for tool in tools[i % len(tools) :] + tools[: i % len(tools)]:
                samples[tool.name].append(once(tool, target, scratch / "run"))
    medians = {name: statistics.median(s.seconds for s in series) for name, series in samples.items()}
    for name, series in samples.items():
        results[name] = statistics_of(series, runs)
    results["ratios"] = {f"graftfs/{name}": medians[GRAFTFS] / medians[name] for name in medians if name != GRAFTFS}
    return results


def statistics_of(samples: list[Sample], runs: int) -> dict[str, object]:
    stats: dict[str, object] = dict(summary([s.seconds for s in samples]))
    if runs < 5:
        del stats["p95_ms"]  # with fewer runs it is just the slowest one
    stats["samples_ms"] = [s.seconds * 1000 for s in samples]
    stats["peak_rss_kib"] = max(s.rss_kib for s in samples)
    daemon = [s.daemon_rss_kib for s in samples if s.daemon_rss_kib is not None]
    if daemon:
        stats["daemon_peak_rss_kib"] = max(daemon)
    return stats


def print_table(results: dict[str, object], path: Path) -> None:
    print(f"{'tool':<28} {'median s':>9} {'p95 s':>7} {'peak RSS MiB':>13} {'daemon MiB':>11} {'graftfs/tool':>13}")
    ratios = results["ratios"]
    assert isinstance(ratios, dict)
    for tool in TOOLS:
        row = results.get(tool.name)
        if not isinstance(row, dict):
            continue
        p95 = f"{row['p95_ms'] / 1000:.2f}" if "p95_ms" in row else "-"
        daemon = f"{row['daemon_peak_rss_kib'] / 1024:.0f}" if "daemon_peak_rss_kib" in row else "-"
        print(
            f"{tool.name:<28} {row['median_ms'] / 1000:>9.2f} {p95:>7} {row['peak_rss_kib'] / 1024:>13.0f}"
            f" {daemon:>11} {ratios.get(f'graftfs/{tool.name}', 1.0):>13.2f}"
        )
    print("graftfs/tool below 1: graftfs is faster. Peak RSS: the timed command (skopeo + umoci: the larger of the")
    print("two); daemon: containerd's own peak, since it, not ctr, unpacks the layers.")
    skipped = results["skipped"]
    assert isinstance(skipped, list)
    for note in skipped:
        print(f"skipped: {note}")
    print(f"({results['machine']}, {results['cpu']}; raw results in {path})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path("bench/results/cold_create.json"))
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    # A plain kill must unwind like Ctrl-C does: unmount, stop the servers, detach the loop device.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    results = run(args.runs)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results, args.json)


if __name__ == "__main__":
    main()

"""Benchmark: warm create (image already cached) and delete, per process, as Garden runs them.

    sudo .venv/bin/python -m bench.warm_create [--runs 30] [--json bench/results/warm.json]

Every store lives on one fresh XFS filesystem on a loop device made for the run (the root ext4 here is
mounted with ``discard``, which makes file-heavy work slow and noisy). The floor for any Python command,
``python -c pass`` from the same interpreter, is measured in the same run, and results are reported as
ratios to it: absolute times on a shared 2-core machine drift, ratios much less.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.images import TarBuilder, busybox_layer, write_oci_layout


@contextmanager
def xfs_scratch(size_mb: int = 2048) -> Iterator[Path]:
    """A fresh XFS filesystem on a loop device; detaches only the device it attached."""
    base = Path(tempfile.mkdtemp(prefix="graftfs-bench-"))
    image, mnt = base / "xfs.img", base / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(size_mb << 20)
    subprocess.run(["mkfs.xfs", "-q", str(image)], check=True)
    dev = subprocess.run(["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True)
    device = dev.stdout.strip()
    try:
        subprocess.run(["mount", "-o", "noatime", device, str(mnt)], check=True)
        try:
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", device], check=True)
        shutil.rmtree(base)


# Measure an installed tool: bytecode compiled and cached (some shells export PYTHONDONTWRITEBYTECODE).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=ENV)
    return time.perf_counter() - start


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": statistics.median(ordered) * 1000,
        "p95_ms": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] * 1000,
        "runs": len(ordered),
    }


def run(runs: int) -> dict[str, object]:
    graftfs = str(Path(sys.executable).with_name("graftfs"))
    import graftfs as package

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(package.__file__).parent)], check=True)
    results: dict[str, object] = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, kernel {platform.release()}",
        "python": platform.python_version(),
        "runs": runs,
    }
    with xfs_scratch() as scratch:
        layers = [busybox_layer(), TarBuilder().dir("etc").file("etc/app", b"app\n").build()]
        info = write_oci_layout(scratch / "layout", layers)
        store = scratch / "store"
        base = [graftfs, "--store", str(store)]
        subprocess.run([*base, "init-store"], check=True)
        subprocess.run([*base, "create", info.url(), "warmup"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([*base, "delete", "warmup"], check=True, stdout=subprocess.DEVNULL)

        floor: list[float] = []
        create: list[float] = []
        delete: list[float] = []
        steps: list[tuple[list[float], Callable[[int], list[str]]]] = [
            (floor, lambda i: [sys.executable, "-c", "pass"]),
            (create, lambda i: [*base, "create", info.url(), f"img{i}"]),
            (delete, lambda i: [*base, "delete", f"img{i}"]),
        ]
        for i in range(runs):  # interleaved, so drift hits every series alike
            for samples, argv in steps:
                samples.append(timed(argv(i)))
        subprocess.run([*base, "delete-store"], check=True)
    floor_s, create_s, delete_s = summary(floor), summary(create), summary(delete)
    results["python -c pass"] = floor_s
    results["graftfs create (warm)"] = create_s
    results["graftfs delete"] = delete_s
    results["ratios"] = {
        "create/floor": create_s["median_ms"] / floor_s["median_ms"],
        "delete/floor": delete_s["median_ms"] / floor_s["median_ms"],
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", type=Path, default=Path("bench/results/warm_create.json"))
    args = parser.parse_args()
    results = run(args.runs)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'what':<24} {'median ms':>10} {'p95 ms':>10} {'x floor':>8}")
    floor = results["python -c pass"]
    assert isinstance(floor, dict)
    for name in ("python -c pass", "graftfs create (warm)", "graftfs delete"):
        row = results[name]
        assert isinstance(row, dict)
        ratio = row["median_ms"] / floor["median_ms"]
        print(f"{name:<24} {row['median_ms']:>10.1f} {row['p95_ms']:>10.1f} {ratio:>8.2f}")
    print(f"({results['machine']}; raw results in {args.json})")


if __name__ == "__main__":
    main()

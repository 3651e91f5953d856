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
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import graftfs_script, machine, summary, timed, xfs_scratch
from tests.support.images import TarBuilder, busybox_layer, write_oci_layout


def run(runs: int) -> dict[str, object]:
    graftfs = graftfs_script()
    results: dict[str, object] = {
        "machine": machine(),
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

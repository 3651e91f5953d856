"""Benchmark: warm create (image already cached) and delete, one process each as Garden runs them, against
its peers and against ``python -c pass``.

    sudo .venv/bin/python -m bench.warm_create [--quick] [--runs 30] [--json bench/results/warm_create.json]

The image is the small one (busybox, one layer), built here and cached by every tool before timing starts.
Each run of each series is a separate process (or two: podman), and runs are interleaved, one round of
every series at a time, rotated so each takes each place in turn. What "create" and "delete" are for each
peer is in bench/peers.py; for graftfs:

* ``graftfs create oci://LAYOUT:latest ID``: the image from a local OCI layout (its index, manifest and
  config are read; the layers come from the store's cache and are not read);
* ``graftfs create docker://127.0.0.1:PORT/bench/small:latest ID``: the same image from a local
  ``docker-registry``: the manifest and config requests still happen, the layers come from the cache.

Every store lives on one fresh XFS filesystem on a loop device made for the run (the root ext4 here is
mounted with ``discard``, which makes file-heavy work slow and noisy). The floor for any Python command,
``python -c pass`` from the same interpreter, is measured in the same run, and graftfs is reported as a
ratio to it: absolute times on a shared 2-core machine drift, ratios much less.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack

from bench.common import (
    Part,
    Results,
    Row,
    clock,
    duration,
    environment,
    graftfs_script,
    median_ms,
    part_main,
    run,
    summary,
    target,
    xfs_scratch,
)
from bench.images import small_image
from bench.peers import COMMANDS, Warm, graftfs_warm, warm_peers
from tests.support.registry import start_registry

FLOOR = "python -c pass"
GRAFTFS = "graftfs (oci layout)"
REPO = "bench/small"


def run_part(quick: bool, runs: int | None) -> Results:
    runs = runs or (5 if quick else 30)
    graftfs = graftfs_script()
    floor: list[float] = []
    with xfs_scratch() as scratch, start_registry(scratch / "registry") as registry, ExitStack() as stack:
        info = small_image(scratch / "layout")
        registry.push(info.path, "latest", REPO)
        ref = f"{registry.host}/{REPO}:latest"
        store = scratch / "graftfs"
        run([graftfs, "--store", str(store), "init-store"])
        registry_flags = ("--insecure-registry", registry.host)
        tools = [
            graftfs_warm(GRAFTFS, graftfs, store, info.url()),
            graftfs_warm("graftfs (registry)", graftfs, store, f"docker://{ref}", *registry_flags),
        ]
        peers, skipped = warm_peers(stack, scratch, ref, info.path, ("ctr", "podman", "umoci"))
        tools += peers
        # Untimed: the graftfs store caches the image; every tool's binaries reach the page cache.
        for tool in tools:
            tool.create("warmup")
            tool.delete("warmup")
        created: dict[str, list[float]] = {tool.name: [] for tool in tools}
        deleted: dict[str, list[float]] = {tool.name: [] for tool in tools}
        series: list[Warm | None] = [None, *tools]  # None: the floor
        for i in range(runs):
            for step in series[i % len(series) :] + series[: i % len(series)]:
                if step is None:
                    floor.append(clock(run, [sys.executable, "-c", "pass"]))
                else:
                    created[step.name].append(clock(step.create, f"img{i}"))
                    deleted[step.name].append(clock(step.delete, f"img{i}"))
    floor_ms = median_ms(floor)
    return {
        **environment(COMMANDS),
        "runs": runs,
        "skipped": skipped,
        FLOOR: summary(floor),
        "create": {tool.name: {"command": tool.creates, **summary(created[tool.name])} for tool in tools},
        "delete": {tool.name: {"command": tool.deletes, **summary(deleted[tool.name])} for tool in tools},
        "targets": [
            target("warm create from a local OCI layout, x python -c pass", median_ms(created[GRAFTFS]) / floor_ms, 2),
            target("delete, x python -c pass", median_ms(deleted[GRAFTFS]) / floor_ms, 1.5),
        ],
    }


def rows(results: Results) -> list[Row]:
    floor = results[FLOOR]
    assert isinstance(floor, dict)

    def result(stats: dict[str, float]) -> str:
        return f"{duration(stats['median_ms'])} median, {duration(stats['p95_ms'])} p95"

    out: list[Row] = []
    for what in ("create", "delete"):
        series = results[what]
        assert isinstance(series, dict)
        ours, label = series[GRAFTFS]["median_ms"], "warm create" if what == "create" else "delete"
        out.append(Row(label, FLOOR, result(floor), ours / floor["median_ms"]))
        for stats in series.values():
            out.append(Row(label, stats["command"], result(stats), ours / stats["median_ms"]))
    return out


PART = Part(
    "warm_create",
    "Warm create (image cached) and delete, one process per operation",
    run_part,
    rows,
    "graftfs / tool: the median of graftfs create from the OCI layout (or of its delete) over the tool's;\n"
    "below 1, graftfs is faster. Against python -c pass it is the target ratio.",
)

if __name__ == "__main__":
    part_main(PART, __doc__)

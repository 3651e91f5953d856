"""Benchmark: N concurrent warm creates of the same cached image, then N concurrent deletes.

    sudo .venv/bin/python -m bench.concurrency [--quick] [--runs 3] [--json bench/results/concurrency.json]

The image is the small one (busybox, one layer), cached by every tool first. For N in 1, 10 and 50, all N
creates are started at once (one thread each, each running the tool's command as a process of its own),
and the wall time is from the first start to the last exit; failures are counted, not retried. Then the N
images are deleted the same way. "Per create" is wall / N: it stays flat or falls while the tools keep
both cores busy, and grows when work serializes behind a lock. What create and delete are for each tool
is in bench/peers.py; graftfs creates from a local OCI layout. umoci is left out: it has no store to
contend for, N unpacks are just N unpacks. Each level runs ``--runs`` times, interleaved across tools;
the table shows the median wall time and the failures of all runs.
"""

from __future__ import annotations

import statistics
from contextlib import ExitStack

from bench.common import (
    Part,
    Results,
    Row,
    duration,
    environment,
    graftfs_script,
    part_main,
    run,
    run_all,
    target,
    xfs_scratch,
)
from bench.images import small_image
from bench.peers import COMMANDS, Warm, graftfs_warm, warm_peers
from tests.support.registry import start_registry

GRAFTFS = "graftfs"


def once(tool: Warm, n: int, name: str) -> tuple[float, dict[str, str], float, dict[str, str]]:
    """N creates at once, then deletes (at once) of those that succeeded: wall times and failures of both."""
    ids = [f"{name}-{j}" for j in range(n)]
    created_s, create_failed = run_all(tool.create, ids, workers=n)
    deleted_s, delete_failed = run_all(tool.delete, [i for i in ids if i not in create_failed], workers=n)
    return created_s, create_failed, deleted_s, delete_failed


def run_part(quick: bool, runs: int | None) -> Results:
    runs = runs or (1 if quick else 3)
    levels = (1, 10) if quick else (1, 10, 50)
    graftfs = graftfs_script()
    keys = [f"{op} {n}" for op in ("create", "delete") for n in levels]
    with xfs_scratch() as scratch, start_registry(scratch / "registry") as registry, ExitStack() as stack:
        info = small_image(scratch / "layout")
        registry.push(info.path, "latest", "bench/small")
        store = scratch / "graftfs"
        run([graftfs, "--store", str(store), "init-store"])
        peers, skipped = warm_peers(stack, scratch, f"{registry.host}/bench/small:latest", info.path, ("ctr", "podman"))
        tools = [graftfs_warm(GRAFTFS, graftfs, store, info.url()), *peers]
        for tool in tools:
            tool.create("warmup")
            tool.delete("warmup")
        walls: dict[str, dict[str, list[float]]] = {tool.name: {key: [] for key in keys} for tool in tools}
        failures: dict[str, dict[str, list[str]]] = {tool.name: {key: [] for key in keys} for tool in tools}
        for r in range(runs):
            for n in levels:
                for tool in tools[r % len(tools) :] + tools[: r % len(tools)]:
                    created_s, create_failed, deleted_s, delete_failed = once(tool, n, f"r{r}n{n}")
                    walls[tool.name][f"create {n}"].append(created_s)
                    walls[tool.name][f"delete {n}"].append(deleted_s)
                    failures[tool.name][f"create {n}"] += create_failed.values()
                    failures[tool.name][f"delete {n}"] += delete_failed.values()
    results: Results = {**environment(COMMANDS), "runs": runs, "levels": list(levels), "skipped": skipped}
    results["tools"] = {
        tool.name: {
            "creates": tool.creates,
            "deletes": tool.deletes,
            **{
                key: {
                    "wall_ms": [s * 1000 for s in samples],
                    "median_wall_ms": statistics.median(samples) * 1000,
                    "failures": len(failures[tool.name][key]),
                    "errors": failures[tool.name][key][:3],  # the first few, to see why
                }
                for key, samples in walls[tool.name].items()
            },
        }
        for tool in tools
    }
    if 50 in levels:
        ours = walls[GRAFTFS]
        results["targets"] = [
            target("50 concurrent graftfs creates: failures", len(failures[GRAFTFS]["create 50"]), 0),
            target(
                "50 concurrent graftfs creates: wall / wall of 10 (linear: 5)",
                statistics.median(ours["create 50"]) / statistics.median(ours["create 10"]),
                5,
            ),
        ]
    return results


def rows(results: Results) -> list[Row]:
    tools, levels = results["tools"], results["levels"]
    assert isinstance(tools, dict) and isinstance(levels, list)
    out: list[Row] = []
    for op in ("create", "delete"):
        for n in levels:
            ours = tools[GRAFTFS][f"{op} {n}"]["median_wall_ms"]
            for tool in tools.values():
                stats = tool[f"{op} {n}"]
                wall = stats["median_wall_ms"]
                result = f"{duration(wall)} wall, {duration(wall / n)} per {op}, {stats['failures']} failed"
                what = f"{n} concurrent {op}s" if n > 1 else f"1 {op}, alone"
                out.append(Row(what, tool[f"{op}s"], result, ours / wall))
    return out


PART = Part(
    "concurrency",
    "Concurrent warm creates, then deletes, of the same cached image",
    run_part,
    rows,
    "Wall: median over the runs, from the first start to the last exit; failed: over all runs.\n"
    "graftfs / tool: wall times; below 1, graftfs is faster.",
)

if __name__ == "__main__":
    part_main(PART, __doc__)

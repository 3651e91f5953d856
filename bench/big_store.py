"""Benchmark: create, delete, list, stats and clean in a store holding 1,000 images, against a store holding 1.

    sudo .venv/bin/python -m bench.big_store [--quick] [--runs 10] [--json bench/results/big_store.json]

Two graftfs stores on one XFS scratch filesystem hold the small image (busybox, one layer): one as a single
image, the other as 1,000, made in parallel before timing starts (untimed; each rootfs mounted, as Garden's
are). A store must hold an image for ``stats`` to read, and the image's layer for a create to be warm, so
the smallest store to compare with holds one. Then each run times, as one process each and in this order,
in one store and then the other (the order alternating between runs): a create of one more image (from the
local OCI layout), ``stats`` of it, ``list``, its delete, ``clean`` with nothing to collect, and ``clean``
with one unused layer (an image of another one-layer image, created and deleted just before, untimed).

containerd, when installed, does likewise in two daemons of our own, one holding one mounted snapshot of
the image and the other 1,000 (``ctr images mount --rw``, as in bench/peers.py): create, ``ctr snapshots
usage KEY`` (stats), ``ctr snapshots ls`` (list) and delete. It has no clean to time: its garbage collector
runs inside the daemon. The 1,000 are made and removed 4 at a time, and those wall times are recorded too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    Part,
    Results,
    Row,
    clock,
    duration,
    environment,
    graftfs_script,
    installed,
    part_main,
    run,
    run_all,
    summary,
    target,
    xfs_scratch,
)
from bench.images import small_image
from bench.peers import COMMANDS, Warm, ctr_warm, graftfs_warm
from tests.support.images import TarBuilder, write_oci_layout
from tests.support.registry import start_registry

WORKERS = 2 * (os.cpu_count() or 1)  # enough to keep every core busy while others wait on the disk
PROBE = "probe"


@dataclass(frozen=True)
class Step:
    op: str  # what the table calls it, the same for every tool; "" for an untimed preparation
    command: str
    call: Callable[[], None]


@dataclass(frozen=True)
class Store:
    tool: str
    warm: Warm  # how images are created in it and deleted
    steps: list[Step]  # one run, in order


def graftfs_steps(graftfs: str, path: Path, warm: Warm, unused: str) -> list[Step]:
    """``unused``: an image whose layer nothing else uses, created and deleted to leave that layer unused."""
    base = [graftfs, "--store", str(path)]

    def leave_unused_layer() -> None:
        run([*base, "create", unused, "unused"])
        run([*base, "delete", "unused"])

    return [
        Step("create", warm.creates, lambda: warm.create(PROBE)),
        Step("stats", "graftfs stats ID", lambda: run([*base, "stats", PROBE])),
        Step("list", "graftfs list", lambda: run([*base, "list"])),
        Step("delete", warm.deletes, lambda: warm.delete(PROBE)),
        Step("clean, nothing to collect", "graftfs clean", lambda: run([*base, "clean"])),
        Step("", "", leave_unused_layer),
        Step("clean, one unused layer", "graftfs clean", lambda: run([*base, "clean"])),
    ]


@contextmanager
def ctr_store(work: Path, ref: str) -> Iterator[Store]:
    with ctr_warm(work, ref) as warm:
        ctr, key = warm.daemon.ctr, str(warm.mounts / PROBE)
        yield Store(
            "ctr",
            warm,
            [
                Step("create", warm.creates, lambda: warm.create(PROBE)),
                Step("stats", "ctr snapshots usage KEY", lambda: run(ctr("snapshots", "usage", key))),
                Step("list", "ctr snapshots ls", lambda: run(ctr("snapshots", "ls"))),
                Step("delete", warm.deletes, lambda: warm.delete(PROBE)),
            ],
        )


def on_all(op: Callable[[str], None], store: Store, size: int) -> float:
    """``op`` on each of the ``size`` images that fill ``store``, WORKERS at a time; the wall time."""
    wall, failed = run_all(op, [f"i{j:04d}" for j in range(size)], WORKERS)
    if failed:
        raise RuntimeError(f"{store.tool}: {len(failed)} of {size} failed, e.g. {next(iter(failed.values()))}")
    return wall


def measure(pair: tuple[Store, Store], sizes: tuple[int, int], runs: int) -> Results:
    """Fill both stores, time every step in each, interleaved, then empty them."""
    filled = [on_all(store.warm.create, store, size) for store, size in zip(pair, sizes, strict=True)]
    samples: list[dict[str, list[float]]] = [{s.op: [] for s in store.steps if s.op} for store in pair]
    for r in range(runs):
        for k in (0, 1) if r % 2 == 0 else (1, 0):
            for step in pair[k].steps:
                if step.op:
                    samples[k][step.op].append(clock(step.call))
                else:
                    step.call()
    emptied = [on_all(store.warm.delete, store, size) for store, size in zip(pair, sizes, strict=True)]
    commands = {step.op: step.command for step in pair[0].steps if step.op}
    return {
        "sizes": list(sizes),
        "bulk": [{"fill_s": f, "empty_s": e} for f, e in zip(filled, emptied, strict=True)],
        "ops": {
            op: {
                "command": commands[op],
                **{str(size): summary(s[op]) for size, s in zip(sizes, samples, strict=True)},
            }
            for op in commands
        },
    }


def run_part(quick: bool, runs: int | None) -> Results:
    runs = runs or (3 if quick else 10)
    sizes = (1, 100 if quick else 1000)
    graftfs = graftfs_script()
    results: Results = {**environment(COMMANDS), "runs": runs, "skipped": []}
    with xfs_scratch(4096) as scratch:
        info = small_image(scratch / "layout")
        other = write_oci_layout(scratch / "other", [TarBuilder().dir("etc").file("etc/other", b"other\n").build()])
        stores = []
        for size in sizes:
            path = scratch / f"graftfs-{size}"
            run([graftfs, "--store", str(path), "init-store"])
            warm = graftfs_warm("graftfs", graftfs, path, info.url())
            stores.append(Store("graftfs", warm, graftfs_steps(graftfs, path, warm, other.url())))
        results["graftfs"] = measure((stores[0], stores[1]), sizes, runs)
        if installed("containerd", "ctr"):
            with start_registry(scratch / "registry") as registry, ExitStack() as stack:
                registry.push(info.path, "latest", "bench/small")
                ref = f"{registry.host}/bench/small:latest"
                pair = [stack.enter_context(ctr_store(scratch / f"ctr-{size}", ref)) for size in sizes]
                results["ctr"] = measure((pair[0], pair[1]), sizes, runs)
        else:
            results["skipped"] = ["ctr: not installed"]
    results["targets"] = [
        target(f"{op} with {sizes[1]:,} images, x with {sizes[0]}", growth(results["graftfs"], op), 1.5)
        for op in ("list", "stats", "clean, nothing to collect")
    ]
    return results


def medians(measured: object, op: str) -> tuple[float, float]:
    """The medians of ``op`` in the small store and in the big one."""
    assert isinstance(measured, dict)
    small, big = measured["sizes"]
    stats = measured["ops"][op]
    return stats[str(small)]["median_ms"], stats[str(big)]["median_ms"]


def growth(measured: object, op: str) -> float:
    small, big = medians(measured, op)
    return big / small


def rows(results: Results) -> list[Row]:
    measured = {tool: results[tool] for tool in ("graftfs", "ctr") if isinstance(results.get(tool), dict)}
    ours = measured["graftfs"]
    assert isinstance(ours, dict)
    small, big = ours["sizes"]
    out: list[Row] = []
    for op in ours["ops"]:
        ours_big = medians(ours, op)[1]
        for tool in measured.values():
            assert isinstance(tool, dict)
            if op in tool["ops"]:
                in_small, in_big = medians(tool, op)
                result = f"{duration(in_big)} median (with {small}: {duration(in_small)}; x{in_big / in_small:.2f})"
                out.append(Row(f"{op}, {big:,} images", tool["ops"][op]["command"], result, ours_big / in_big))
    # Making the big store's images and removing them, WORKERS at a time (the store with one is left out).
    for op, key in (("create", "fill_s"), ("delete", "empty_s")):
        ours_wall = ours["bulk"][1][key]
        for tool in measured.values():
            assert isinstance(tool, dict)
            wall = tool["bulk"][1][key]
            command = tool["ops"][op]["command"]
            out.append(Row(f"{op} {big:,}, {WORKERS} at a time", command, f"{wall:.1f} s", ours_wall / wall))
    return out


PART = Part(
    "big_store",
    "A store holding 1,000 images, against one holding 1",
    run_part,
    rows,
    "Medians, one process per operation; x: the big store's median over the small store's.\n"
    "graftfs / tool: in the big store; below 1, graftfs is faster.",
)

if __name__ == "__main__":
    part_main(PART, __doc__)

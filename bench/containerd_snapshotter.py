"""Benchmark: graftfs as containerd's snapshotter against containerd's built-in overlayfs snapshotter.

    sudo .venv/bin/python -m bench.containerd_snapshotter [--quick] [--runs 10] [--json PATH]

One containerd (Debian's 1.6, private config and ``/run``: tests/support/containerd.py) with
``graftfs serve containerd-snapshotter`` as its proxy plugin ``graftfs``; its root (where the overlayfs
snapshotter keeps its snapshots) and graftfs's store on the same scratch XFS filesystem. Measured, the two
snapshotters interleaved run by run:

* ``ctr run --rm`` of busybox (one layer, already unpacked for both): the whole command, which prepares the
  container's snapshot, mounts it in the shim, runs ``echo``, and removes the snapshot again.
* a cold ``ctr images pull`` of Debian bookworm (debootstrap minbase, one ~48 MB gzip layer, ~120 MB
  unpacked: tests/support/debian.py; ``--quick``: a 30 MB debian-like one) from the local registry: nothing of
  it in containerd's content store or in either snapshotter; after each run ``ctr images rm --sync`` lets
  containerd's garbage collection remove its content and snapshots.
"""

from __future__ import annotations

import subprocess
import time

from bench.common import (
    Part,
    Results,
    Row,
    environment,
    graftfs_script,
    part_main,
    per_setup,
    versus_graftfs,
    xfs_scratch,
)
from bench.images import debian_like_image, small_image
from tests.support import containerd as ctrd
from tests.support import debian
from tests.support import snapshots_wire as wire
from tests.support.registry import start_registry

SNAPSHOTTERS = ("graftfs", "overlayfs")
COMMANDS = ("containerd", "ctr", "docker-registry")


def _timed(containerd: ctrd.Containerd, *args: str) -> float:
    start = time.monotonic()
    containerd.ctr(*args)
    return time.monotonic() - start


def run_part(quick: bool, runs: int | None) -> Results:
    runs = runs or (3 if quick else 10)
    graftfs_script()  # byte-compiled, as the other parts measure it
    samples: dict[str, dict[str, list[float]]] = {s: {"run": [], "pull": []} for s in SNAPSHOTTERS}
    with xfs_scratch() as scratch, start_registry(scratch / "registry") as registry:
        small = small_image(scratch / "small")
        big = (
            debian_like_image(scratch / "big", size_mb=30).path
            if quick
            else debian.write_debian_layout(scratch / "big", tag="latest").path
        )
        registry.push(small.path, "latest", "bench/small")
        registry.push(big, "latest", "bench/big")
        server = wire.start_server(str(scratch / "store"), str(scratch / "s.sock"), scratch / "server.log")
        try:
            containerd = ctrd.launch(scratch / "ctrd", server.socket_path, "bench")
            try:
                small_ref = f"{registry.host}/bench/small:latest"
                big_ref = f"{registry.host}/bench/big:latest"
                for snapshotter in SNAPSHOTTERS:
                    containerd.ctr("images", "pull", "--plain-http", "--snapshotter", snapshotter, small_ref)
                for r in range(runs):
                    order = SNAPSHOTTERS if r % 2 == 0 else tuple(reversed(SNAPSHOTTERS))
                    for snapshotter in order:
                        args = ("run", "--rm", "--snapshotter", snapshotter, small_ref, f"b{r}", "/bin/busybox")
                        samples[snapshotter]["run"].append(_timed(containerd, *args, "true"))
                    for snapshotter in order:
                        pull = ("images", "pull", "--plain-http", "--snapshotter", snapshotter, big_ref)
                        samples[snapshotter]["pull"].append(_timed(containerd, *pull))
                        containerd.ctr("images", "rm", "--sync", big_ref)
            finally:
                left = ctrd.teardown(containerd)
        finally:
            status = server.stop()
        if left or status != 0:
            raise subprocess.SubprocessError(f"left mounted: {left}; the snapshotter exited {status}")
    image = "debian-like, 30 MB" if quick else "debian bookworm"
    results: Results = {**environment(COMMANDS), "runs": runs, "image": image}
    results["snapshotters"] = per_setup(samples)
    return results


def rows(results: Results) -> list[Row]:
    snapshotters = results["snapshotters"]
    assert isinstance(snapshotters, dict)
    titles = (("run", "ctr run --rm busybox"), ("pull", f"cold pull, {results['image']}"))
    return versus_graftfs(snapshotters, titles, "--snapshotter")


PART = Part(
    "containerd_snapshotter",
    "graftfs as containerd's snapshotter, against containerd's overlayfs snapshotter",
    run_part,
    rows,
    "Median over the runs, the two snapshotters interleaved; graftfs / tool below 1: graftfs is faster.",
)

if __name__ == "__main__":
    part_main(PART, __doc__)

"""Benchmark: graftfs as dockerd's storage driver (a graphdriver plugin) against Docker's built-in overlay2.

    sudo .venv/bin/python -m bench.docker_graphdriver [--quick] [--runs 10] [--json PATH]

Two dockerds (Debian's ``docker.io``, 20.10; each in a private mount namespace: tests/support/dockerd.py), one
with ``--storage-driver graftfs`` (``graftfs serve docker-graphdriver``), one with ``overlay2``, their data
roots and graftfs's store on the same scratch XFS filesystem. Measured, the two interleaved run by run:

* ``docker run --rm busybox true`` (busybox loaded in both): the whole command, which creates the container's
  init and writable layers, mounts them, runs ``true``, and removes them again.
* ``docker load`` of Debian bookworm (debootstrap minbase, one ~120 MB layer: tests/support/debian.py;
  ``--quick``: a 30 MB debian-like image) as an uncompressed docker-archive, then ``docker rmi`` (not timed) so
  the next run loads it afresh.
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
from bench.images import DEBIAN_LIKE, host_layer
from tests.support import debian
from tests.support import dockerd as dk
from tests.support.images import busybox_layer

DRIVERS = ("graftfs", "overlay2")
COMMANDS = ("dockerd", "containerd")


def _timed(d: dk.Dockerd, *args: str, input: bytes | None = None) -> float:
    start = time.monotonic()
    d.docker(*args, input=input)
    return time.monotonic() - start


def run_part(quick: bool, runs: int | None) -> Results:
    runs = runs or (3 if quick else 10)
    graftfs_script()
    samples: dict[str, dict[str, list[float]]] = {d: {"run": [], "load": []} for d in DRIVERS}
    with xfs_scratch() as scratch:
        small = dk.docker_archive([busybox_layer()], "busybox:latest")
        if quick:
            budget = 30 << 20
            tars = [busybox_layer()] + [host_layer(layer.root, round(budget * layer.share)) for layer in DEBIAN_LIKE]
        else:
            tars = [debian.debian_layer().read_bytes()]
        big = dk.docker_archive(tars, "big:latest")
        daemons: dict[str, dk.Dockerd] = {}
        left: list[str] = []
        try:
            for driver in DRIVERS:
                daemons[driver] = dk.launch(scratch / driver, driver=driver)
                daemons[driver].docker("load", input=small)
            for r in range(runs):
                order = DRIVERS if r % 2 == 0 else tuple(reversed(DRIVERS))
                for driver in order:
                    samples[driver]["run"].append(_timed(daemons[driver], "run", "--rm", "busybox", "true"))
                for driver in order:
                    samples[driver]["load"].append(_timed(daemons[driver], "load", input=big))
                    daemons[driver].docker("rmi", "big:latest")
        finally:
            for d in daemons.values():
                left += dk.teardown(d)
        if left:
            raise subprocess.SubprocessError(f"left mounted: {left}")
    image = "debian-like, 30 MB" if quick else "debian bookworm"
    results: Results = {**environment(COMMANDS), "runs": runs, "image": image}
    results["drivers"] = per_setup(samples)
    return results


def rows(results: Results) -> list[Row]:
    drivers = results["drivers"]
    assert isinstance(drivers, dict)
    titles = (("run", "docker run --rm busybox true"), ("load", f"docker load, {results['image']}"))
    return versus_graftfs(drivers, titles, "--storage-driver")


PART = Part(
    "docker_graphdriver",
    "graftfs as dockerd's graphdriver plugin, against Docker's overlay2",
    run_part,
    rows,
    "Median over the runs, the two drivers interleaved; graftfs / tool below 1: graftfs is faster.",
)

if __name__ == "__main__":
    part_main(PART, __doc__)

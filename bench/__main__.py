"""Every benchmark, one after the other, and one combined table: ``sudo .venv/bin/python -m bench``.

    python -m bench [--quick] [--only warm_create,unpack] [--json bench/results/all.json] [--markdown]
    python -m bench --report bench/results/all.json [--markdown]    # print the table of an earlier run

``bench/run`` installs what they need on a fresh Debian bookworm machine and runs this. A part that fails
is reported, and the others still run; the exit status says whether any failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

from bench import (
    big_store,
    cold_create,
    concurrency,
    containerd_snapshotter,
    docker_graphdriver,
    garden,
    unpack,
    warm_create,
)
from bench.common import Part, Results, exit_on_sigterm, part_targets, print_targets, report

PARTS: tuple[Part, ...] = (
    warm_create.PART,
    garden.PART,
    concurrency.PART,
    big_store.PART,
    unpack.PART,
    cold_create.PART,
    containerd_snapshotter.PART,
    docker_graphdriver.PART,
)


def run(parts: list[Part], quick: bool) -> Results:
    measured: dict[str, Results] = {}
    failed: dict[str, str] = {}
    for part in parts:
        print(f"-- {part.name} ...", file=sys.stderr, flush=True)
        start = time.monotonic()
        try:
            measured[part.name] = {**part.run(quick, None), "seconds": time.monotonic() - start}
        except Exception:
            traceback.print_exc()
            failed[part.name] = traceback.format_exc()
    return {"quick": quick, "parts": measured, "failed": failed}


def print_all(results: Results, markdown: bool) -> None:
    measured, failed = results["parts"], results["failed"]
    assert isinstance(measured, dict) and isinstance(failed, dict)
    targets = []
    for part in PARTS:
        if part.name in measured:
            part_results = measured[part.name]
            report(part, part_results, markdown, targets=False)
            targets += part_targets(part_results)
    print_targets(targets, markdown)
    for name in failed:
        print(f"FAILED: {name} (see the traceback above, or 'failed' in the JSON)")
    first = next(iter(measured.values()), None)
    if first is not None:
        versions = ", ".join(f"{k} {v}" for k, v in first["versions"].items())
        print(f"\n{first['machine']}, {first['cpu']}, Python {first['python']}\n{versions}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer runs and smaller sizes, for development")
    parser.add_argument("--only", help="comma-separated parts: " + ", ".join(part.name for part in PARTS))
    parser.add_argument("--json", type=Path, default=Path("bench/results/all.json"))
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    parser.add_argument("--report", type=Path, help="print the tables of an earlier run's JSON; run nothing")
    args = parser.parse_args()
    if args.report:
        print_all(json.loads(args.report.read_text()), args.markdown)
        return
    names = args.only.split(",") if args.only else [part.name for part in PARTS]
    unknown = set(names) - {part.name for part in PARTS}
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    exit_on_sigterm()
    results = run([part for part in PARTS if part.name in names], args.quick)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print_all(results, args.markdown)
    print(f"(raw results in {args.json})")
    sys.exit(1 if results["failed"] else 0)


if __name__ == "__main__":
    main()

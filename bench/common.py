"""What every benchmark shares: the XFS scratch filesystem, the environment tools run in, running and timing
commands (one at a time, or many at once), summaries, the results table and each part's command line."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec

from tests.support.launcher import launcher
from tests.support.rss import measured_argv, read_report

Results = dict[str, object]
P = ParamSpec("P")


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
            unmount_under(mnt)
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", device], check=True)
        shutil.rmtree(base)


def unmount_under(path: Path) -> None:
    """Lazily unmount, newest first, whatever is mounted below ``path``.

    A tool stopped mid-run (Ctrl-C, a failure) can leave an overlay mounted in its store, which would keep the
    store from being removed and the scratch filesystem from being unmounted.
    """
    prefix = f"{path}/"
    with open("/proc/self/mountinfo") as f:
        # mountinfo escapes blanks in paths as octal (\040).
        targets = [line.split()[4].encode().decode("unicode_escape") for line in f]
    for target in reversed(targets):
        if target.startswith(prefix):
            subprocess.run(["umount", "--lazy", target], check=False)


# Measure an installed tool: bytecode compiled and cached (some shells export PYTHONDONTWRITEBYTECODE).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def graftfs_script() -> str:
    """The graftfs command as scripts/setup-and-demo installs it: the launcher (graftfs.launcher) for this
    interpreter, written once per run (tests.support.launcher); the package byte-compiled."""
    _compile_package()
    return launcher()


def pip_script() -> str:
    """The ``graftfs`` script pip installed next to this interpreter (bin/graftfs, with ``site``), the package
    byte-compiled."""
    _compile_package()
    return str(Path(sys.executable).with_name("graftfs"))


def _compile_package() -> None:
    import graftfs as package

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(package.__file__).parent)], check=True)


def installed(*commands: str) -> bool:
    return all(shutil.which(command) for command in commands)


def version(command: str) -> str:
    out = subprocess.run([command, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"


def environment(commands: Sequence[str]) -> Results:
    """The machine, and the version of graftfs and of each of ``commands`` that is installed."""
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    rev = "no git"
    if installed("git"):
        repo = Path(__file__).resolve().parent.parent
        git = ["git", "-C", str(repo), "describe", "--always", "--dirty"]
        rev = subprocess.run(git, capture_output=True, text=True).stdout.strip() or rev
    found = {"graftfs": f"{importlib.metadata.version('graftfs')} ({rev})"}
    for command in dict.fromkeys(commands):
        if installed(command):
            found[command] = version(command)
    return {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, kernel {platform.release()}",
        "cpu": cpu,
        "python": platform.python_version(),
        "versions": found,
    }


class CommandFailed(Exception):
    pass


def run(argv: list[str]) -> None:
    """Run ``argv`` to completion, its output discarded; raises CommandFailed with the end of its stderr."""
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip()[-600:]
        raise CommandFailed(f"{' '.join(argv)} exited {proc.returncode}: {tail}")


@dataclass(frozen=True)
class Usage:
    """One process run to completion: its wall time, and the CPU time ``wait4`` reports for it (its own and
    that of the children it waited for)."""

    seconds: float
    user: float
    sys: float

    @property
    def cpu(self) -> float:
        return self.user + self.sys


def run_usage(argv: list[str]) -> Usage:
    """:func:`run`, and how long it took and how much CPU it used. Its stderr is read to the end, as Garden
    reads an image plugin's logs; its stdout is discarded."""
    start = time.perf_counter()
    with subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV
    ) as proc:
        assert proc.stderr is not None
        stderr = proc.stderr.read()
        # wait4 rather than Popen.wait: the child's rusage comes with its exit status.
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = stderr.decode(errors="replace").strip()[-600:]
        raise CommandFailed(f"{' '.join(argv)} exited {proc.returncode}: {tail}")
    return Usage(seconds, usage.ru_utime, usage.ru_stime)


def clock(step: Callable[P, object], *args: P.args, **kwargs: P.kwargs) -> float:
    """Wall seconds of ``step(*args, **kwargs)``."""
    start = time.perf_counter()
    step(*args, **kwargs)
    return time.perf_counter() - start


def run_all(op: Callable[[str], None], ids: Sequence[str], workers: int) -> tuple[float, dict[str, str]]:
    """``op(id)`` for every id, ``workers`` at a time; the wall time for all of them, and why each that failed
    did (by id). Pending calls are cancelled when this is interrupted: a Ctrl-C does not wait for a thousand."""
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        start = time.perf_counter()
        futures = {i: pool.submit(op, i) for i in ids}
        failed = {i: str(error) for i, error in ((i, f.exception()) for i, f in futures.items()) if error is not None}
        return time.perf_counter() - start, failed
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


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
        raise CommandFailed(f"{argv} exited {code}:\n{tail}")
    return seconds, rss_kib


@contextmanager
def fresh_dir(work: Path) -> Iterator[Path]:
    """``work``, made empty for one run and removed after it."""
    work.mkdir()
    try:
        yield work
    finally:
        # After a failure or Ctrl-C a store may still hold a mount; the next run starts empty regardless.
        unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)


@dataclass(frozen=True)
class Sample:
    """One timed run of a command that does the whole job (or of the few that do it together)."""

    seconds: float
    rss_kib: int  # peak RSS of the timed command (the largest of them) and its waited-for children
    daemon_rss_kib: int | None = None  # peak RSS of the daemon that did part of the work, if any


def statistics_of(samples: list[Sample]) -> Results:
    stats: Results = dict(summary([s.seconds for s in samples]))
    if len(samples) < 5:
        del stats["p95_ms"]  # with fewer runs it is just the slowest one
    stats["samples_ms"] = [s.seconds * 1000 for s in samples]
    stats["peak_rss_kib"] = max(s.rss_kib for s in samples)
    daemon = [s.daemon_rss_kib for s in samples if s.daemon_rss_kib is not None]
    if daemon:
        stats["daemon_peak_rss_kib"] = max(daemon)
    return stats


def peak_rss(stats: dict[str, object]) -> str:
    """The peak RSS of :func:`statistics_of`, for a table."""
    kib = stats["peak_rss_kib"]
    assert isinstance(kib, int)
    text = f"{kib / 1024:.0f} MiB"
    daemon = stats.get("daemon_peak_rss_kib")
    if isinstance(daemon, int):
        text += f" (+ containerd {daemon / 1024:.0f} MiB)"
    return text


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": statistics.median(ordered) * 1000,
        "p95_ms": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] * 1000,
        "runs": len(ordered),
    }


def per_setup(samples: dict[str, dict[str, list[float]]]) -> Results:
    """Seconds measured per setup (a snapshotter, a storage driver) and per operation, as the results keep
    them: ``{setup: {operation: {"samples_ms": [...], "median_ms": ...}}}``."""
    return {
        setup: {
            what: {"samples_ms": [x * 1000 for x in xs], "median_ms": statistics.median(xs) * 1000}
            for what, xs in operations.items()
        }
        for setup, operations in samples.items()
    }


def versus_graftfs(setups: Results, titles: Sequence[tuple[str, str]], flag: str) -> list[Row]:
    """One row per setup and operation of a :func:`per_setup` table, with graftfs's median over the setup's."""
    out = []
    for what, title in titles:
        ours = setups["graftfs"][what]["median_ms"]  # type: ignore[index]
        for name, stats in setups.items():
            median = stats[what]["median_ms"]  # type: ignore[index]
            out.append(Row(title, f"{flag} {name}", duration(median), ours / median))
    return out


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def duration(ms: float) -> str:
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.1f} ms"


def target(what: str, value: float, limit: float, at_most: bool = True) -> dict[str, object]:
    """One of the issue's targets: ``value`` must be at most (or at least) ``limit``."""
    return {"what": what, "value": value, "limit": limit, "met": value <= limit if at_most else value >= limit}


@dataclass(frozen=True)
class Row:
    what: str  # the measurement: "warm create", "list, 1,000-image store", ...
    tool: str  # the command, as run
    result: str  # the numbers, units included
    ratio: float  # graftfs's time over this tool's (below 1: graftfs is faster)


@dataclass(frozen=True)
class Part:
    """One benchmark: ``python -m bench.<name>`` alone, or a section of ``python -m bench``."""

    name: str
    title: str
    run: Callable[[bool, int | None], Results]  # (quick, runs or None for the part's default) -> results
    rows: Callable[[Results], list[Row]]
    note: str  # how to read its rows


def print_rows(title: str, rows: list[Row], markdown: bool) -> None:
    if markdown:
        print(f"\n### {title}\n\n| what | tool | result | graftfs / tool |\n| --- | --- | --- | --- |")
        for row in rows:
            print(f"| {row.what} | `{row.tool}` | {row.result} | {row.ratio:.2f} |")
        print()  # a Markdown table ends at a blank line: without it, the next line would be one more row
        return
    print(f"\n== {title}")
    width = max((len(row.tool) for row in rows), default=0)
    what = max((len(row.what) for row in rows), default=0)
    for row in rows:
        print(f"{row.what:<{what}}  {row.tool:<{width}}  {row.result:<40} {row.ratio:6.2f}")


def print_targets(targets: list[dict[str, object]], markdown: bool) -> None:
    if not targets:
        return
    if markdown:
        print("\n### Targets\n\n| target | measured | limit | met |\n| --- | --- | --- | --- |")
    else:
        print("\n== targets")
    for t in targets:
        value, limit = (f"{n:.2f}" if isinstance(n, float) else str(n) for n in (t["value"], t["limit"]))
        if value == limit and isinstance(t["value"], float) and t["value"] != t["limit"]:
            value = f"{t['value']:.3f}"  # 1.503 against 1.50: the rounding must not hide which side it is on
        met = "yes" if t["met"] else "NO"
        print(
            f"| {t['what']} | {value} | {limit} | {met} |"
            if markdown
            else f"{met:<4} {t['what']}: {value} (limit {limit})"
        )
    if markdown:
        print()


def part_targets(results: Results) -> list[dict[str, object]]:
    found = results.get("targets", [])
    assert isinstance(found, list)
    return found


def report(part: Part, results: Results, markdown: bool = False, targets: bool = True) -> None:
    """Its table, then (unless ``targets`` is false) how it did against the issue's targets."""
    print_rows(part.title, part.rows(results), markdown)
    if targets:
        print_targets(part_targets(results), markdown)
    skipped = results.get("skipped", [])
    assert isinstance(skipped, list)
    for note in skipped:
        print(f"skipped: {note}")
    print(part.note)


def exit_on_sigterm() -> None:
    """A plain kill must unwind like Ctrl-C does: unmount, stop the servers, detach the loop device."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def part_main(part: Part, doc: str | None) -> None:
    """The command line of one part run alone: ``python -m bench.<name> [--quick] [--runs N] [--json PATH]``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--quick", action="store_true", help="fewer runs and smaller sizes, for development")
    parser.add_argument("--runs", type=int, help="timed runs of each measurement (default: the part's own)")
    parser.add_argument("--json", type=Path, default=Path(f"bench/results/{part.name}.json"))
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args()
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    exit_on_sigterm()
    results = part.run(args.quick, args.runs)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    report(part, results, args.markdown)
    print(f"({results['machine']}; raw results in {args.json})")

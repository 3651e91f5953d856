"""Peak resident memory of a command, measured without the caller's own memory leaking into it.

Linux carries the RSS high-water mark across ``fork`` (the child's copy of the address space starts with
the parent's mark) and ``execve`` (the old address space's mark is kept in the process's ``maxrss``). A
test or benchmark process holding a few hundred MiB of image data would see that much in any child's
``ru_maxrss``. So the command is started by a small launcher interpreter, whose own mark is a few MiB; the
launcher times its child and writes its ``ru_maxrss`` from ``wait4`` to a report file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_LAUNCHER = """
import json, os, sys, time
start = time.perf_counter()
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
seconds = time.perf_counter() - start
with open(sys.argv[1], "w") as f:
    json.dump({"code": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss, "seconds": seconds}, f)
sys.exit(0 if os.waitstatus_to_exitcode(status) == 0 else 1)
"""


def measured_argv(argv: list[str], report: Path) -> list[str]:
    """A command line that runs ``argv`` and writes ``{"code", "maxrss_kib", "seconds"}`` to ``report``."""
    return [sys.executable, "-I", "-c", _LAUNCHER, str(report), *argv]


def read_report(report: Path) -> tuple[int, float, int]:
    """Exit code, wall seconds and peak RSS in KiB of the command :func:`measured_argv` ran."""
    doc = json.loads(report.read_text())
    return int(doc["code"]), float(doc["seconds"]), int(doc["maxrss_kib"])


def run_measured(argv: list[str], report: Path) -> tuple[int, float]:
    """Run ``argv`` (stdout discarded); returns its exit code and peak RSS in MiB."""
    subprocess.run(measured_argv(argv, report), stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, check=False)
    code, _, kib = read_report(report)
    return code, kib / 1024

"""User-mode Linux: a second kernel, run as an ordinary process, for what this machine's kernel lacks.

The host kernel here has no XFS quota support; Debian's ``user-mode-linux`` boots a kernel that has it, with
the host's root filesystem as its own (``hostfs``), so the test's files, the venv and graftfs are all
there. :func:`run_in_uml` boots it with a shell script as init (after mounting /proc and /sys and loading
the loop and overlay modules), and returns what the script printed; the kernel halts when it ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

UML = "linux.uml"

_PRELUDE = """#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
for m in $(find /usr/lib/uml/modules/$(uname -r)/kernel -name loop.ko -o -name overlay.ko); do insmod $m; done
(
"""
_EPILOGUE = """
) > {out} 2>&1
echo "exit=$?" >> {out}
halt -f
"""


def available() -> bool:
    return bool(shutil.which(UML) and shutil.which("insmod"))


def run_in_uml(script: str, timeout: float = 300) -> str:
    """Run ``script`` (sh) as root in a user-mode Linux; returns its output, ending with ``exit=<status>``."""
    work = Path(tempfile.mkdtemp(prefix="graftfs-uml-"))
    try:
        out = work / "out"
        init = work / "init"
        init.write_text(_PRELUDE + script + _EPILOGUE.format(out=out))
        init.chmod(0o755)
        boot = ["mem=1G", "root=/dev/root", "rootfstype=hostfs", "rootflags=/", "rw", f"init={init}"]
        subprocess.run(
            [UML, *boot, "con=null", "con0=fd:0,fd:1"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
            # UML keeps its memory in a file under TMPDIR; a fresh dir of ours, removed with the rest.
            env={**os.environ, "TMPDIR": str(work)},
        )
        return out.read_text(errors="replace") if out.exists() else ""
    finally:
        shutil.rmtree(work, ignore_errors=True)

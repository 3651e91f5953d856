"""The graftfs command as ``scripts/setup-and-demo`` installs it: the launcher (:mod:`graftfs.launcher`) for
this interpreter, which the integration tests and the benchmarks run."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

_WRITTEN: list[str] = []


def launcher() -> str:
    """The launcher's path: written once per process, into a directory of its own that is removed at exit."""
    if not _WRITTEN:
        from graftfs import launcher as module

        where = tempfile.mkdtemp(prefix="graftfs-launcher-")
        atexit.register(shutil.rmtree, where, ignore_errors=True)
        module.write(os.path.join(where, "graftfs"))
        _WRITTEN.append(os.path.join(where, "graftfs"))
    return _WRITTEN[0]

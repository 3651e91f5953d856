"""``python -m graftfs.launcher PATH``: write the graftfs command at ``PATH`` as a script that starts this
interpreter without Python's ``site`` module (``python -S``), for Garden to run.

Garden starts one graftfs process per container create and per delete, and ``site`` costs each of them 1-3 ms
here before graftfs runs at all (``python -c pass`` takes 6 ms longer with it, of which graftfs would spend
2 ms importing ``os`` itself): it reads the installation's ``pyvenv.cfg`` and every ``.pth`` file in its
site-packages (setuptools' ``distutils-precedence.pth`` imports a module), looks for the user's site-packages,
and searches the whole path for ``sitecustomize`` and ``usercustomize``. Of all that graftfs needs only the
directories ``site`` puts on ``sys.path``: the launcher names them, as they are when it is written (the
installation's site-packages, and what its ``.pth`` files add, such as an editable install's source
directory), after the interpreter's own, where ``site`` puts them. It imports graftfs from the directory it
was in then (even when ``PYTHONPATH`` names another), put first for that one import, so that none of the
interpreter's directories is searched for it. What it gives up, for graftfs only: the code in ``.pth`` files,
``sitecustomize``, ``usercustomize`` and the user's site-packages, none of which a command run as root should
pick up anyway. Run it again after moving the installation or changing what its ``.pth`` files add;
``bin/graftfs``, the script pip installs, starts with ``site`` and needs nothing of the kind.

``scripts/setup-and-demo`` installs the launcher as ``/usr/local/bin/graftfs``.
"""

from __future__ import annotations

import json
import os
import sys

from .errors import GraftfsError
from .mount import kernel

#: The longest ``#!`` line Linux reads whole (BINPRM_BUF_SIZE, 5.1+); a longer one is cut, silently.
_SHEBANG_LIMIT = 255

_PATH = "import json, sys; print(json.dumps(sys.path))"
# With site: the path, and the directory graftfs is imported from, in one run.
_PATH_AND_PACKAGE = "import graftfs, json, os, sys; print(json.dumps([sys.path, os.path.dirname(graftfs.__path__[0])]))"


def _ask(interpreter: str, code: str, *flags: str) -> object:
    """What ``code`` prints (JSON) in ``interpreter`` (run by :func:`kernel.run`, which describes a failure in
    one line), free of the environment (``-E``) and of a script's directory (``-P``)."""
    return json.loads(kernel.run(interpreter, "-E", "-P", *flags, "-c", code))


def locations(interpreter: str) -> tuple[str, list[str]]:
    """The directory ``interpreter`` imports graftfs from, and what ``site`` adds to its ``sys.path``, in its
    order: its path with ``site`` less its path without."""
    found, without = _ask(interpreter, _PATH_AND_PACKAGE), _ask(interpreter, _PATH, "-S")
    assert isinstance(found, list) and isinstance(without, list)
    with_site, package = found
    return str(package), [str(p) for p in with_site if p not in without]


def script(interpreter: str, package: str, directories: list[str]) -> str:
    """The launcher's text."""
    shebang = f"#!{interpreter} -S"
    if any(c.isspace() for c in interpreter) or len(shebang.encode()) > _SHEBANG_LIMIT:
        raise ValueError(f"{interpreter}: a #! line cannot name it (blanks, or longer than {_SHEBANG_LIMIT} bytes)")
    return (
        f"{shebang}\n"
        "# The graftfs command, started without Python's site module: written by `python -m graftfs.launcher`,\n"
        "# which says why. Run that again after moving the installation.\n"
        "import sys\n"
        "\n"
        "if not sys.flags.safe_path:\n"
        "    del sys.path[0]  # this script's directory, as bin/graftfs drops it\n"
        "# graftfs from where it was when this was written: found at once, not after searching the interpreter's\n"
        "# own directories (~0.4 ms), which nothing a create or a delete imports needs.\n"
        f"sys.path.insert(0, {package!r})\n"
        "import graftfs\n"
        "\n"
        "del sys.path[0]\n"
        "# What site would add, after the interpreter's own directories:\n"
        f"sys.path += {directories!r}\n"
        "graftfs._command()\n"
    )


def write(path: str, interpreter: str = sys.executable) -> list[str]:
    """Write the launcher at ``path`` (replaced whole, never half written) and check that it runs graftfs;
    returns the directories it puts on the path."""
    package, directories = locations(interpreter)
    text = script(interpreter, package, directories)
    tmp = f"{path}.{os.getpid()}.tmp"
    # A new file of our own (never through a link someone put at that name), executable whatever the umask.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o700)
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o755)
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    version = kernel.run(path, "--version")
    if not version.startswith("graftfs"):
        raise RuntimeError(f"{path} does not run graftfs: it printed {version.strip()[:80]!r}")
    return directories


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m graftfs.launcher PATH", file=sys.stderr)
        return 2
    try:
        directories = write(argv[0])
    except (OSError, ValueError, RuntimeError, GraftfsError) as exc:
        print(f"graftfs.launcher: {exc}", file=sys.stderr)
        return 1
    print(f"{argv[0]}: {sys.executable} -S, with {', '.join(directories) or 'nothing'} on its path")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

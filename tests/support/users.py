"""An ordinary user account for rootless tests, made by the tests and removed after.

The account gets a range of subordinate IDs in ``/etc/subuid`` and ``/etc/subgid`` (what ``newuidmap``
checks); both files are restored byte for byte afterwards. Commands run as the account with ``setpriv``
(no PAM, no login shell). graftfs itself must then be started by an interpreter the account can execute:
the test venv's when its real path is world-searchable, else Debian's ``/usr/bin/python3`` (the same
CPython minor version) pointed at the venv's packages.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import subprocess
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SUBID_COUNT = 65536
SUBID_START = 3_000_000_000  # far above what distributions hand out (100000+), below 2^32 - 1


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    subid: int  # first subordinate UID and GID

    def argv(self, *args: str) -> list[str]:
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups", "--", *args]

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent", "LANG": "C.UTF-8"},
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{args} as {self.name} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    @property
    def mappings(self) -> list[tuple[int, int, int]]:
        """The account's namespace: itself as root, its subordinate range from 1 on."""
        return [(0, self.uid, 1), (1, self.subid, SUBID_COUNT)]


@contextmanager
def make_account() -> Iterator[Account]:
    if not (shutil.which("useradd") and shutil.which("setpriv") and shutil.which("newuidmap")):
        raise RuntimeError("needs useradd, setpriv (util-linux) and newuidmap (uidmap)")
    name = f"gfs-{secrets.token_hex(4)}"
    saved = {p: Path(p).read_bytes() if Path(p).exists() else None for p in ("/etc/subuid", "/etc/subgid")}
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", name],
        check=True,
        capture_output=True,
    )
    try:
        import pwd

        entry = pwd.getpwnam(name)
        for path in saved:
            with open(path, "a", encoding="ascii") as f:
                f.write(f"{name}:{SUBID_START}:{SUBID_COUNT}\n")
        yield Account(name, entry.pw_uid, entry.pw_gid, SUBID_START)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)
        for path, content in saved.items():
            if content is None:
                Path(path).unlink(missing_ok=True)
            else:
                Path(path).write_bytes(content)


def _world_executable(path: str) -> bool:
    """Every directory above ``path`` searchable by others, and ``path`` executable by them."""
    real = os.path.realpath(path)
    parts = Path(real).parents
    if not all(os.stat(p).st_mode & stat.S_IXOTH for p in parts):
        return False
    return bool(os.stat(real).st_mode & stat.S_IXOTH)


_BOOT = "import sys; sys.path[:0] = sys.argv[1:3]; del sys.argv[1:3]; from graftfs.cli.main import main; main()"


def graftfs_for_others() -> list[str]:
    """A command line that runs this checkout's graftfs for any user."""
    if _world_executable(sys.executable):
        return [sys.executable, "-m", "graftfs"]
    return graftfs_with_system_python()


def graftfs_with_system_python() -> list[str]:
    """This checkout's graftfs under Debian's ``/usr/bin/python3``, with the venv's packages: runs wherever
    /usr, the checkout and the venv are visible (another user, a container binding them in)."""
    src = str(Path(__file__).resolve().parents[2] / "src")
    return ["/usr/bin/python3", "-c", _BOOT, src, sysconfig.get_paths()["purelib"]]


def chown_tree(path: Path, uid: int, gid: int, paths: Sequence[Path] = ()) -> None:
    """Give ``path`` (recursively) and ``paths`` to the account."""
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(root, name), uid, gid)
    os.chown(path, uid, gid)
    for p in paths:
        os.chown(p, uid, gid)

"""Fixtures for tests that drive the installed ``graftfs`` command as root against the real kernel.

Everything lives under pytest's tmp dirs. Every test is checked afterwards for mounts it left under its
temp dir; whatever is left is unmounted (so one failure does not cascade) and the test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from graftfs.mount import kernel
from tests.support.launcher import launcher
from tests.support.leftovers import unmount_under


def pip_script() -> list[str]:
    """The console script pip installed next to this interpreter (bin/graftfs)."""
    script = Path(sys.executable).with_name("graftfs")
    if script.exists():
        return [str(script)]
    found = shutil.which("graftfs")
    return [found] if found else [sys.executable, "-m", "graftfs"]


def graftfs_command() -> list[str]:
    """What Garden runs: the launcher scripts/setup-and-demo installs (graftfs.launcher: this interpreter
    without ``site``), written for this test run."""
    return [launcher()]


GRAFTFS = graftfs_command()


def mounts_under(path: Path) -> list[str]:
    """Mount points below ``path`` (not at it), oldest first."""
    prefix = str(path.resolve()) + "/"
    return [m.point for m in kernel.mountinfo() if m.point.startswith(prefix)]


@dataclass
class Graftfs:
    store: Path
    log_level: str = "fatal"
    env: dict[str, str] | None = None  # extra environment for every command

    def environ(self) -> dict[str, str] | None:
        return None if self.env is None else {**os.environ, **self.env}

    def run(
        self, *args: str, check: bool = True, timeout: float = 120, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        argv = [*GRAFTFS, "--store", str(self.store), "--log-level", self.log_level, *args]
        kwargs.setdefault("env", self.environ())
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kwargs
        )  # type: ignore[call-overload]
        if check and result.returncode != 0:
            raise AssertionError(f"{argv} exited {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}")
        assert isinstance(result, subprocess.CompletedProcess)
        return result

    def create(self, url: str, image_id: str, *flags: str) -> dict[str, object]:
        out = self.run("create", *flags, url, image_id).stdout
        doc = json.loads(out)
        assert isinstance(doc, dict)
        return doc

    def fails(self, *args: str) -> str:
        result = self.run(*args, check=False)
        assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
        lines = result.stdout.splitlines()
        assert len(lines) == 1, f"expected one line on stdout, got {result.stdout!r}"
        return lines[0]

    def rootfs(self, image_id: str) -> Path:
        return self.store / "images" / image_id / "rootfs"

    def volumes(self) -> set[str]:
        return set(os.listdir(self.store / "volumes"))


def snapshot(path: Path) -> dict[str, tuple[int, int, bytes | str]]:
    """Every entry under ``path`` with its mode, size and content (or link target): to prove nothing
    changed."""
    out: dict[str, tuple[int, int, bytes | str]] = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(root, name)
            st = os.lstat(full)
            if os.path.islink(full):
                content: bytes | str = os.readlink(full)
            elif os.path.isfile(full):
                content = Path(full).read_bytes()
            else:
                content = b""
            out[os.path.relpath(full, path)] = (st.st_mode, st.st_size, content)
    return out


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    left = unmount_under(tmp_path)
    assert not left, f"test left mounts behind: {left}"


@pytest.fixture
def outside(workdir: Path) -> Path:
    """A directory outside the store holding a file (``secret``) that nothing graftfs does may touch."""
    sentinel = workdir / "outside"
    sentinel.mkdir()
    (sentinel / "secret").write_text("do not touch\n")
    return sentinel


@pytest.fixture
def gfs(workdir: Path) -> Graftfs:
    g = Graftfs(workdir / "store")
    g.run("init-store")
    return g


@pytest.fixture(autouse=True)
def _root_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("integration tests need root")


@pytest.fixture(scope="session")
def xfs_vm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What the XFS tests printed in the VM, by section (tests.support.xfs_vm): ``cli`` (test_quota.py) and
    ``conformance`` (test_quota_conformance.py). One boot per test run for all of them; skipped, saying why,
    only when neither user-mode Linux nor QEMU can start here."""
    from tests.support import vm, xfs_vm

    if os.geteuid() != 0:
        pytest.skip("integration tests need root")
    if vm.vm_kind() is None:
        pytest.skip(vm.unavailable_reason())
    url = xfs_vm.quota_image(tmp_path_factory.mktemp("xfs-vm") / "img")
    script = xfs_vm.script({"cli": xfs_vm.cli_script(GRAFTFS, url), "conformance": xfs_vm.conformance_script()})
    try:
        return xfs_vm.split(vm.run_in_vm(script))
    except vm.Unavailable as exc:
        pytest.skip(str(exc))

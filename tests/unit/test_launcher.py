"""graftfs.launcher: the graftfs command as a script that starts this interpreter without ``site``."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import graftfs
from graftfs import launcher


def test_the_directories_are_those_site_adds_in_its_order() -> None:
    package, found = launcher.locations(sys.executable)
    assert package == str(Path(graftfs.__file__).parents[1])  # site-packages, or an editable install's source
    assert found[0] == sysconfig.get_paths()["purelib"]  # this installation's site-packages first, as site has it
    assert sysconfig.get_paths()["stdlib"] not in found  # the interpreter's own stay where -S puts them
    assert package in found


def test_written_it_runs_graftfs_without_site(tmp_path: Path) -> None:
    path = tmp_path / "graftfs"
    directories = launcher.write(str(path))
    text = path.read_text()
    assert text.splitlines()[0] == f"#!{sys.executable} -S"
    assert repr(directories) in text
    assert os.stat(path).st_mode & 0o777 == 0o755
    assert os.listdir(tmp_path) == ["graftfs"]  # no temporary file left
    # What graftfs sees when the launcher runs it: no site module, this checkout's graftfs, the path it names.
    probe = "import sys, graftfs; print(int('site' in sys.modules), graftfs.__file__, sys.path[-len(%r):] == %r)"
    code = probe % (directories, directories)
    setup = text.rpartition("graftfs._command()")[0]  # the launcher, up to running the command
    out = subprocess.run([sys.executable, "-S", "-c", setup + code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", graftfs.__file__, "True"]


@pytest.mark.parametrize("interpreter", ["/opt/my python/bin/python3", "/" + "p" * 300])
def test_an_interpreter_a_shebang_cannot_name_is_refused(interpreter: str) -> None:
    with pytest.raises(ValueError, match="a #! line cannot name it"):
        launcher.script(interpreter, "/site-packages", [])


def test_its_command_line(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "graftfs.launcher"]
    assert subprocess.run(run, capture_output=True, text=True).returncode == 2
    out = subprocess.run([*run, str(tmp_path / "graftfs")], capture_output=True, text=True, check=True).stdout
    assert out.startswith(f"{tmp_path / 'graftfs'}: {sys.executable} -S, with ")
    failed = subprocess.run([*run, str(tmp_path / "missing" / "graftfs")], capture_output=True, text=True)
    assert failed.returncode == 1 and failed.stderr.startswith("graftfs.launcher: ")
    assert not (tmp_path / "missing").exists()

"""tests/support/fstest.py: the appliers do what they say, and check_directory_equal sees every difference
it claims to (and none it should not)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import fstest

BASE = fstest.apply(
    fstest.create_dir("/d", 0o755),
    fstest.create_dir("/d/e", 0o700),
    fstest.create_file("/d/f", b"content\n", 0o644),
    fstest.create_file("/x", b"x", 0o600),
    fstest.symlink("d/f", "/s"),
    fstest.link("/d/f", "/d/g"),
)


def trees(tmp_path: Path, *extra: fstest.Applier) -> tuple[str, str]:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    BASE(str(a))
    fstest.apply(BASE, *extra)(str(b))
    return str(a), str(b)


def test_equal_trees_are_equal(tmp_path: Path) -> None:
    a, b = trees(tmp_path, fstest.chtimes("/d", 0, 0), fstest.chtimes("/x", 0, 0))
    assert fstest.directory_diff(a, b) == []  # times are not compared
    fstest.check_directory_equal(a, b)
    fstest.check_directory_equal_with_applier(b, BASE)


def test_the_mode_is_exact_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        fstest.apply(fstest.create_dir("/a/b", 0o775), fstest.create_file("/a/b/f", b"", 0o666))(str(tmp_path))
    finally:
        os.umask(old)
    assert (tmp_path / "a" / "b").stat().st_mode & 0o7777 == 0o775
    assert (tmp_path / "a" / "b" / "f").stat().st_mode & 0o7777 == 0o666


@pytest.mark.parametrize(
    ("change", "line"),
    [
        (fstest.create_file("/new", b"", 0o644), "+ /new"),
        (fstest.remove_all("/x"), "- /x"),
        (fstest.remove_all("/d/e"), "- /d/e"),
        (fstest.chmod("/d/e", 0o755), "~ /d/e"),
        (fstest.chmod("/x", 0o4600), "~ /x"),
        (fstest.create_file("/x", b"y", 0o600), "~ /x"),
        (fstest.create_file("/x", b"xx", 0o600), "~ /x"),
        (fstest.apply(fstest.remove("/s"), fstest.symlink("d/g", "/s")), "~ /s"),
        (fstest.apply(fstest.remove("/s"), fstest.create_file("/s", b"", 0o777)), "~ /s"),
        # The same names and content, but /d/g is no longer a hard link of /d/f.
        (fstest.apply(fstest.remove("/d/g"), fstest.create_file("/d/g", b"content\n", 0o644)), "/d/g"),
        (fstest.rename("/x", "/y"), "+ /y"),
        (fstest.mkfifo("/p", 0o600), "+ /p"),
    ],
)
def test_every_difference_is_seen(tmp_path: Path, change: fstest.Applier, line: str) -> None:
    a, b = trees(tmp_path, change)
    lines = fstest.directory_diff(a, b)
    assert any(line in diff for diff in lines), lines
    with pytest.raises(AssertionError, match="directory diff"):
        fstest.check_directory_equal(a, b)


def test_owners_are_compared(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    a, b = trees(tmp_path, fstest.chown("/d/e", 1, 1))
    assert [line for line in fstest.directory_diff(a, b) if "/d/e" in line], "a changed owner went unseen"


def test_xattrs_only_when_asked(tmp_path: Path) -> None:
    a, b = trees(tmp_path)
    try:
        fstest.set_xattr("/x", "user.test", b"1")(b)
    except OSError:
        pytest.skip("no user xattrs here")
    assert fstest.directory_diff(a, b) == []
    assert fstest.directory_diff(a, b, xattrs=True) != []


def test_remove_all_of_nothing_is_fine_remove_is_not(tmp_path: Path) -> None:
    fstest.remove_all("/missing")(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        fstest.remove("/missing")(str(tmp_path))


def test_paths_stay_under_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    fstest.create_file("/etc-file", b"", 0o644)(str(root))
    assert (root / "etc-file").exists()

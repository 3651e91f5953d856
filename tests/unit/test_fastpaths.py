"""The start-up path's own helpers: jsonc (json without `re`) and remove_tree (rmtree without shutil)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from graftfs import jsonc
from graftfs.store.fsutil import remove_tree

DOCS = [
    {"schemaVersion": 2, "layers": [{"digest": "sha256:" + "a" * 64, "size": 12, "urls": []}], "x": None},
    [1, -2.5, 1e300, True, False, None, "ünïcode ☃ \u2028 <&>", {"": {}}],
    "just a string",
    0,
    {"nested": [[[[{"deep": "er"}]]]]},
]


@pytest.mark.parametrize("doc", DOCS)
def test_jsonc_matches_json(doc: object) -> None:
    for ensure_ascii in (True, False):
        text = json.dumps(doc, ensure_ascii=ensure_ascii, separators=(",", ":"))
        assert jsonc.dumps(doc, ensure_ascii=ensure_ascii) == text
        assert jsonc.loads(text) == doc
        assert jsonc.loads(f" \n{text}\t\r\n".encode()) == doc


@pytest.mark.parametrize("bad", ["", "   ", "{", '{"a":1} x', "[1,]", "nul", '{"a" 1}', b"\xff\xfe"])
def test_jsonc_refuses_what_json_refuses(bad: str | bytes) -> None:
    with pytest.raises(ValueError):
        json.loads(bad)
    with pytest.raises(ValueError):
        jsonc.loads(bad)


def test_jsonc_errors_without_json_imported() -> None:
    """The C scanner needs json.decoder to report a syntax error: jsonc must cope when nobody imported it."""
    import subprocess
    import sys

    code = (
        "import sys, graftfs.jsonc as j\n"
        "try:\n    j.loads('{not json')\nexcept ValueError as e:\n    print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.startswith("JSONDecodeError Expecting property name enclosed in double quotes"), out


def test_jsonc_does_not_import_re() -> None:
    import subprocess
    import sys

    code = (
        "import sys, graftfs.jsonc; assert 're' not in sys.modules and 'json' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_remove_tree_removes_deep_trees_and_never_follows_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    tree = tmp_path / "tree"
    tree.mkdir()
    fd = os.open(tree, os.O_RDONLY)
    for _ in range(1500):  # deeper than the recursion limit (and than os.makedirs can make)
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(os.open("file", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
    os.close(fd)
    (tree / "link-to-outside").symlink_to(outside)
    os.mkfifo(tree / "d" / "fifo")
    (tree / "d" / "noperm").mkdir(mode=0)
    remove_tree(str(tree))
    assert not tree.exists()
    assert (outside / "keep").read_text() == "keep"


def test_remove_tree_of_a_file_a_symlink_and_nothing(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    remove_tree(str(tmp_path / "f"))
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "dir")
    remove_tree(str(tmp_path / "link"))
    assert not (tmp_path / "f").exists() and not (tmp_path / "link").is_symlink()
    assert (tmp_path / "dir").is_dir()
    remove_tree(str(tmp_path / "missing"))

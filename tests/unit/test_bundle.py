"""The CLI's start-up bundle (graftfs/__init__.py): graftfs's compiled modules in one file, used only while
each module's source is the one it was compiled from. Run on a copy of the package, in fresh interpreters,
as bin/graftfs runs."""

from __future__ import annotations

import marshal
import os
import shutil
import subprocess
import sys
from pathlib import Path

import graftfs

SRC = Path(graftfs.__file__).parent
SCRIPT = Path(__file__).parents[2] / "bin" / "graftfs"
#: Which loader served a few modules, the way bin/graftfs sets the import system up.
PROBE = """
import graftfs
graftfs.use_bundle()
import graftfs.cli.main, graftfs.store.images
for name in ("graftfs.cli.main", "graftfs.store.images", "graftfs.errors"):
    print(name, type(sys.modules[name].__spec__.loader).__name__)
"""


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "pkg"
    shutil.copytree(SRC, root / "graftfs", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _env(root: Path, write: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = str(root)
    if not write:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _graftfs(root: Path, write: bool = True) -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--version"], env=_env(root, write), capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("graftfs version "), out


def _loaders(root: Path) -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-c", "import sys" + PROBE], env=_env(root), capture_output=True, text=True, check=True
    ).stdout
    return dict(line.split() for line in out.splitlines())


def _bundle(root: Path) -> Path:
    return root / "graftfs" / "__pycache__" / f"bundle.{sys.implementation.cache_tag}"


def test_the_cli_writes_the_bundle_and_then_loads_from_it(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    _graftfs(root)  # compiles the modules (their .pyc), then bundles them
    assert _bundle(root).is_file()
    loaders = _loaders(root)
    assert loaders["graftfs.cli.main"] == "_Bundle" and loaders["graftfs.errors"] == "_Bundle", loaders
    # A module the bundle lacks (store.images: --version does not load it) is imported as usual, and the
    # next run adds it, keeping the rest.
    assert loaders["graftfs.store.images"] == "SourceFileLoader", loaders
    before = _bundle(root).stat().st_ino  # a rewrite is a new file renamed over it
    subprocess.run(
        [sys.executable, "-c", "import sys" + PROBE + "graftfs.refresh_bundle()"], env=_env(root), check=True
    )
    assert _bundle(root).stat().st_ino != before
    assert set(_loaders(root).values()) == {"_Bundle"}
    # Nothing to add: the file is left alone.
    before = _bundle(root).stat().st_ino
    _graftfs(root)
    assert _bundle(root).stat().st_ino == before


def test_a_changed_source_is_imported_from_itself(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    _graftfs(root)
    errors = root / "graftfs" / "errors.py"
    errors.write_text(errors.read_text() + "\nCHANGED = True\n")
    loaders = _loaders(root)
    assert loaders["graftfs.errors"] == "SourceFileLoader" and loaders["graftfs.cli.main"] == "_Bundle", loaders
    check = "import graftfs; graftfs.use_bundle(); import graftfs.errors as e; print(e.CHANGED)"
    out = subprocess.run([sys.executable, "-c", check], env=_env(root), capture_output=True, text=True, check=True)
    assert out.stdout == "True\n"
    _graftfs(root)  # and the bundle takes the new one
    assert _loaders(root)["graftfs.errors"] == "_Bundle"
    out = subprocess.run([sys.executable, "-c", check], env=_env(root), capture_output=True, text=True, check=True)
    assert out.stdout == "True\n"


def test_a_damaged_bundle_is_ignored_and_replaced(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    _graftfs(root)
    data = _bundle(root).read_bytes()
    for damaged in (b"", data[:100], b"garbage" * 100, data[: len(data) // 2]):
        _bundle(root).write_bytes(damaged)
        _graftfs(root)  # works, whatever the file holds
        loaders = _loaders(root)  # each run put back what it had to import as usual
        assert loaders["graftfs.cli.main"] == loaders["graftfs.errors"] == "_Bundle", (len(damaged), loaders)


def test_nothing_is_written_without_bytecode(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    _graftfs(root, write=False)
    assert not _bundle(root).exists()


def test_code_from_the_bundle_names_its_source_file(tmp_path: Path) -> None:
    """Tracebacks name the source file by its path, even when the .pyc was compiled with a relative one
    (``compileall src``, as bench/run does)."""
    root = _copy(tmp_path)
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "graftfs"], cwd=root, env=_env(root), check=True, capture_output=True
    )
    _graftfs(root)
    check = (
        "import graftfs; graftfs.use_bundle(); import graftfs.errors as e, sys; "
        "print(type(e.__spec__.loader).__name__, e.__file__, e.os_reason.__code__.co_filename)"
    )
    out = subprocess.run([sys.executable, "-c", check], env=_env(root), capture_output=True, text=True, check=True)
    source = str(root / "graftfs" / "errors.py")
    assert out.stdout.split() == ["_Bundle", source, source]


def test_a_copy_of_the_package_does_not_run_the_originals_code(tmp_path: Path) -> None:
    """A copied tree (cp -a, a relocated venv) carries the original's bundle, whose entries name the
    original's sources: the copy imports its own."""
    root = _copy(tmp_path)
    _graftfs(root)
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    loaders = _loaders(copy)
    assert loaders["graftfs.cli.main"] == "SourceFileLoader", loaders


def test_an_optimised_run_has_a_bundle_of_its_own(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    _graftfs(root)
    env = _env(root)
    subprocess.run([sys.executable, "-O", str(SCRIPT), "--version"], env=env, capture_output=True, check=True)
    tag = sys.implementation.cache_tag
    assert {p.name for p in (root / "graftfs" / "__pycache__").glob("bundle.*")} == {
        f"bundle.{tag}",
        f"bundle.{tag}.opt-1",
    }


def test_an_entry_that_is_not_code_is_imported_as_usual(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    _graftfs(root)
    data = _bundle(root).read_bytes()
    head = int.from_bytes(data[4:8], "little")
    version, index = marshal.loads(data[8 : 8 + head])
    fake = marshal.dumps("print('not code')")
    source, mtime, size, package, _, _ = index["graftfs.cli.main"]
    index["graftfs.cli.main"] = (source, mtime, size, package, len(data) - 8 - head, len(fake))
    new_head = marshal.dumps((version, index))
    _bundle(root).write_bytes(data[:4] + len(new_head).to_bytes(4, "little") + new_head + data[8 + head :] + fake)
    loaders = _loaders(root)
    assert loaders["graftfs.cli.main"] == "SourceFileLoader" and loaders["graftfs.errors"] == "_Bundle", loaders


def test_preloading_skips_what_it_cannot_load_as_importlib_would(tmp_path: Path) -> None:
    """A module whose package is not loaded, one changed since it was bundled, one the bundle lacks: left to
    the import system. One whose code fails is taken out of sys.modules, and fails again where imported."""
    root = _copy(tmp_path)
    (root / "graftfs" / "failing.py").write_text("import os\nif os.environ.get('FAIL'):\n    raise RuntimeError('x')\n")
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import graftfs; graftfs.use_bundle(); import graftfs.failing; graftfs.refresh_bundle()",
        ],
        env=_env(root),
        check=True,
    )
    _graftfs(root)
    errors = root / "graftfs" / "errors.py"
    errors.write_text(errors.read_text() + "\nCHANGED = True\n")
    check = """
import sys
import graftfs
graftfs.use_bundle()
bundle = sys.meta_path[0]
bundle.preload(("graftfs.store.layout", "graftfs.cli", "graftfs.errors", "graftfs.nothing", "graftfs.cli.main"))
print(" ".join(sorted(name for name in sys.modules if name.startswith("graftfs."))))
print(type(sys.modules["graftfs.cli.main"].__spec__.loader).__name__, sys.modules["graftfs.cli"].main.__name__)
bundle.preload(("graftfs.failing", "graftfs.log"))
print("graftfs.failing" in sys.modules, "graftfs.log" in sys.modules)
try:
    import graftfs.failing
except RuntimeError:
    print("fails where imported")
"""
    env = _env(root) | {"FAIL": "1"}
    out = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    # store.layout: its package (graftfs.store) was not loaded; cli.main imported errors, changed, as usual.
    assert lines[0].split() == ["graftfs.cli", "graftfs.cli.main", "graftfs.cli.settings", "graftfs.errors"]
    assert lines[1:] == ["_Bundle graftfs.cli.main", "False False", "fails where imported"]

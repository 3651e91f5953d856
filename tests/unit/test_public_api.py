"""The public surface of ``graftfs``, and the promise that importing it (and the CLI) stays cheap."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

import graftfs
from graftfs import errors

PUBLIC = [
    "AlreadyExists",
    "CreateOptions",
    "DiskUsage",
    "FailedPrecondition",
    "GraftfsError",
    "Image",
    "Internal",
    "InvalidArgument",
    "InvalidImage",
    "KernelError",
    "LockTimeout",
    "Mount",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "SnapshotInfo",
    "SnapshotUsage",
    "Snapshotter",
    "Store",
    "ThinConverted",
    "ThinImage",
    "ThinLayer",
    "ThinPublished",
    "Unavailable",
    "UnsafeArchive",
    "Unsupported",
    "VerificationError",
    "__version__",
    "mount_all",
    "thin_convert",
]

# Heavy or start-up-costly modules the Garden CLI must not load before a command needs them.
HEAVY = ["yaml", "zstandard", "isal", "ctypes", "tarfile", "hashlib", "json", "subprocess", "shutil", "gzip", "zlib"]


def test_all_is_pinned() -> None:
    assert sorted(graftfs.__all__) == sorted(PUBLIC)
    assert len(set(graftfs.__all__)) == len(graftfs.__all__)


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(graftfs, name) is not None


def test_error_classes_are_the_ones_in_errors() -> None:
    for name in errors.__all__:
        assert getattr(graftfs, name) is getattr(errors, name)
        assert issubclass(getattr(errors, name), graftfs.GraftfsError)


def test_api_classes_come_from_the_api_module() -> None:
    from graftfs import api

    for name in ("Store", "CreateOptions", "Image", "DiskUsage"):
        assert getattr(graftfs, name) is getattr(api, name)


def test_thin_images_come_from_the_repository_modules() -> None:
    from graftfs.repository import convert, publish, thin

    assert graftfs.thin_convert is convert.thin_convert
    assert (graftfs.ThinConverted, graftfs.ThinPublished) == (convert.Converted, publish.Published)
    assert (graftfs.ThinImage, graftfs.ThinLayer) == (thin.ThinImage, thin.ThinLayer)
    assert callable(graftfs.Store.thin_publish)


def test_version() -> None:
    from graftfs.cli.main import VERSION

    assert graftfs.__version__ == VERSION == "0.1.0"


def test_unknown_attribute() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        graftfs.nope  # noqa: B018


def loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``code`` (printed with repr, so the probe
    itself imports nothing)."""
    probe = f"import sys\n{code}\nprint(sorted(sys.modules))"
    # -I: no user site, no PYTHON* variables; the venv's own site-packages (the editable install) stays.
    out = subprocess.run([sys.executable, "-I", "-c", probe], check=True, capture_output=True, text=True).stdout
    loaded: list[str] = ast.literal_eval(out)
    return set(loaded)


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def test_the_interpreter_alone_loads_none_of_them() -> None:
    # Otherwise the checks below would prove nothing.
    assert heavy_in(loaded_after("")) == []


@pytest.mark.parametrize(
    "code",
    ["import graftfs", "import graftfs.cli.main", "import graftfs\nimport graftfs.errors\nimport graftfs.cli.main"],
)
def test_import_does_not_load_heavy_modules(code: str) -> None:
    loaded = loaded_after(code)
    assert heavy_in(loaded) == [], f"`{code}` loaded {heavy_in(loaded)}"
    for module in ("graftfs.api", "graftfs.layers.unpack", "graftfs.layers.stream", "graftfs.store.volumes"):
        assert module not in loaded


def test_the_cli_parses_flags_without_loading_heavy_modules() -> None:
    code = (
        "from graftfs.cli.main import COMMANDS, GLOBAL_FLAGS, parse_flags\n"
        "g, rest = parse_flags(['--store', '/s', 'create', '--with-clean', 'i', 'h'], GLOBAL_FLAGS)\n"
        "parse_flags(rest[1:], COMMANDS[rest[0]].flags)"
    )
    assert heavy_in(loaded_after(code)) == []


def test_the_probe_does_notice_heavy_modules() -> None:
    assert "hashlib" in heavy_in(loaded_after("import graftfs.layers.stream"))

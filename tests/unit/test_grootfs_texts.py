"""GrootFS v0.30.1's error texts where graftfs used to say it differently (issue 10): scripts and operators
match these words."""

from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path

import pytest

from graftfs import FailedPrecondition, InvalidArgument
from graftfs.api import Store
from graftfs.cli import main
from graftfs.errors import GraftfsError, errno_reason, os_reason
from graftfs.idmap import Mapping, Namespace
from graftfs.layers import Expect
from graftfs.log import Logger, error_text
from graftfs.pull import LayerBuilder, QuotaExceeded
from graftfs.reference import parse
from graftfs.sources.base import ImageSpec, LayerInfo
from graftfs.sources.tarball import TarballSource
from graftfs.store.features import Features
from graftfs.store.layout import Layout
from tests.support.images import TarBuilder, sha256_digest

NOT_INITIALIZED = "Store path is not initialized. Please run init-store."


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, list[dict[str, object]]]:
    code = main.run(argv)
    out, err = capsys.readouterr()
    return code, out, [json.loads(line) for line in err.splitlines() if line.startswith("{")]


# -- the uninitialised store ----------------------------------------------------------------------------------


def test_create_in_an_uninitialised_store_says_so_as_grootfs(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition) as err:
        Store(str(tmp_path / "store")).create("/nowhere.tar", "x")
    assert str(err.value) == NOT_INITIALIZED


def test_the_cli_prints_it_and_logs_store_verification_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path / "store")
    code, out, lines = _run(capsys, "--store", store, "--log-level", "error", "create", "/nowhere.tar", "x")
    assert (code, out) == (1, NOT_INITIALIZED + "\n")
    assert [(line["source"], line["message"]) for line in lines] == [
        ("grootfs", "grootfs.create.store-verification-failed")
    ]
    data = lines[0]["data"]
    assert isinstance(data, dict) and data["error"] == "store is not initialized" and data["session"] == "1"
    assert not os.path.exists(store)


def test_an_ordinary_users_create_in_an_uninitialised_store_says_so_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ordinary_user: None
) -> None:
    code, out, _ = _run(capsys, "--store", str(tmp_path / "store"), "create", "/nowhere.tar", "x")
    assert (code, out) == (1, NOT_INITIALIZED + "\n")


# -- init-store by someone who may not make the store -----------------------------------------------------------


@pytest.fixture
def ordinary_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process seen as uid 1000, entering no user namespace."""
    from graftfs import userns

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(userns, "default_mappings", lambda kind: [Mapping(0, 1000, 1)])
    monkeypatch.setattr(userns, "enter", lambda uid_mappings, gid_mappings, newuidmap, newgidmap: None)


@pytest.mark.usefixtures("ordinary_user")
@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM, errno.EROFS])
def test_init_store_where_an_ordinary_user_cannot_make_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    store = str(tmp_path / "store")

    def refused(self: Store, *args: object) -> None:
        raise OSError(code, os.strerror(code), store)

    monkeypatch.setattr(Store, "init", refused)
    code_, out, _ = _run(capsys, "--store", store, "init-store")
    assert (code_, out) == (1, f"store {store} can only be initialized by Root user\n")


@pytest.mark.usefixtures("ordinary_user")
def test_init_store_of_a_backing_store_needs_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "store")
    code, out, _ = _run(capsys, "--store", store, "init-store", "--store-size-bytes", str(1 << 30))
    assert (code, out) == (1, f"store {store} can only be initialized by Root user\n")
    assert not os.path.exists(store)


@pytest.mark.usefixtures("ordinary_user")
def test_other_init_store_failures_of_an_ordinary_user_keep_their_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(self: Store, *args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/s/meta")

    monkeypatch.setattr(Store, "init", full)
    code, out, _ = _run(capsys, "--store", str(tmp_path / "s"), "init-store")
    assert (code, out) == (1, "init-store: no space left on device: /s/meta\n")


# -- uncompressed layers and an inclusive disk limit ----------------------------------------------------------


class _Blobs:
    """A source that serves layer blobs from memory."""

    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs

    def open_blob(self, layer: LayerInfo) -> io.BytesIO:
        return io.BytesIO(self.blobs[layer.blob])


def _builder(tmp_path: Path, layers: list[bytes], quota: int) -> tuple[LayerBuilder, list[Path]]:
    blobs = {sha256_digest(data): data for data in layers}
    infos = tuple(
        LayerInfo(volume_id=f"v{i}", blob=sha256_digest(data), expect=Expect(sha256_digest(data), len(data)))
        for i, data in enumerate(layers)
    )
    builder = LayerBuilder(
        Layout.at(str(tmp_path)),
        _Blobs(blobs),  # type: ignore[arg-type]
        ImageSpec(infos),
        Namespace([], []),
        Features(ids="single", devices=False, xattrs="user", whiteouts="none"),
        Logger(),
        quota=quota,
    )
    dirs = [tmp_path / f"v{i}" for i in range(len(layers))]
    for d in dirs:
        d.mkdir()
    return builder, dirs


def test_uncompressed_layers_over_the_limit_are_grootfs_quota_error(tmp_path: Path) -> None:
    layer = TarBuilder().file("big", b"x" * 20000).build()
    builder, dirs = _builder(tmp_path, [layer], quota=len(layer) - 1)
    with pytest.raises(InvalidArgument) as err:
        builder.build(0, str(dirs[0]))
    assert isinstance(err.value.__cause__, QuotaExceeded)
    assert str(err.value) == (
        f"pulling the image: streaming blob `{sha256_digest(layer)}`: uncompressed layer size exceeds quota"
    )


def test_the_limit_is_inclusive_and_counts_every_layer_pulled(tmp_path: Path) -> None:
    first = TarBuilder().file("a", b"a" * 5000).build()
    second = TarBuilder().file("b", b"b" * 5000).build()
    builder, dirs = _builder(tmp_path, [first, second], quota=len(first))
    builder.build(0, str(dirs[0]))  # exactly the limit: allowed, as GrootFS allows it
    assert builder.quota_left == 0
    with pytest.raises(GraftfsError, match=r"uncompressed layer size exceeds quota$"):
        builder.build(1, str(dirs[1]))


def test_without_a_limit_nothing_is_counted(tmp_path: Path) -> None:
    layer = TarBuilder().file("big", b"x" * 20000).build()
    builder, dirs = _builder(tmp_path, [layer], quota=0)
    assert builder.build(0, str(dirs[0])) == 20000


# -- OS errors in Go's words ----------------------------------------------------------------------------------


def test_os_reasons_are_go_lower_case() -> None:
    assert os_reason(FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "/x")) == "no such file or directory"
    assert errno_reason(errno.EACCES) == "permission denied"
    assert errno_reason(errno.EBUSY) == "device or resource busy"
    assert error_text(PermissionError(errno.EACCES, "Permission denied", "/x")) == "/x: permission denied"
    assert error_text(InvalidArgument("as it is")) == "as it is"


def test_a_missing_tarball_and_one_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    for path, reason in (
        (tmp_path / "nope.tar", "no such file or directory"),
        (tmp_path / "file/x.tar", "not a directory"),
    ):
        with pytest.raises(GraftfsError) as err:
            TarballSource(parse(str(path))).resolve()
        assert str(err.value) == f"fetching image timestamp: stat {path}: {reason}"


def test_an_untranslated_os_error_reaches_stdout_in_go_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(self: Store) -> list[str]:
        raise PermissionError(errno.EACCES, "Permission denied", "/s/images")

    monkeypatch.setattr(Store, "list", denied)
    code, out, lines = _run(capsys, "--store", str(tmp_path), "--log-level", "error", "list")
    assert (code, out) == (1, "list: permission denied: /s/images\n")
    assert [line["message"] for line in lines] == ["grootfs.list.listing-images"]
    assert lines[0]["data"]["error"] == "/s/images: permission denied"  # type: ignore[index]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("list",), "grootfs.list.store-path-failed"),
        (("stats", "nope"), "grootfs.stats.find-id-failed"),
        (("stats", "/elsewhere/images/x"), "grootfs.stats.find-id-failed"),
        (("create", "only-one"), "grootfs.create.parsing-command"),
        (("delete",), "grootfs.delete.parsing-command"),
        (("create", "--disk-limit-size-bytes", "-1", "/x.tar", "x"), "grootfs.create.config-builder-failed"),
    ],
)
def test_failures_are_logged_under_grootfs_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    code, _, lines = _run(capsys, "--store", str(tmp_path / "none"), "--log-level", "error", *argv)
    assert code == 1
    assert [(line["source"], line["level"], line["message"]) for line in lines] == [("grootfs", "error", message)]

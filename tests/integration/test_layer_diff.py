"""A container's changes as a layer (layers.diff): made through the kernel's overlay, written from its upper
directory, unpacked again by graftfs's own unpacker and stacked on the same lower, they show the very tree
the container saw."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from graftfs.errors import Unsupported
from graftfs.layers.diff import MEDIA_TYPES, write_layer
from graftfs.layers.unpack import unpack
from graftfs.mount import kernel
from graftfs.mount.spec import Mount
from graftfs.store.fsutil import remove_tree
from tests.support import fstest

LOWER = fstest.apply(
    fstest.create_file("/kept", b"kept\n", 0o644),
    fstest.create_file("/changed", b"before\n", 0o644),
    fstest.create_dir("/dir", 0o755),
    fstest.create_file("/dir/deleted", b"x", 0o644),
    fstest.create_file("/dir/stays", b"y", 0o600),
    fstest.create_dir("/replaced/deep", 0o755),
    fstest.create_file("/replaced/deep/old", b"old", 0o644),
    fstest.create_file("/replaced/old", b"old", 0o644),
    fstest.create_file("/moved", b"moved\n", 0o644),
    fstest.create_dir("/gone", 0o700),
    fstest.create_file("/gone/f", b"f", 0o644),
)

CHANGES = fstest.apply(
    fstest.create_file("/changed", b"after, and longer\n", 0o640),
    fstest.create_file("/new", b"new\n", 0o755),
    fstest.remove("/dir/deleted"),
    fstest.chmod("/dir", 0o750),
    fstest.remove_all("/replaced"),
    fstest.create_dir("/replaced", 0o711),
    fstest.create_file("/replaced/new", b"fresh", 0o644),
    fstest.rename("/moved", "/renamed"),
    fstest.remove_all("/gone"),
    fstest.symlink("../kept", "/dir/link"),
    fstest.create_file("/hard1", b"shared", 0o644),
    fstest.link("/hard1", "/hard2"),
    fstest.set_xattr("/new", "user.note", b"\xffbinary"),
    fstest.chown("/new", 1000, 1001),
    fstest.mkfifo("/fifo", 0o600),
)


def _merged(tmp: Path, lowers: list[Path], upper: Path | None = None) -> Path:
    target = tmp / f"merged-{len(os.listdir(tmp))}"
    target.mkdir()
    options = ["lowerdir=" + ":".join(str(p) for p in lowers)]
    if upper is not None:
        work = tmp / f"work-{len(os.listdir(tmp))}"
        work.mkdir()
        options += [f"upperdir={upper}", f"workdir={work}"]
    kernel.mount_all([Mount("overlay", "overlay", tuple(options))], str(target))
    return target


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_a_containers_changes_round_trip_through_a_layer(workdir: Path, compression: str) -> None:
    lower, upper = workdir / "lower", workdir / "upper"
    lower.mkdir()
    upper.mkdir()
    LOWER(str(lower))
    seen = _merged(workdir, [lower], upper)
    try:
        CHANGES(str(seen))
        expected = workdir / "expected"  # the container's view, kept to compare against
        subprocess.run(["cp", "-a", str(seen), str(expected)], check=True)
    finally:
        kernel.unmount(str(seen))

    out = io.BytesIO()
    digests = write_layer(str(upper), out, compression)
    blob = out.getvalue()
    assert digests.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert digests.size == len(blob) and digests.media_type == MEDIA_TYPES[compression]
    # A streamed zstd frame does not say its size up front: read it as a stream, as a puller does.
    decompress: dict[str, Callable[[bytes], bytes]] = {
        "gzip": gzip.decompress,
        "zstd": zstandard.ZstdDecompressor().decompressobj().decompress,
        "none": bytes,
    }
    tar = decompress[compression](blob)
    assert digests.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        names = archive.getnames()
    # Deletions in the OCI form: a whiteout beside the name, an opaque marker in a replaced directory.
    assert {"dir/.wh.deleted", ".wh.moved", ".wh.gone", "replaced/.wh..wh..opq"} <= set(names)
    assert not any(".overlay." in n for n in names)
    again = io.BytesIO()
    assert write_layer(str(upper), again, compression).digest == digests.digest  # deterministic

    layer = workdir / "layer"
    layer.mkdir()
    unpack(io.BytesIO(tar), str(layer))
    shown = _merged(workdir, [layer, lower])
    try:
        fstest.check_directory_equal(str(expected), str(shown), xattrs=True)
    finally:
        kernel.unmount(str(shown))


def test_a_redirected_directory_is_refused_by_name(workdir: Path) -> None:
    upper = workdir / "upper"
    (upper / "dir").mkdir(parents=True)
    os.setxattr(upper / "dir", "trusted.overlay.redirect", b"/elsewhere")
    with pytest.raises(Unsupported, match=r"`dir` in .* is an overlayfs redirect entry"):
        write_layer(str(upper), io.BytesIO())


def test_the_digest_does_not_depend_on_xattr_order_and_sockets_are_left_out(workdir: Path) -> None:
    import socket

    digests = []
    for order in (("user.a", "user.b"), ("user.b", "user.a")):
        upper = workdir / f"upper-{order[0]}"
        upper.mkdir()
        (upper / "f").write_bytes(b"x")
        os.utime(upper / "f", (0, 0))
        for name in order:
            os.setxattr(upper / "f", name, name.encode())
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(upper / "app.sock"))
        os.utime(upper, (0, 0))
        out = io.BytesIO()
        digests.append(write_layer(str(upper), out, "none").digest)
        with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as archive:
            assert archive.getnames() == ["f"]
    assert digests[0] == digests[1]


def test_a_tree_deeper_than_the_recursion_limit(workdir: Path) -> None:
    upper = deep = workdir / "upper"
    upper.mkdir()
    try:
        for _ in range(1200):  # deeper than Python's recursion limit (pathlib's mkdir(parents=True) recurses too)
            deep = deep / "d"
            deep.mkdir()
        (deep / "f").write_bytes(b"deep")
        out = io.BytesIO()
        write_layer(str(upper), out, "none")
        with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as archive:
            assert archive.getnames()[-1].endswith("/d/f")
    finally:
        remove_tree(str(upper))  # pytest's own clean-up (shutil.rmtree) recurses, and would fail on it

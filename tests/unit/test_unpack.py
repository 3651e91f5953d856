"""graftfs.layers.unpack: what a layer tar turns into on disk, and what it must never touch.

Every test unpacks into ``<tmp>/box/root/layer`` so that ``../``, ``../../`` and ``../../../`` all land
inside ``tmp_path``, where :func:`outside_untouched` can prove nothing changed. Run as root (chown, mknod,
``trusted.*`` and ``security.*`` xattrs need it), as the unit suite is expected to be.
"""

from __future__ import annotations

import errno
import gzip
import io
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest

from graftfs.errors import InvalidImage, KernelError, UnsafeArchive, Unsupported
from graftfs.idmap import IdMap, Mapping
from graftfs.layers.unpack import UnpackOptions, UnpackResult, _Unpacker, failure, unpack
from tests.support.hostile import (
    END,
    Case,
    blowup_cases,
    crash_cases,
    header,
    member,
    padded,
    pax,
    pax_records,
    sparse_hole_layer,
)
from tests.support.images import DEFAULT_MTIME, TarBuilder

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="unpack tests chown, mknod and set trusted.* xattrs")

NS = 1_000_000_000
SECRET = b"top secret: must never change\n"
# A file capability (VFS_CAP_REVISION_2, cap_net_bind_service permitted+effective): binary, with NULs.
CAP_BLOB = bytes.fromhex("0100000200040000000000000000000000000000")


# -- helpers ---------------------------------------------------------------------------------------------------


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    d = tmp_path / "box" / "root" / "layer"
    d.mkdir(parents=True)
    return d


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A sentinel directory next to the layer, with a file the hostile tars aim at."""
    o = tmp_path / "outside"
    (o / "sub").mkdir(parents=True)
    (o / "secret").write_bytes(SECRET)
    (o / "sub" / "inner").write_bytes(b"inner\n")
    return o


def run(dest: Path, tar: TarBuilder | bytes, **options: Any) -> UnpackResult:
    data = tar.build() if isinstance(tar, TarBuilder) else tar
    return unpack(io.BytesIO(data), str(dest), UnpackOptions(**options))


def raw_info(name: str, type_: bytes = tarfile.REGTYPE, linkname: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    """A member whose name is taken verbatim (TarBuilder strips a leading "/" from ordinary names)."""
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    info.mode = mode
    info.mtime = DEFAULT_MTIME
    info.uname = info.gname = ""
    return info


def snapshot(root: Path, exclude: Path) -> dict[str, tuple[Any, ...]]:
    """Everything under ``root`` except ``exclude``: type, mode, owner, mtime, link count and content."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) != exclude]
        for name in [*dirnames, *filenames, "."]:
            p = Path(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                body: bytes | str = p.read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(p)
            else:
                body = ""
            key = os.path.relpath(p, root)
            out[key] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_nlink, st.st_ino, body)
    return out


@contextmanager
def outside_untouched(tmp_path: Path, dest: Path) -> Iterator[None]:
    """Nothing outside ``dest`` may be created, removed or changed (listing, metadata and bytes)."""
    secret = tmp_path / "outside" / "secret"
    passwd_links = os.stat("/etc/passwd").st_nlink
    before = snapshot(tmp_path, dest)
    yield
    after = snapshot(tmp_path, dest)
    assert sorted(after) == sorted(before), "entries appeared or vanished outside the layer"
    assert after == before
    if secret.exists() or (tmp_path / "outside").exists():
        assert secret.read_bytes() == SECRET
        assert sorted(os.listdir(tmp_path / "outside")) == ["secret", "sub"]
        assert os.listdir(tmp_path / "outside" / "sub") == ["inner"]
    assert os.stat("/etc/passwd").st_nlink == passwd_links


def refused(tmp_path: Path, dest: Path, tar: TarBuilder, *needles: str) -> str:
    """Unpack ``tar``, expect UnsafeArchive mentioning every needle, and nothing outside ``dest`` changed."""
    with outside_untouched(tmp_path, dest), pytest.raises(UnsafeArchive) as err:
        run(dest, tar)
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


def mode_of(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


# -- regular files ---------------------------------------------------------------------------------------------


def test_regular_file_keeps_content_mode_owner_and_mtime(dest: Path) -> None:
    result = run(dest, TarBuilder().file("f", b"hello\n", mode=0o640, uid=1234, gid=5678, mtime=1_600_000_000))
    st = os.lstat(dest / "f")
    assert stat.S_ISREG(st.st_mode)
    assert (dest / "f").read_bytes() == b"hello\n"
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert st.st_mtime_ns == 1_600_000_000 * NS
    assert result.bytes_written == 6


@pytest.mark.parametrize("mode", [0o4755, 0o2755, 0o1755, 0o6711, 0o4000, 0o7777])
def test_setuid_setgid_and_sticky_bits_survive_chown(dest: Path, mode: int) -> None:
    # chown clears set-id bits, so chmod must come after it.
    run(dest, TarBuilder().file("bin/tool", b"#!", mode=mode, uid=1000, gid=1000))
    assert mode_of(dest / "bin" / "tool") == mode
    assert os.lstat(dest / "bin" / "tool").st_uid == 1000


def test_mtime_keeps_nanoseconds_from_a_pax_record(dest: Path) -> None:
    info = raw_info("precise")
    info.pax_headers = {"mtime": "1577836800.123456789"}
    run(dest, TarBuilder().raw(info, b"x"))
    assert os.lstat(dest / "precise").st_mtime_ns == 1_577_836_800_123_456_789


def test_file_larger_than_a_copy_chunk_is_copied_whole(dest: Path) -> None:
    data = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MiB, not a multiple of the 1 MiB chunk
    result = run(dest, TarBuilder().file("big", data))
    assert (dest / "big").read_bytes() == data
    assert result.bytes_written == len(data)


def test_empty_file(dest: Path) -> None:
    result = run(dest, TarBuilder().file("empty", b"", mode=0o600))
    assert (dest / "empty").read_bytes() == b""
    assert mode_of(dest / "empty") == 0o600
    assert result.bytes_written == 0


def test_bytes_written_counts_regular_files_only(dest: Path) -> None:
    tb = (
        TarBuilder()
        .dir("d")
        .file("d/a", b"12345")
        .file("d/b", b"678")
        .symlink("d/l", "a")
        .hardlink("d/h", "d/a")
        .fifo("d/p")
        .whiteout("d/gone")
    )
    result = run(dest, tb)
    assert result.bytes_written == 8


# -- directories -----------------------------------------------------------------------------------------------


def test_directory_mode_owner_and_mtime_are_set_after_its_children(dest: Path) -> None:
    tb = (
        TarBuilder()
        .dir("d", mode=0o750, uid=7, gid=8, mtime=1_000_000_000)
        .dir("d/sub", mode=0o711, mtime=1_100_000_000)
        .file("d/f", b"child", mtime=1_200_000_000)
        .file("d/sub/g", b"grandchild", mtime=1_300_000_000)
    )
    run(dest, tb)
    st = os.lstat(dest / "d")
    assert stat.S_ISDIR(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o750
    assert (st.st_uid, st.st_gid) == (7, 8)
    # GrootFS lets children clobber directory mtimes; graftfs sets them last, as the archive says.
    assert st.st_mtime_ns == 1_000_000_000 * NS
    assert os.lstat(dest / "d" / "sub").st_mtime_ns == 1_100_000_000 * NS
    assert os.lstat(dest / "d" / "f").st_mtime_ns == 1_200_000_000 * NS
    assert os.lstat(dest / "d" / "sub" / "g").st_mtime_ns == 1_300_000_000 * NS


def test_read_only_directory_still_receives_its_children(dest: Path) -> None:
    tb = (
        TarBuilder()
        .dir("ro", mode=0o555, mtime=1_000_000_000)
        .dir("ro/inner", mode=0o500)
        .file("ro/inner/f", b"data")
        .file("ro/g", b"more")
    )
    run(dest, tb)
    assert mode_of(dest / "ro") == 0o555
    assert mode_of(dest / "ro" / "inner") == 0o500
    assert (dest / "ro" / "inner" / "f").read_bytes() == b"data"
    assert (dest / "ro" / "g").read_bytes() == b"more"
    assert os.lstat(dest / "ro").st_mtime_ns == 1_000_000_000 * NS


@pytest.mark.parametrize("mode", [0o1777, 0o2775, 0o4755, 0o700, 0o000])
def test_directory_special_bits(dest: Path, mode: int) -> None:
    run(dest, TarBuilder().dir("d", mode=mode, uid=42, gid=43))
    assert mode_of(dest / "d") == mode
    assert os.lstat(dest / "d").st_uid == 42


def test_missing_parents_are_created_0755_and_owned_by_root(dest: Path) -> None:
    run(dest, TarBuilder().file("a/b/c", b"deep", uid=1000, gid=1000))
    for parent in (dest / "a", dest / "a" / "b"):
        st = os.lstat(parent)
        assert stat.S_ISDIR(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o755
        assert (st.st_uid, st.st_gid) == (0, 0)
    assert (dest / "a" / "b" / "c").read_bytes() == b"deep"


def test_later_directory_entry_describes_an_implied_parent(dest: Path) -> None:
    tb = TarBuilder().file("a/f", b"x").dir("a", mode=0o700, uid=5, gid=6, mtime=1_000_000_000)
    run(dest, tb)
    st = os.lstat(dest / "a")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o700, 5, 6)
    assert st.st_mtime_ns == 1_000_000_000 * NS
    assert (dest / "a" / "f").read_bytes() == b"x"


def test_root_entry_sets_the_layer_roots_metadata(dest: Path) -> None:
    tb = TarBuilder().dir("./", mode=0o750, uid=3, gid=4, mtime=1_000_000_000).file("f", b"x")
    run(dest, tb)
    st = os.lstat(dest)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 3, 4)
    assert st.st_mtime_ns == 1_000_000_000 * NS
    assert (dest / "f").read_bytes() == b"x"


def test_dot_prefixed_names_are_the_same_as_plain_ones(dest: Path) -> None:
    run(dest, TarBuilder().dir("./etc").file("./etc/hosts", b"127.0.0.1 localhost\n").file("etc//./motd", b"hi"))
    assert sorted(os.listdir(dest)) == ["etc"]
    assert (dest / "etc" / "hosts").read_bytes() == b"127.0.0.1 localhost\n"
    assert (dest / "etc" / "motd").read_bytes() == b"hi"


# -- symlinks and hard links -----------------------------------------------------------------------------------


def test_symlink_target_owner_and_mtime_without_following(dest: Path) -> None:
    tb = (
        TarBuilder()
        .file("target", b"t", mtime=1_000_000_000)
        .symlink("rel", "target", uid=11, gid=12, mtime=1_500_000_000)
        .symlink("abs", "/etc/hostname", mtime=1_600_000_000)
    )
    run(dest, tb)
    st = os.lstat(dest / "rel")
    assert stat.S_ISLNK(st.st_mode)
    assert os.readlink(dest / "rel") == "target"
    assert (st.st_uid, st.st_gid) == (11, 12)
    assert st.st_mtime_ns == 1_500_000_000 * NS
    # The target's own metadata is untouched (lchown / utimensat(AT_SYMLINK_NOFOLLOW)).
    tst = os.lstat(dest / "target")
    assert (tst.st_uid, tst.st_mtime_ns) == (0, 1_000_000_000 * NS)
    assert os.readlink(dest / "abs") == "/etc/hostname"
    assert os.lstat(dest / "abs").st_mtime_ns == 1_600_000_000 * NS


def test_dangling_symlink_to_outside_is_created_but_never_followed(tmp_path: Path, dest: Path, outside: Path) -> None:
    with outside_untouched(tmp_path, dest):
        run(dest, TarBuilder().symlink("escape", str(outside / "secret"), uid=99, mtime=1_000_000_000))
    assert os.readlink(dest / "escape") == str(outside / "secret")
    assert os.lstat(dest / "escape").st_uid == 99


def test_hardlink_shares_the_inode(dest: Path) -> None:
    tb = TarBuilder().dir("a").dir("b").file("a/f", b"shared", mode=0o600).hardlink("b/h", "a/f")
    run(dest, tb)
    f, h = os.lstat(dest / "a" / "f"), os.lstat(dest / "b" / "h")
    assert f.st_ino == h.st_ino
    assert f.st_nlink == 2
    assert (dest / "b" / "h").read_bytes() == b"shared"


def test_hardlink_to_a_symlink_links_the_symlink_itself(dest: Path) -> None:
    run(dest, TarBuilder().symlink("s", "/etc/passwd").hardlink("h", "s"))
    assert os.readlink(dest / "h") == "/etc/passwd"
    assert os.lstat(dest / "h").st_ino == os.lstat(dest / "s").st_ino


def test_hardlink_replaces_an_existing_entry(dest: Path) -> None:
    run(dest, TarBuilder().file("f", b"new").file("h", b"old").hardlink("h", "f"))
    assert (dest / "h").read_bytes() == b"new"
    assert os.lstat(dest / "h").st_ino == os.lstat(dest / "f").st_ino


def test_hardlink_to_a_missing_target_is_an_invalid_image(dest: Path) -> None:
    with pytest.raises(InvalidImage, match="not in the layer"):
        run(dest, TarBuilder().hardlink("h", "nope"))


def test_hardlink_to_a_directory_is_an_invalid_image(dest: Path) -> None:
    with pytest.raises(InvalidImage, match="directory"):
        run(dest, TarBuilder().dir("d").hardlink("h", "d"))


# -- FIFOs and devices -----------------------------------------------------------------------------------------


def test_fifo(dest: Path) -> None:
    run(dest, TarBuilder().fifo("run/pipe", mode=0o620, uid=5, mtime=1_000_000_000))
    st = os.lstat(dest / "run" / "pipe")
    assert stat.S_ISFIFO(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o620
    assert st.st_uid == 5
    assert st.st_mtime_ns == 1_000_000_000 * NS


def test_character_and_block_devices_as_root(dest: Path) -> None:
    tb = TarBuilder().dir("dev").chardev("dev/null", 1, 3, mode=0o666).blockdev("dev/loop9", 7, 9, mode=0o660, gid=6)
    run(dest, tb)
    null, loop = os.lstat(dest / "dev" / "null"), os.lstat(dest / "dev" / "loop9")
    assert stat.S_ISCHR(null.st_mode)
    assert (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    assert stat.S_IMODE(null.st_mode) == 0o666
    assert stat.S_ISBLK(loop.st_mode)
    assert (os.major(loop.st_rdev), os.minor(loop.st_rdev)) == (7, 9)
    assert (stat.S_IMODE(loop.st_mode), loop.st_gid) == (0o660, 6)


def test_devices_are_skipped_when_disabled_but_fifos_are_kept(dest: Path) -> None:
    tb = TarBuilder().dir("dev").chardev("dev/null", 1, 3).blockdev("dev/sda", 8, 0).fifo("dev/fifo").file("ok", b"1")
    run(dest, tb, devices=False)
    assert sorted(os.listdir(dest / "dev")) == ["fifo"]
    assert stat.S_ISFIFO(os.lstat(dest / "dev" / "fifo").st_mode)
    assert (dest / "ok").read_bytes() == b"1"


# -- xattrs ----------------------------------------------------------------------------------------------------


def test_user_and_security_capability_xattrs_round_trip(dest: Path) -> None:
    not_utf8 = b"\xff\xfe\xc3\x28\x00tail"
    xattrs = {"user.comment": b"plain", "user.binary": not_utf8, "security.capability": CAP_BLOB}
    # uid 1000: the capability must be set after the chown, which would clear it.
    run(dest, TarBuilder().file("bin/ping", b"\x7fELF", mode=0o755, uid=1000, gid=1000, xattrs=xattrs))
    p = str(dest / "bin" / "ping")
    assert os.getxattr(p, "user.comment") == b"plain"
    assert os.getxattr(p, "user.binary") == not_utf8
    assert os.getxattr(p, "security.capability") == CAP_BLOB
    assert os.lstat(p).st_uid == 1000
    assert mode_of(Path(p)) == 0o755


def test_directory_xattrs(dest: Path) -> None:
    run(dest, TarBuilder().dir("d", xattrs={"user.tag": b"\x00\x01\x02"}).file("d/f", b""))
    assert os.getxattr(dest / "d", "user.tag") == b"\x00\x01\x02"


# -- long names and sparse files -------------------------------------------------------------------------------


def test_pax_long_path_over_1000_characters(dest: Path) -> None:
    components = [f"d{i}" + "x" * 200 for i in range(5)]
    name = "/".join([*components, "file-" + "y" * 100])
    assert len(name) > 1000
    result = run(dest, TarBuilder().file(name, b"deep and long\n", mode=0o600))
    assert (dest / name).read_bytes() == b"deep and long\n"
    assert mode_of(dest / name) == 0o600
    assert mode_of(dest / components[0]) == 0o755
    assert result.bytes_written == len(b"deep and long\n")


def test_pax_long_symlink_and_hardlink_targets(dest: Path) -> None:
    long_dir = "/".join("p" * 250 for _ in range(4))
    target = long_dir + "/real"
    link_target = "../" * 3 + "/".join("t" * 200 for _ in range(10))  # symlink targets are stored as is
    assert len(target) > 1000 and len(link_target) > 2000
    tb = TarBuilder().file(target, b"real").hardlink("hard", target).symlink("soft", link_target)
    run(dest, tb)
    assert os.lstat(dest / "hard").st_ino == os.lstat(dest / target).st_ino
    assert os.readlink(dest / "soft") == link_target


@pytest.mark.parametrize("fmt", ["pax", "gnu"])
def test_sparse_file_content_and_holes(dest: Path, fmt: str) -> None:
    size = 64 << 20
    tb = TarBuilder().sparse_file("sparse", size, [(0, b"head"), (size // 2, b"middle"), (size - 4, b"tail")], fmt=fmt)  # type: ignore[arg-type]
    result = run(dest, tb)
    p = dest / "sparse"
    st = os.lstat(p)
    assert st.st_size == size
    with open(p, "rb") as f:
        assert f.read(4) == b"head"
        f.seek(size // 2)
        assert f.read(6) == b"middle"
        f.seek(size - 4)
        assert f.read(4) == b"tail"
        f.seek(4096)
        assert f.read(1 << 20) == b"\0" * (1 << 20)
    # Holes stay holes: far less than the apparent size is allocated.
    assert st.st_blocks * 512 <= 8 << 20
    assert result.bytes_written == size


# -- whiteouts and opaque directories --------------------------------------------------------------------------


def test_whiteout_becomes_a_0_0_character_device(dest: Path) -> None:
    run(dest, TarBuilder().whiteout("gone").dir("etc").whiteout("etc/removed"))
    for p in (dest / "gone", dest / "etc" / "removed"):
        st = os.lstat(p)
        assert stat.S_ISCHR(st.st_mode)
        assert st.st_rdev == os.makedev(0, 0)
    assert not (dest / ".wh.gone").exists()
    assert sorted(os.listdir(dest / "etc")) == ["removed"]


def test_whiteouts_where_they_cannot_be_made_are_refused_by_name(dest: Path) -> None:
    with pytest.raises(Unsupported, match=r"the layer deletes `etc/removed`, and whiteouts \(0:0 character"):
        run(dest, TarBuilder().dir("etc").whiteout("etc/removed"), whiteouts="none")


def test_whiteouts_as_files_keep_the_layers_own_markers(dest: Path) -> None:
    tb = TarBuilder().dir("etc").file("etc/removed", b"x").whiteout("etc/removed").dir("opaque").opaque("opaque")
    run(dest, tb, whiteouts="file")
    assert sorted(os.listdir(dest / "etc")) == [".wh.removed"]
    assert os.listdir(dest / "opaque") == [".wh..wh..opq"]
    assert os.lstat(dest / "etc/.wh.removed").st_size == 0
    assert not os.listxattr(dest / "opaque")


def test_whiteout_in_a_missing_directory_creates_the_parent(dest: Path) -> None:
    run(dest, TarBuilder().whiteout("a/b/gone"))
    assert stat.S_ISCHR(os.lstat(dest / "a" / "b" / "gone").st_mode)
    assert mode_of(dest / "a" / "b") == 0o755


def test_whiteout_removes_an_earlier_entry_of_the_same_layer(dest: Path) -> None:
    tb = (
        TarBuilder()
        .file("f", b"short-lived")
        .dir("d")
        .dir("d/sub")
        .file("d/sub/x", b"x")
        .symlink("s", "/etc")
        .whiteout("f")
        .whiteout("d")
        .whiteout("s")
    )
    run(dest, tb)
    for name in ("f", "d", "s"):
        st = os.lstat(dest / name)
        assert stat.S_ISCHR(st.st_mode), name
        assert st.st_rdev == 0
    assert sorted(os.listdir(dest)) == ["d", "f", "s"]


def test_opaque_marker_sets_trusted_overlay_opaque(dest: Path) -> None:
    run(dest, TarBuilder().dir("d").file("d/keep", b"k").opaque("d"))
    assert os.getxattr(dest / "d", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(dest / "d")) == ["keep"]


def test_opaque_marker_with_user_xattr_namespace(dest: Path) -> None:
    run(dest, TarBuilder().dir("d").opaque("d"), xattr_namespace="user")
    assert os.getxattr(dest / "d", "user.overlay.opaque") == b"y"
    with pytest.raises(OSError):
        os.getxattr(dest / "d", "trusted.overlay.opaque")


def test_opaque_marker_for_a_missing_directory_creates_it(dest: Path) -> None:
    run(dest, TarBuilder().opaque("x/y"))
    assert os.getxattr(dest / "x" / "y", "trusted.overlay.opaque") == b"y"
    assert os.listdir(dest / "x" / "y") == []


# -- duplicate entries -----------------------------------------------------------------------------------------


def test_later_file_replaces_earlier_file(dest: Path) -> None:
    run(dest, TarBuilder().file("f", b"first version", mode=0o600).file("f", b"second", mode=0o644, uid=3))
    assert (dest / "f").read_bytes() == b"second"
    assert mode_of(dest / "f") == 0o644
    assert os.lstat(dest / "f").st_uid == 3


def test_file_replaced_by_directory(dest: Path) -> None:
    run(dest, TarBuilder().file("x", b"file").dir("x", mode=0o711).file("x/child", b"c"))
    assert mode_of(dest / "x") == 0o711
    assert (dest / "x" / "child").read_bytes() == b"c"


def test_directory_with_children_replaced_by_file(dest: Path) -> None:
    tb = TarBuilder().dir("x", mode=0o555, mtime=1).dir("x/sub").file("x/sub/f", b"c").file("x", b"now a file")
    run(dest, tb)
    assert stat.S_ISREG(os.lstat(dest / "x").st_mode)
    assert (dest / "x").read_bytes() == b"now a file"


def test_symlink_replaced_by_file_does_not_write_through(tmp_path: Path, dest: Path, outside: Path) -> None:
    with outside_untouched(tmp_path, dest):
        run(dest, TarBuilder().symlink("link", str(outside / "secret")).file("link", b"pwned", mode=0o777))
    assert stat.S_ISREG(os.lstat(dest / "link").st_mode)
    assert (dest / "link").read_bytes() == b"pwned"


def test_file_replaced_by_symlink(dest: Path) -> None:
    run(dest, TarBuilder().file("x", b"file").symlink("x", "elsewhere"))
    assert os.readlink(dest / "x") == "elsewhere"


def test_duplicate_directory_entries_last_metadata_wins(dest: Path) -> None:
    tb = TarBuilder().dir("d", mode=0o700, uid=1, mtime=1).file("d/f", b"").dir("d", mode=0o755, uid=2, mtime=2)
    run(dest, tb)
    st = os.lstat(dest / "d")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_mtime_ns) == (0o755, 2, 2 * NS)
    assert (dest / "d" / "f").exists()


# -- base directory and ID mapping -----------------------------------------------------------------------------


@pytest.mark.parametrize("base", ["home/vcap", "/home/vcap", "./home/vcap/"])
def test_base_directory_puts_the_layer_under_it(dest: Path, base: str) -> None:
    # Garden's preloaded+layer rootfs passes an absolute layer_path (e.g. /home/vcap) as the annotation.
    tb = TarBuilder().dir("app").file("app/run.sh", b"#!/bin/sh\n", mode=0o755).hardlink("app/same", "app/run.sh")
    run(dest, tb, base_directory=base)
    assert sorted(os.listdir(dest)) == ["home"]
    assert (dest / "home" / "vcap" / "app" / "run.sh").read_bytes() == b"#!/bin/sh\n"
    assert os.lstat(dest / "home/vcap/app/same").st_ino == os.lstat(dest / "home/vcap/app/run.sh").st_ino
    for implied in ("home", "home/vcap"):
        st = os.lstat(dest / implied)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o755, 0, 0)


def test_base_directory_takes_implied_metadata_and_the_root_entry(dest: Path) -> None:
    implied = {"home": (0o711, 0, 0), "home/vcap": (0o750, 2000, 2000)}
    tb = TarBuilder().file("f", b"x")
    run(dest, tb, base_directory="/home/vcap", implied_dirs=implied)
    assert (mode_of(dest / "home"), os.lstat(dest / "home").st_uid) == (0o711, 0)
    st = os.lstat(dest / "home" / "vcap")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 2000, 2000)
    # A "./" entry describes the base directory itself.
    run(dest, TarBuilder().dir("./", mode=0o700, uid=7, gid=7).file("g", b""), base_directory="home/vcap")
    st = os.lstat(dest / "home" / "vcap")
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o700, 7)


def test_base_directory_may_not_escape(tmp_path: Path, dest: Path) -> None:
    with outside_untouched(tmp_path, dest), pytest.raises(UnsafeArchive, match="base directory"):
        run(dest, TarBuilder().file("f", b"x"), base_directory="../../escape")
    assert os.listdir(dest) == []


def test_uid_and_gid_mapping(dest: Path) -> None:
    uid_map = IdMap([Mapping(0, 100000, 1), Mapping(1, 200001, 65535)])
    gid_map = IdMap([Mapping(0, 300000, 65536)])
    tb = (
        TarBuilder()
        .dir("home", uid=0, gid=0)
        .file("home/user/f", b"x", uid=1000, gid=1000)
        .symlink("l", "home", uid=5, gid=6)
        .fifo("p", uid=70000, gid=70000)  # outside every range: left as is
    )
    run(dest, tb, uid_map=uid_map, gid_map=gid_map)

    def owner(p: str) -> tuple[int, int]:
        st = os.lstat(dest / p)
        return st.st_uid, st.st_gid

    assert owner("home") == (100000, 300000)
    assert owner("home/user") == (100000, 300000)  # implied parent: mapped root
    assert owner("home/user/f") == (201000, 301000)
    assert owner("l") == (200005, 300006)
    assert owner("p") == (70000, 70000)


def test_preserve_owner_off_leaves_the_callers_ownership(dest: Path) -> None:
    run(dest, TarBuilder().dir("d", uid=5).file("d/f", b"x", uid=1000, gid=1000, mode=0o4755), preserve_owner=False)
    assert os.lstat(dest / "d" / "f").st_uid == os.geteuid()
    assert os.lstat(dest / "d").st_uid == os.geteuid()
    assert mode_of(dest / "d" / "f") == 0o4755


# -- malformed archives ----------------------------------------------------------------------------------------


def test_garbage_is_an_invalid_image(dest: Path) -> None:
    with pytest.raises(InvalidImage, match="invalid layer tar"):
        run(dest, b"this is not a tar archive" * 100)


def test_truncated_member_is_an_invalid_image(dest: Path) -> None:
    data = TarBuilder().file("f", b"x" * 10000).build()
    with pytest.raises(InvalidImage):
        run(dest, data[:2048])


def test_empty_archive_unpacks_nothing(dest: Path) -> None:
    result = run(dest, TarBuilder())
    assert os.listdir(dest) == []
    assert result == UnpackResult(0)


# -- security: every refused archive leaves the outside world alone -------------------------------------------


@pytest.mark.parametrize("name", ["../escape", "../../escape", "../../../escape", "a/../../escape", "a/b/../../.."])
def test_dotdot_names_are_refused(tmp_path: Path, dest: Path, outside: Path, name: str) -> None:
    refused(tmp_path, dest, TarBuilder().file(name, b"pwned"), "`..`", name)


@pytest.mark.parametrize("kind", [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE])
def test_absolute_names_are_refused(tmp_path: Path, dest: Path, outside: Path, kind: bytes) -> None:
    name = str(outside / "secret") if kind != tarfile.DIRTYPE else str(outside / "newdir")
    tb = TarBuilder().raw(raw_info(name, kind, linkname="x"), b"pwned" if kind == tarfile.REGTYPE else None)
    refused(tmp_path, dest, tb, "absolute", name)


def test_file_written_through_a_symlink_to_outside_is_refused(tmp_path: Path, dest: Path, outside: Path) -> None:
    tb = TarBuilder().symlink("link", str(outside)).file("link/evil", b"pwned")
    refused(tmp_path, dest, tb, "link/evil", "through the symlink `link`")
    assert not (outside / "evil").exists()


def test_overwrite_through_a_symlink_to_outside_is_refused(tmp_path: Path, dest: Path, outside: Path) -> None:
    tb = TarBuilder().symlink("link", str(outside)).file("link/secret", b"pwned")
    refused(tmp_path, dest, tb, "through the symlink `link`")


def test_relative_symlink_escaping_then_write_is_refused(tmp_path: Path, dest: Path, outside: Path) -> None:
    tb = TarBuilder().symlink("up", "../../../outside").file("up/sub/inner", b"pwned")
    refused(tmp_path, dest, tb, "through the symlink `up`")


def test_directory_through_a_symlink_is_refused(tmp_path: Path, dest: Path, outside: Path) -> None:
    tb = TarBuilder().symlink("link", str(outside)).dir("link/newdir").file("link/newdir/x", b"x")
    refused(tmp_path, dest, tb, "through the symlink `link`")


def test_nested_symlink_parent_is_refused(tmp_path: Path, dest: Path, outside: Path) -> None:
    tb = TarBuilder().dir("a").symlink("a/b", str(outside)).file("a/b/c/d", b"pwned")
    refused(tmp_path, dest, tb, "through the symlink `a/b`")


def test_hardlink_named_through_a_symlink_is_refused(tmp_path: Path, dest: Path, outside: Path) -> None:
    tb = TarBuilder().file("f", b"inside").symlink("link", str(outside)).hardlink("link/h", "f")
    refused(tmp_path, dest, tb, "through the symlink `link`")


def test_hardlink_target_through_a_symlink_is_refused(tmp_path: Path, dest: Path, outside: Path) -> None:
    # Would make dest/h a second name for <outside>/secret, to be rewritten by a later entry or the container.
    tb = TarBuilder().symlink("link", str(outside)).hardlink("h", "link/secret").file("h", b"pwned")
    refused(tmp_path, dest, tb, "through the symlink `link`")
    assert not (dest / "h").exists()


@pytest.mark.parametrize("target", ["../../etc/passwd", "../../../outside/secret", "a/../../x"])
def test_hardlink_target_with_dotdot_is_refused(tmp_path: Path, dest: Path, outside: Path, target: str) -> None:
    tb = TarBuilder().dir("a").raw(raw_info("h", tarfile.LNKTYPE, linkname=target))
    refused(tmp_path, dest, tb, "`..`", target)


@pytest.mark.parametrize("target", ["/etc/passwd", "<secret>"])
def test_absolute_hardlink_target_is_refused(tmp_path: Path, dest: Path, outside: Path, target: str) -> None:
    if target == "<secret>":
        target = str(outside / "secret")
    tb = TarBuilder().raw(raw_info("h", tarfile.LNKTYPE, linkname=target))
    refused(tmp_path, dest, tb, "absolute", target)
    assert not (dest / "h").exists()


def test_symlink_chain_to_outside_is_refused(tmp_path: Path, dest: Path, outside: Path) -> None:
    tb = TarBuilder().symlink("a", "b").symlink("b", str(outside)).file("a/x", b"pwned")
    refused(tmp_path, dest, tb, "through the symlink `a`")
    tb = TarBuilder().symlink("a", "b").symlink("b", str(outside)).file("b/x", b"pwned")
    refused(tmp_path, dest, tb, "through the symlink `b`")


def test_hardlink_copy_of_an_escaping_symlink_is_also_guarded(tmp_path: Path, dest: Path, outside: Path) -> None:
    tb = TarBuilder().symlink("s", str(outside)).hardlink("h", "s").file("h/x", b"pwned")
    refused(tmp_path, dest, tb, "through the symlink `h`")


def test_directory_entry_replaces_a_symlink_and_writes_stay_inside(tmp_path: Path, dest: Path, outside: Path) -> None:
    tb = TarBuilder().symlink("link", str(outside)).dir("link", mode=0o750).file("link/secret", b"mine")
    with outside_untouched(tmp_path, dest):
        run(dest, tb)
    assert stat.S_ISDIR(os.lstat(dest / "link").st_mode)
    assert mode_of(dest / "link") == 0o750
    assert (dest / "link" / "secret").read_bytes() == b"mine"


def test_file_named_like_an_escaping_symlink_replaces_it(tmp_path: Path, dest: Path, outside: Path) -> None:
    tb = TarBuilder().symlink("passwd", str(outside / "secret")).file("passwd", b"root::0:0::/:/bin/sh\n")
    with outside_untouched(tmp_path, dest):
        run(dest, tb)
    assert not os.path.islink(dest / "passwd")
    assert (dest / "passwd").read_bytes() == b"root::0:0::/:/bin/sh\n"


@pytest.mark.parametrize("make", ["fifo", "chardev", "symlink", "hardlink"])
def test_other_entries_named_like_an_escaping_symlink_replace_it(
    tmp_path: Path, dest: Path, outside: Path, make: str
) -> None:
    tb = TarBuilder().file("plain", b"p").symlink("x", str(outside / "secret"))
    if make == "fifo":
        tb.fifo("x")
    elif make == "chardev":
        tb.chardev("x", 1, 3)
    elif make == "symlink":
        tb.symlink("x", "plain")
    else:
        tb.hardlink("x", "plain")
    with outside_untouched(tmp_path, dest):
        run(dest, tb)
    if make == "symlink":
        assert os.readlink(dest / "x") == "plain"
    else:
        assert not os.path.islink(dest / "x")


def test_symlink_replaced_directory_stays_guarded(tmp_path: Path, dest: Path, outside: Path) -> None:
    # A real directory, then a symlink of the same name: later writes under it must not follow.
    tb = TarBuilder().dir("d").file("d/f", b"1").symlink("d", str(outside)).file("d/secret", b"pwned")
    refused(tmp_path, dest, tb, "through the symlink `d`")


@pytest.mark.parametrize(
    ("name", "needle"),
    [("../.wh.x", "`..`"), (".wh..", "names no file"), (".wh...", "names no file"), ("d/.wh.", "names no file")],
)
def test_escaping_whiteouts_are_refused(tmp_path: Path, dest: Path, outside: Path, name: str, needle: str) -> None:
    refused(tmp_path, dest, TarBuilder().raw(raw_info(name), b""), needle)


def test_whiteout_through_a_symlink_is_refused(tmp_path: Path, dest: Path, outside: Path) -> None:
    tb = TarBuilder().symlink("link", str(outside)).whiteout("link/secret")
    refused(tmp_path, dest, tb, "through the symlink `link`")
    tb = TarBuilder().symlink("link", str(outside)).opaque("link")
    refused(tmp_path, dest, tb, "through the symlink `link`")


def test_whiteout_of_an_escaping_symlink_removes_only_the_link(tmp_path: Path, dest: Path, outside: Path) -> None:
    tb = TarBuilder().symlink("dirlink", str(outside)).whiteout("dirlink")
    with outside_untouched(tmp_path, dest):
        run(dest, tb)
    assert stat.S_ISCHR(os.lstat(dest / "dirlink").st_mode)


def test_whiteout_of_a_directory_holding_escaping_symlinks_removes_only_the_links(
    tmp_path: Path, dest: Path, outside: Path
) -> None:
    tb = TarBuilder().dir("d").symlink("d/out", str(outside)).symlink("d/file", str(outside / "secret")).whiteout("d")
    with outside_untouched(tmp_path, dest):
        run(dest, tb)
    assert stat.S_ISCHR(os.lstat(dest / "d").st_mode)


def test_refusal_happens_before_anything_outside_is_created(tmp_path: Path, dest: Path, outside: Path) -> None:
    # A mixed archive: good entries first, the hostile one last. The good ones may be on disk (the caller
    # removes dest on failure), the bad one must not be, nor any parent it would have implied.
    tb = TarBuilder().file("ok", b"fine").symlink("link", str(outside)).file("link/new/dir/evil", b"pwned")
    refused(tmp_path, dest, tb, "through the symlink `link`")
    assert (dest / "ok").read_bytes() == b"fine"
    assert not (outside / "new").exists()


@pytest.mark.parametrize("target", [".", "./", ""])
def test_hardlink_to_the_layer_root_is_refused(tmp_path: Path, dest: Path, outside: Path, target: str) -> None:
    tb = TarBuilder().raw(raw_info("h", tarfile.LNKTYPE, linkname=target))
    refused(tmp_path, dest, tb, "points at the layer root")


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.REGTYPE, tarfile.FIFOTYPE])
def test_non_directory_root_entries_cannot_replace_the_layer_root(dest: Path, kind: bytes) -> None:
    run(
        dest,
        TarBuilder()
        .file("keep", b"k")
        .raw(raw_info("./", kind, linkname="keep"), b"" if kind == tarfile.REGTYPE else None),
    )
    assert stat.S_ISDIR(os.lstat(dest).st_mode)
    assert (dest / "keep").read_bytes() == b"k"


# -- hostile headers (issue 10): one error, in time proportional to the bytes ---------------------------------


def unpack_layer(dest: Path, case: Case) -> UnpackResult:
    data = gzip.decompress(case.layer) if case.gzipped and len(case.layer) < 1 << 16 else case.layer
    stream: IO[bytes] = io.BytesIO(data)
    if case.gzipped and data is case.layer:
        # The 1 GiB header is not decompressed up front: the unpack reads it as a stream, as create does.
        stream = io.BufferedReader(gzip.GzipFile(fileobj=io.BytesIO(data)), 1 << 20)
    return unpack(stream, str(dest), UnpackOptions())


@pytest.mark.parametrize("name", sorted(crash_cases()))
def test_malformed_headers_are_the_layers_error_not_a_crash(tmp_path: Path, dest: Path, name: str) -> None:
    case = crash_cases()[name]
    with outside_untouched(tmp_path, dest), pytest.raises(InvalidImage) as err:
        unpack_layer(dest, case)
    assert case.error in str(err.value)
    assert str(err.value).startswith("invalid layer tar: ")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", sorted(blowup_cases()))
def test_claimed_sizes_cost_nothing_beyond_the_bytes_there(dest: Path, name: str) -> None:
    # Before: 2**40 took 14 s (2**60 months), skipping 64 KiB at a time past the end; the 1 GiB PAX header
    # was read whole (2.1 GB of memory). Now both end at the first header that claims too much.
    case = blowup_cases()[name]
    start = time.monotonic()
    with pytest.raises(InvalidImage, match=re.escape(case.error)):
        unpack_layer(dest, case)
    assert time.monotonic() - start < 2


def test_headers_up_to_the_cap_are_read(dest: Path) -> None:
    records = [(b"comment", b"c" * ((1 << 20) - 400)), (b"path", b"d/" + b"n" * 200), (b"SCHILY.xattr.user.k", b"v")]
    assert len(pax_records(records)) <= 1 << 20
    run(dest, pax(records) + member(b"ignored", b"y") + END)
    assert (dest / "d" / ("n" * 200)).read_bytes() == b"y"
    assert os.getxattr(dest / "d" / ("n" * 200), "user.k") == b"v"


def test_a_header_over_the_cap_is_refused_before_it_is_read(dest: Path) -> None:
    layer = header(b"L", typeflag=b"L", size=(1 << 20) + 1) + END
    with pytest.raises(InvalidImage, match="GNU long name header of 1048577 bytes"):
        run(dest, layer)


def test_a_sparse_hole_costs_nothing(dest: Path) -> None:
    # Before: a 100 GiB hole took 71 s (tarfile hands it over as zero bytes, which were counted and seeked).
    start = time.monotonic()
    result = run(dest, sparse_hole_layer(100 << 30))
    assert time.monotonic() - start < 2
    st = os.lstat(dest / "sparse")
    assert st.st_size == (100 << 30) + 4
    assert st.st_blocks * 512 <= 1 << 20
    with open(dest / "sparse", "rb") as f:
        f.seek(100 << 30)
        assert f.read() == b"tail"
    assert result.bytes_written == (100 << 30) + 4


def test_forgetting_a_replaced_name_does_not_scan_everything_else(dest: Path) -> None:
    # Before: every replacement scanned every directory and symlink remembered so far, so a layer replacing
    # one name 8,000 times next to 8,000 directories took 35 s. Timed on the bookkeeping alone: with system
    # calls in the loop, the machine's noise was as large as the difference at test sizes.
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        u = _Unpacker(fd, str(dest), UnpackOptions())
        for i in range(50_000):
            u._dirs.add(f"d{i}")
            u._dir_meta[f"d{i}"] = (0o755, 0)
            u._track(f"d{i}")
        start = time.monotonic()
        for _ in range(20_000):
            u._forget("f")  # a file replaced again and again: 10^9 steps before, 20,000 now
        assert time.monotonic() - start < 1
        assert len(u._dirs) == 50_001
        # A directory still takes everything below it along.
        for path in ("d7/a", "d7/a/b"):
            u._dirs.add(path)
            u._track(path)
        u._symlinks.add("d7/a/b/link")
        u._track("d7/a/b/link")
        u._forget("d7")
        assert not {"d7", "d7/a", "d7/a/b"} & u._dirs
        assert not u._symlinks
        assert "d7" not in u._dir_meta
        assert len(u._dirs) == 50_000
    finally:
        os.close(fd)


def test_base256_numbers_and_the_ustar_prefix(dest: Path) -> None:
    run(dest, member(b"file", b"x", prefix=b"some/dir", uid=1 << 22, gid=(1 << 32) - 2, mtime=1 << 33) + END)
    st = os.lstat(dest / "some" / "dir" / "file")
    assert (st.st_uid, st.st_gid, st.st_mtime_ns) == (1 << 22, (1 << 32) - 2, (1 << 33) * NS)


def test_gnu_long_names_and_links(dest: Path) -> None:
    name, target = "n" * 150, "t" * 120
    tb = TarBuilder().file(target, b"t")
    tb.raw(raw_info(name, tarfile.LNKTYPE, linkname=target))
    data = tb.build()
    # Rewritten in the GNU format, which spells long names as 'L' and 'K' pseudo-members.
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = list(tf)
    gnu = io.BytesIO()
    with tarfile.open(fileobj=gnu, mode="w", format=tarfile.GNU_FORMAT) as tf:
        tf.addfile(members[0], io.BytesIO(b"t"))
        tf.addfile(members[1])
    assert b"././@LongLink" in gnu.getvalue()
    run(dest, gnu.getvalue())
    assert os.lstat(dest / name).st_ino == os.lstat(dest / target).st_ino


@pytest.mark.parametrize(
    ("records", "data", "content"),
    [
        ([(b"GNU.sparse.map", b"0,2,8,2"), (b"GNU.sparse.size", b"12")], b"abcd", b"ab\0\0\0\0\0\0cd\0\0"),
        (
            [(b"GNU.sparse.offset", b"3"), (b"GNU.sparse.numbytes", b"1"), (b"GNU.sparse.size", b"5")],
            b"z",
            b"\0\0\0z\0",
        ),
    ],
)
def test_pax_sparse_0x_formats(dest: Path, records: list[tuple[bytes, bytes]], data: bytes, content: bytes) -> None:
    run(dest, pax([*records, (b"GNU.sparse.name", b"s")]) + member(b"GNUSparseFile.0/s", data) + END)
    assert (dest / "s").read_bytes() == content


def test_sparse_data_must_match_the_map(dest: Path) -> None:
    with pytest.raises(InvalidImage, match="map does not match its data"):
        run(dest, pax([(b"GNU.sparse.map", b"0,5"), (b"GNU.sparse.size", b"9")]) + member(b"s", b"ab") + END)


@pytest.mark.parametrize(
    ("layer", "needle"),
    [
        (b"x" * 512, "bad checksum"),
        (member(b"f", b"x") + header(b"g", checksum=1) + END, "bad checksum"),
        (member(b"f", size=b"12x"), "not a number"),
        (pax([(b"size", b"-1")]) + member(b"f") + END, "negative PAX size"),
        (header(b"PaxHeaders/f", typeflag=b"x", size=6) + padded(b"9 a=b\n") + member() + END, "PAX record"),
        (pax([(b"mtime", b"1.x")]) + member() + END, "PAX mtime"),
        (member(b"f", b"x")[:700], "unexpected end of data"),
        (pax([(b"path", b"p")]), "unexpected end of data"),
    ],
)
def test_malformed_archives_are_invalid_tar(dest: Path, layer: bytes, needle: str) -> None:
    with pytest.raises(InvalidImage, match="invalid layer tar: .*" + re.escape(needle)):
        run(dest, layer)


def test_an_archive_without_an_end_marker_ends_at_the_last_member(dest: Path) -> None:
    run(dest, member(b"f", b"x"))
    assert (dest / "f").read_bytes() == b"x"


def test_names_longer_than_path_max_are_refused_by_name(dest: Path) -> None:
    with pytest.raises(InvalidImage, match=r"file name too long \(Linux allows 4095 bytes\)"):
        run(dest, pax([(b"path", b"a/" * 2100 + b"f")]) + member() + END)


def test_pax_fractional_and_negative_mtimes(dest: Path) -> None:
    run(dest, pax([(b"mtime", b"-1.25")]) + member(b"f") + END)
    assert os.lstat(dest / "f").st_mtime_ns == -1_250_000_000


@pytest.mark.parametrize("mtime", [2**63 - 1, -(2**63)])
def test_extreme_header_mtimes_are_taken(dest: Path, mtime: int) -> None:
    run(dest, member(b"f", mtime=mtime) + member(b"d", typeflag=b"5", mtime=mtime) + END)  # the kernel clamps


def test_a_pax_mtime_below_64_bit_seconds_is_invalid(dest: Path) -> None:
    with pytest.raises(InvalidImage, match=r"PAX mtime .* is out of range"):
        run(dest, pax([(b"mtime", str(-(2**63)).encode() + b".5")]) + member(b"f") + END)


def test_global_pax_headers_are_ignored(dest: Path) -> None:
    run(dest, pax([(b"uid", b"1234"), (b"comment", b"x")], typeflag=b"g") + member(b"f") + END)
    assert os.lstat(dest / "f").st_uid == 0


# -- what a failed system call says (issue 10, item 9) ----------------------------------------------------------


def test_a_failed_system_call_names_the_entry_and_the_operation(dest: Path) -> None:
    layer = pax([(b"SCHILY.xattr.bogus.name", b"v")]) + member(b"./usr/bin/tool", b"x") + END
    with pytest.raises(KernelError) as err:
        run(dest, layer)
    assert str(err.value) == "`usr/bin/tool`: setting xattr bogus.name: operation not supported"
    assert err.value.errno == errno.EOPNOTSUPP


CHILD = """
import io, sys
from graftfs.errors import KernelError
from graftfs.layers.unpack import unpack
try:
    unpack(io.BytesIO(sys.stdin.buffer.read()), sys.argv[1])
except KernelError as exc:
    print(exc)
"""


def unpack_without(cap: str, dest: Path, layer: bytes) -> str:
    """Unpack in a child that lost ``cap`` (bounding set, so the root child's exec does not regain it)."""
    argv = ["setpriv", "--inh-caps=-all", f"--bounding-set=-{cap}", sys.executable, "-c", CHILD, str(dest)]
    out = subprocess.run(argv, input=layer, capture_output=True, check=True, timeout=60)
    return out.stdout.decode().strip()


needs_setpriv = pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs util-linux setpriv")


@needs_setpriv
def test_eperm_on_a_file_capability_names_cap_setfcap(dest: Path) -> None:
    layer = TarBuilder().file("usr/bin/ping", b"x", mode=0o755, xattrs={"security.capability": CAP_BLOB}).build()
    assert unpack_without("setfcap", dest, layer) == (
        "`usr/bin/ping`: setting xattr security.capability: operation not permitted "
        "(needs CAP_SETFCAP, which this process does not have)"
    )


@needs_setpriv
def test_eperm_on_a_device_node_names_cap_mknod(dest: Path) -> None:
    layer = TarBuilder().chardev("dev/null", 1, 3).build()
    assert unpack_without("mknod", dest, layer) == (
        "`dev/null`: creating device node 1:3: operation not permitted "
        "(needs CAP_MKNOD, which this process does not have)"
    )


@needs_setpriv
def test_eperm_on_chown_names_cap_chown(dest: Path) -> None:
    layer = TarBuilder().file("home/user/file", b"x", uid=1000, gid=1000).build()
    assert unpack_without("chown", dest, layer) == (
        "`home/user/file`: changing owner to 1000:1000: operation not permitted "
        "(needs CAP_CHOWN, which this process does not have)"
    )


def test_eperm_with_the_capability_present_names_none() -> None:
    exc = PermissionError(errno.EPERM, "Operation not permitted")
    assert str(failure("f", "changing owner to 1:1", exc)) == "`f`: changing owner to 1:1: operation not permitted"


def test_an_empty_pax_value_leaves_the_header_field(dest: Path) -> None:
    run(dest, pax([(b"path", b""), (b"uid", b""), (b"mtime", b"")]) + member(b"f", b"x", uid=7) + END)
    st = os.lstat(dest / "f")
    assert (st.st_uid, st.st_mtime_ns) == (7, DEFAULT_MTIME * NS)

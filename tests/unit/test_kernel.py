"""graftfs.mount.kernel: the mountinfo parser."""

from __future__ import annotations

from pathlib import Path

import pytest

from graftfs.mount import kernel

# Two mounts as the kernel writes them: optional fields, then "-", then type, source and superblock options.
MOUNTINFO = (
    "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "35 22 0:30 / /proc rw,nosuid,nodev,noexec,relatime shared:13 master:2 - proc proc rw\n"
)


def test_mountinfo_fields() -> None:
    root, proc = kernel.parse_mountinfo(MOUNTINFO)
    assert (root.root, root.point, root.options, root.fstype, root.source, root.super_options) == (
        "/",
        "/",
        "rw,relatime",
        "ext4",
        "/dev/sda1",
        "rw",
    )
    assert (proc.point, proc.fstype, proc.super_options) == ("/proc", "proc", "rw")


def test_mountinfo_unescapes_paths() -> None:
    """The kernel writes space, tab, newline and backslash in paths as three octal digits."""
    line = (
        r"40 22 0:40 /sub\040dir /mnt/a\040b\011c\012d\134e rw - overlay my\040source "
        r"rw,lowerdir=/x\054y,upperdir=/u" + "\n"
    )
    [m] = kernel.parse_mountinfo(line)
    assert m.point == "/mnt/a b\tc\nd\\e"
    assert m.root == "/sub dir"
    assert m.source == "my source"
    # Options stay as written, so that an option's own (escaped) commas do not split it.
    assert m.super_options == r"rw,lowerdir=/x\054y,upperdir=/u"


def test_mountinfo_keeps_what_is_not_an_escape() -> None:
    [m] = kernel.parse_mountinfo("1 0 0:1 / /a\\9b\\12\\ rw - tmpfs tmpfs rw\n")
    assert m.point == "/a\\9b\\12\\"


def test_mountinfo_lines_split_only_on_newlines() -> None:
    """Characters str.splitlines() splits on but the kernel leaves as they are stay in the path."""
    text = "1 0 0:1 / /a\x1cb\x85c\u2028d rw - tmpfs tmpfs rw\n2 0 0:2 / /e rw - tmpfs tmpfs rw"
    assert [m.point for m in kernel.parse_mountinfo(text)] == ["/a\x1cb\x85c\u2028d", "/e"]


@pytest.mark.parametrize(
    "bad",
    ["", "\n\n", "garbage", "1 0 0:1 / /a rw tmpfs tmpfs rw", "1 0 0:1 / /a rw - tmpfs", "- - - - - - -"],
)
def test_mountinfo_skips_what_it_cannot_read(bad: str) -> None:
    assert [m.point for m in kernel.parse_mountinfo(bad + "\n" + MOUNTINFO)] == ["/", "/proc"]


def test_mount_queries_read_one_parser(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    base = str(tmp_path.resolve())
    text = "".join(
        f"{n} 1 0:{n} / {point} rw - {fstype} src rw{extra}\n"
        for n, (point, fstype, extra) in enumerate(
            [
                ("/", "ext4", ""),
                (base.replace(" ", "\\040") + "/s\\040t", "xfs", ",prjquota"),
                (base.replace(" ", "\\040") + "/s\\040t/images/x/rootfs", "overlay", ""),
                (base.replace(" ", "\\040") + "/s\\040t", "tmpfs", ""),  # mounted over the first
                (base.replace(" ", "\\040") + "/s\\040tore", "tmpfs", ""),  # a sibling, not below
            ],
            start=10,
        )
    )
    path = tmp_path / "mountinfo"
    path.write_text(text)
    real = kernel.mountinfo
    monkeypatch.setattr(kernel, "mountinfo", lambda: real(str(path)))
    store = f"{base}/s t"
    assert kernel.mount_entries(store) == [
        (f"{store}/images/x/rootfs", "overlay"),
        (store, "xfs"),
        (store, "tmpfs"),
    ]
    assert kernel.mounts_under(store) == [f"{store}/images/x/rootfs", store, store]
    assert kernel.mount_of(f"{store}/images") == (store, "tmpfs", "rw")  # the top of the two
    assert kernel.mount_of(f"{base}/elsewhere") == ("/", "ext4", "rw")


def test_mount_of_finds_the_longest_mount() -> None:
    point, fstype, options = kernel.mount_of("/proc/self")
    assert (point, fstype) == ("/proc", "proc") and options
    assert kernel.mount_of("/")[0] == "/"

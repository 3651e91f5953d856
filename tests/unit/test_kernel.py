"""graftfs.mount.kernel's pure parts: the mountinfo parser, and how run() names a tool and describes its failure."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from graftfs import userns
from graftfs.errors import KernelError
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


def test_mountinfo_naming_a_path_parses_only_its_lines(tmp_path: Path) -> None:
    """The filter matches the path as the kernel writes it (escaped), anywhere in a line."""
    path = tmp_path / "mountinfo"
    path.write_text(
        "1 0 0:1 / / rw - ext4 /dev/a rw\n"
        r"2 1 0:2 / /s\040t/images/x/rootfs rw - overlay overlay rw,upperdir=/s\040t/images/x/diff" + "\n"
        "3 1 0:3 / /other rw - tmpfs tmpfs rw\n"
    )
    assert [m.point for m in kernel.mountinfo(str(path), naming="/s t")] == ["/s t/images/x/rootfs"]
    assert [m.point for m in kernel.mountinfo(str(path))] == ["/", "/s t/images/x/rootfs", "/other"]
    for odd in ("/a b", "/a\tb\nc\\d", "/plain"):
        assert kernel._unescape(kernel._escape(odd)) == odd


def test_mountinfo_file_keeps_carriage_returns_and_undecodable_bytes(tmp_path: Path) -> None:
    """The kernel escapes only space, tab, newline and backslash: a \\r or a byte that is not UTF-8 is part of
    the path, as os.fsdecode names it."""
    path = tmp_path / "mountinfo"
    path.write_bytes(b"1 0 0:1 / /a\rb\xff rw - tmpfs tmpfs rw\n2 0 0:2 / /e rw - tmpfs tmpfs rw\n")
    odd = os.fsdecode(b"/a\rb\xff")
    assert [m.point for m in kernel.mountinfo(str(path))] == [odd, "/e"]
    assert [m.point for m in kernel.mountinfo(str(path), naming=odd)] == [odd]


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
    monkeypatch.setattr(kernel, "mountinfo", lambda naming="": real(str(path), naming))
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


# -- run() -----------------------------------------------------------------------------------------------------


@pytest.fixture
def tools() -> Iterator[dict[str, str]]:
    saved = dict(kernel.tools)
    yield kernel.tools
    kernel.tools.clear()
    kernel.tools.update(saved)


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def test_run_returns_stdout_and_runs_the_configured_binary(tmp_path: Path, tools: dict[str, str]) -> None:
    tools["mkfs.xfs"] = script(tmp_path, "my-mkfs", 'echo "made $*"')
    assert kernel.run("mkfs.xfs", "-q", "/x") == "made -q /x\n"
    assert kernel.which("mkfs.xfs") == tools["mkfs.xfs"]
    tools["mkfs.xfs"] = str(tmp_path / "absent")
    assert kernel.which("mkfs.xfs") is None
    assert kernel.which("sh") is not None and kernel.which("no-such-tool-anywhere") is None


def test_run_describes_a_failure_in_one_line(tmp_path: Path, tools: dict[str, str]) -> None:
    tools["xfs_quota"] = fake = script(
        tmp_path, "xfs_quota", 'echo "ignored" ; echo "first line" >&2; printf "  last   line  \\n\\n" >&2; exit 3'
    )
    with pytest.raises(KernelError) as raised:
        kernel.run("xfs_quota", "-x", "-c", "limit -p bhard=1k 7", "/mnt/my store")
    assert raised.value.message == f"{fake} -x -c 'limit -p bhard=1k 7' '/mnt/my store': exit status 3: last line"
    assert raised.value.errno == 0


def test_run_failure_without_stderr_names_stdout_or_nothing(tmp_path: Path, tools: dict[str, str]) -> None:
    tools["btrfs"] = fake = script(tmp_path, "btrfs", 'echo "ERROR: on stdout"; exit 1')
    with pytest.raises(KernelError, match=rf"^{fake} qgroup: exit status 1: ERROR: on stdout$"):
        kernel.run("btrfs", "qgroup")
    tools["btrfs"] = fake = script(tmp_path, "silent", "exit 2")
    with pytest.raises(KernelError, match=rf"^{fake}: exit status 2$"):
        kernel.run("btrfs")
    tools["btrfs"] = fake = script(tmp_path, "killed", "kill -9 $$")
    with pytest.raises(KernelError, match=rf"^{fake} x: killed by signal 9$"):
        kernel.run("btrfs", "x")


def test_run_failure_of_a_missing_tool_names_the_binary(tmp_path: Path, tools: dict[str, str]) -> None:
    tools["newuidmap"] = missing = str(tmp_path / "no-such-newuidmap")
    with pytest.raises(KernelError) as raised:
        kernel.run("newuidmap", "1", "0", "1000", "1")
    assert raised.value.message == f"{missing}: no such file or directory"


def test_run_times_out_and_shortens_long_arguments(tmp_path: Path, tools: dict[str, str]) -> None:
    tools["fuse-overlayfs"] = fake = script(tmp_path, "fuse", "sleep 10")
    long = "lowerdir=" + "l/abcdefabcdef:" * 20
    with pytest.raises(KernelError) as raised:
        kernel.run("fuse-overlayfs", "-o", long, "/t", timeout=0.2)
    assert raised.value.message == f"{fake} -o {long[:117]}... /t: timed out after 0.2s"


def test_importing_it_loads_nothing_heavy() -> None:
    heavy = ("subprocess", "ctypes", "_ctypes", "struct", "shutil")
    code = f"import sys, graftfs.mount.kernel\nprint(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-I", "-c", code], check=True, capture_output=True, text=True).stdout
    assert out == "[]\n"


# -- userns.fork_userns() ---------------------------------------------------------------------------------------------

needs_userns = pytest.mark.skipif(
    not os.path.exists("/proc/self/ns/user") or os.geteuid() != 0, reason="needs root and user namespaces"
)


@needs_userns
def test_fork_userns_maps_a_namespace_and_hands_its_fd() -> None:
    fd = userns.fork_userns("0 100000 10\n", "0 200000 10\n")
    try:
        # The namespace outlives the helper that made it; its maps are readable through a process in it.
        assert os.readlink(f"/proc/self/fd/{fd}").startswith("user:[")
        assert os.readlink(f"/proc/self/fd/{fd}") != os.readlink("/proc/self/ns/user")
    finally:
        os.close(fd)


@needs_userns
def test_fork_userns_reports_both_helpers_failures(tmp_path: Path, tools: dict[str, str]) -> None:
    tools["newuidmap"] = uid = script(
        tmp_path, "uid", 'echo "newuidmap: uid range [0-1) -> [5-6) not allowed" >&2; exit 1'
    )
    tools["newgidmap"] = gid = script(tmp_path, "gid", "exit 1")
    with pytest.raises(KernelError) as raised:
        userns.fork_userns("0 5 1\n", "0 5 1\n", helpers=True)
    pid = raised.value.message.split()[1]
    assert raised.value.message == (
        f"{uid} {pid} 0 5 1: exit status 1: newuidmap: uid range [0-1) -> [5-6) not allowed; "
        f"{gid} {pid} 0 5 1: exit status 1"
    )


@needs_userns
def test_fork_userns_entering_reports_the_mapping_childs_failure(tmp_path: Path) -> None:
    """With ``enter``, this process unshares and the forked child maps it; run in a process of its own."""
    fail = script(tmp_path, "fail", 'echo "nope: $*" >&2; exit 1')
    code = (
        "import os, graftfs.mount.kernel as k, graftfs.userns as u\n"
        f"k.tools.update(newuidmap={fail!r}, newgidmap={fail!r})\n"
        "before = os.readlink('/proc/self/ns/user')\n"
        "try:\n"
        "    u.fork_userns('0 5 1\\n', '0 6 1\\n', enter=True, helpers=True)\n"
        "except k.KernelError as e:\n"
        "    print(os.getpid(), e.errno, e.message)\n"
        "print(os.readlink('/proc/self/ns/user') != before)\n"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code], check=True, capture_output=True, text=True).stdout
    pid, errno, message = out.splitlines()[0].split(" ", 2)
    assert errno == "0"
    assert message == (
        f"{fail} {pid} 0 5 1: exit status 1: nope: {pid} 0 5 1; {fail} {pid} 0 6 1: exit status 1: nope: {pid} 0 6 1"
    )
    assert out.splitlines()[1] == "True"  # it did unshare

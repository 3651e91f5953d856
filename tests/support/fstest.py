"""A small filesystem test kit, after containerd's continuity ``fs/fstest``: appliers that make changes to a
directory tree, composable with :func:`apply`, and :func:`check_directory_equal`, which compares two trees.

An applier is a callable taking the root it applies to. Paths given to appliers are relative to that root
whatever they start with (``"/a/b"`` and ``"a/b"`` name the same entry), as ``filepath.Join`` does in Go.

The comparison looks at what a layer must preserve: each entry's type, permission bits (with setuid, setgid
and sticky), owner and group; a regular file's size, content and the set of its hard links within the tree;
a symlink's target; a device's numbers; and, when asked, extended attributes. The root itself and directory
sizes and times are not compared.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

Applier = Callable[[str], None]


def _join(root: str, name: str) -> str:
    """``name`` under ``root``; a leading ``/`` on ``name`` does not escape it."""
    return os.path.join(root, name.lstrip("/"))


def apply(*appliers: Applier) -> Applier:
    """One applier running ``appliers`` in order (stopping at the first that raises)."""

    def run(root: str) -> None:
        for applier in appliers:
            applier(root)

    return run


def create_file(name: str, content: bytes, mode: int) -> Applier:
    """Write ``content`` to ``name`` (created, or truncated if it exists), then give it exactly ``mode``."""

    def run(root: str) -> None:
        path = _join(root, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.chmod(path, mode)  # the umask, or an existing file's mode, does not decide

    return run


def create_dir(name: str, mode: int) -> Applier:
    """Make ``name`` and any missing parents (as ``mkdir -p``), then give ``name`` exactly ``mode``."""

    def run(root: str) -> None:
        path = _join(root, name)
        os.makedirs(path, mode=mode, exist_ok=True)
        os.chmod(path, mode)

    return run


def remove(name: str) -> Applier:
    """Remove the file, symlink or empty directory ``name``; missing is an error."""

    def run(root: str) -> None:
        path = _join(root, name)
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)
        else:
            os.unlink(path)

    return run


def remove_all(name: str) -> Applier:
    """Remove ``name`` and everything under it; missing is not an error (as Go's ``os.RemoveAll``)."""

    def run(root: str) -> None:
        path = _join(root, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)

    return run


def rename(old: str, new: str) -> Applier:
    """Rename ``old`` to ``new`` (replacing a file at ``new``, as rename(2) does)."""

    def run(root: str) -> None:
        os.rename(_join(root, old), _join(root, new))

    return run


def chown(name: str, uid: int, gid: int) -> Applier:
    """Change the owner and group of ``name`` (a symlink's target, as ``os.Chown``)."""

    def run(root: str) -> None:
        os.chown(_join(root, name), uid, gid)

    return run


def lchown(name: str, uid: int, gid: int) -> Applier:
    """Change the owner and group of ``name`` itself, even if it is a symlink."""

    def run(root: str) -> None:
        os.chown(_join(root, name), uid, gid, follow_symlinks=False)

    return run


def chmod(name: str, mode: int) -> Applier:
    """Give ``name`` exactly ``mode``."""

    def run(root: str) -> None:
        os.chmod(_join(root, name), mode)

    return run


def chtimes(name: str, atime_ns: int, mtime_ns: int) -> Applier:
    """Set the access and modification times of ``name`` (nanoseconds since the epoch)."""

    def run(root: str) -> None:
        os.utime(_join(root, name), ns=(atime_ns, mtime_ns))

    return run


def symlink(target: str, name: str) -> Applier:
    """Make ``name`` a symlink to ``target`` (``target`` is stored as given, not joined to the root)."""

    def run(root: str) -> None:
        os.symlink(target, _join(root, name))

    return run


def link(old: str, new: str) -> Applier:
    """Make ``new`` a hard link to ``old`` (both under the root)."""

    def run(root: str) -> None:
        os.link(_join(root, old), _join(root, new), follow_symlinks=False)

    return run


def set_xattr(name: str, attr: str, value: bytes) -> Applier:
    """Set the extended attribute ``attr`` of ``name`` itself (not a symlink's target)."""

    def run(root: str) -> None:
        os.setxattr(_join(root, name), attr, value, follow_symlinks=False)

    return run


def mkfifo(name: str, mode: int) -> Applier:
    """Make a named pipe ``name`` with exactly ``mode``."""

    def run(root: str) -> None:
        path = _join(root, name)
        os.mkfifo(path, mode)
        os.chmod(path, mode)

    return run


# -- comparison ------------------------------------------------------------------------------------------------


@dataclass
class Resource:
    """One entry of a tree: ``path`` is rooted at ``/``; a regular file's ``paths`` are all its names in the
    tree (its hard links), sorted, and ``path`` is the first of them."""

    path: str
    mode: int
    uid: int
    gid: int
    paths: list[str] = field(default_factory=list)
    size: int = 0
    digest: str = ""
    target: str = ""
    rdev: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)

    def describe(self) -> str:
        kind = stat.filemode(self.mode)
        text = f"{self.path} ({kind} {self.mode & 0o7777:04o} {self.uid}:{self.gid}"
        if stat.S_ISREG(self.mode):
            text += f" size {self.size} sha256 {self.digest[:12]}"
            if len(self.paths) > 1:
                text += f" links {self.paths}"
        elif stat.S_ISLNK(self.mode):
            text += f" -> {self.target!r}"
        elif stat.S_ISCHR(self.mode) or stat.S_ISBLK(self.mode):
            text += f" dev {os.major(self.rdev)}:{os.minor(self.rdev)}"
        if self.xattrs:
            text += f" xattrs {sorted(self.xattrs)}"
        return text + ")"

    def same(self, other: Resource) -> bool:
        if (self.mode, self.uid, self.gid, self.xattrs) != (other.mode, other.uid, other.gid, other.xattrs):
            return False
        if stat.S_ISREG(self.mode):
            return (self.size, self.digest, self.paths) == (other.size, other.digest, other.paths)
        if stat.S_ISLNK(self.mode):
            return self.target == other.target
        if stat.S_ISCHR(self.mode) or stat.S_ISBLK(self.mode):
            return self.rdev == other.rdev
        return True


#: Extended attributes a comparison never looks at: overlayfs keeps its own (whiteouts, opaque directories,
#: redirects, origins) under these names, and they are not part of what a layer shows.
IGNORED_XATTR_PREFIXES: tuple[str, ...] = ("trusted.overlay.", "user.overlay.")


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out: dict[str, bytes] = {}
    for name in names:
        if name.startswith(IGNORED_XATTR_PREFIXES):
            continue
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return out


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _walk(root: str) -> Iterator[tuple[str, str]]:
    """``(full path, path rooted at /)`` of every entry under ``root``, not following symlinks."""
    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise):
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(dirnames + filenames):
            rel = name if rel_dir == "." else os.path.join(rel_dir, name)
            yield os.path.join(dirpath, name), "/" + rel


def _raise(exc: OSError) -> None:
    raise exc


def resources(root: str, xattrs: bool = False) -> dict[str, Resource]:
    """Every entry under ``root`` (not ``root`` itself) by its ``/``-rooted path; hard links of one regular
    file or pipe are one resource, under the first of their sorted names."""
    by_inode: dict[tuple[int, int], Resource] = {}
    found: list[Resource] = []
    for full, rel in _walk(root):
        st = os.lstat(full)
        if (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)) and st.st_nlink > 1:
            seen = by_inode.get((st.st_dev, st.st_ino))
            if seen is not None:
                seen.paths.append(rel)
                continue
        res = Resource(path=rel, mode=st.st_mode, uid=st.st_uid, gid=st.st_gid, paths=[rel])
        if stat.S_ISREG(st.st_mode):
            res.size = st.st_size
            res.digest = _sha256(full)
        elif stat.S_ISLNK(st.st_mode):
            res.target = os.readlink(full)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            res.rdev = st.st_rdev
        if xattrs:
            res.xattrs = _xattrs(full)
        if (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)) and st.st_nlink > 1:
            by_inode[(st.st_dev, st.st_ino)] = res
        found.append(res)
    out: dict[str, Resource] = {}
    for res in found:
        res.paths.sort()
        res.path = res.paths[0]
        out[res.path] = res
    return out


def directory_diff(expected: str, actual: str, xattrs: bool = False) -> list[str]:
    """How ``actual`` differs from ``expected``, one line per entry: ``+ path`` (only in ``actual``),
    ``- path`` (only in ``expected``), ``~ expected -> actual``. Empty when they are equal."""
    a = resources(expected, xattrs)
    b = resources(actual, xattrs)
    lines = [f"+ {b[p].describe()}" for p in sorted(b.keys() - a.keys())]
    lines += [f"- {a[p].describe()}" for p in sorted(a.keys() - b.keys())]
    lines += [f"~ {a[p].describe()} -> {b[p].describe()}" for p in sorted(a.keys() & b.keys()) if not a[p].same(b[p])]
    return lines


class DirectoryDiffers(AssertionError):
    """Two trees that should be equal are not; the message lists every difference."""


def check_directory_equal(expected: str, actual: str, xattrs: bool = False) -> None:
    """Raise :class:`DirectoryDiffers` (an ``AssertionError``) unless the trees at ``expected`` and
    ``actual`` are the same (see the module's docstring for what is compared)."""
    lines = directory_diff(expected, actual, xattrs)
    if lines:
        raise DirectoryDiffers(f"directory diff between {expected} and {actual}:\n" + "\n".join(lines))


def check_directory_equal_with_applier(root: str, applier: Applier, xattrs: bool = False) -> None:
    """Check that ``root`` is what ``applier`` makes of an empty directory."""
    with tempfile.TemporaryDirectory(prefix="fstest-") as applied:
        applier(applied)
        check_directory_equal(applied, root, xattrs)

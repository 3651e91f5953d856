"""Unpack one layer tar into an empty volume directory, in the form overlayfs reads.

Confinement, without chroot and without a syscall per path component:

* the volume starts empty and only this process writes into it, so the only symlinks that can exist inside
  it are the ones this tar created. We remember them (``_symlinks``) and refuse any entry, or hard-link
  target, whose path passes through one. With no symlink on the way, the kernel's own path walk from the
  volume's directory fd cannot leave the volume;
* names are normalised first: absolute names and ``..`` components are refused outright (a layer has no
  business naming them, and refusing is clearer than the silent rewriting tar does);
* the final component is never followed: files are created ``O_EXCL|O_NOFOLLOW`` and an existing entry in
  the way (a duplicate name in the tar) is removed, never opened; hard links use ``linkat`` without
  ``AT_SYMLINK_FOLLOW``; ownership and times are set on the new object's fd or with ``AT_SYMLINK_NOFOLLOW``.

Whiteouts become overlayfs whiteouts (a 0:0 character device) and opaque markers become the
``trusted.overlay.opaque`` xattr; that is what the kernel's overlay reads from a lower layer.

Metadata order matters and is the same as containerd's: chown before chmod (chown clears set-id bits),
xattrs after chown (chown clears ``security.capability``), directory modes and times last and deepest first,
so writing children neither fails on a read-only directory nor bumps its parent's mtime.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from ..errors import InvalidImage, UnsafeArchive, Unsupported, os_reason

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_COPY_CHUNK = 1 << 20
# tarfile's stream mode keeps a buffer of this size and copies what is left of it on every read, headers
# included: with 1 MiB that copying took a quarter of a cold create. The stream below is buffered anyway.
_TAR_BUFFER = 64 << 10
_O_NEWFILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

IdMapper = Callable[[int], int]


def _identity(i: int) -> int:
    return i


@dataclass
class UnpackOptions:
    """How to write the layer. Defaults are those of a root caller on the host."""

    #: Chown to the archive's (mapped) owners. Off for an unprivileged caller, who owns everything.
    preserve_owner: bool = True
    #: Create device nodes. Off where mknod is refused (user namespaces); such entries are skipped.
    devices: bool = True
    #: Prefix of the overlay xattrs: "trusted" on the host, "user" for an overlay mounted with userxattr.
    xattr_namespace: str = "trusted"
    #: How deletions are written: "device" (overlayfs's 0:0 character devices and opaque xattrs), "file"
    #: (the layer's own ``.wh.`` files, kept as they are: fuse-overlayfs reads them, for stores where
    #: devices cannot be made, such as on an overlay), or "none" (a layer that deletes is refused by name
    #: rather than with an EPERM from deep inside the unpack).
    whiteouts: str = "device"
    uid_map: IdMapper = _identity
    gid_map: IdMapper = _identity
    #: Unpack the archive under this directory of the volume (the CF base-directory annotation).
    base_directory: str = ""
    #: Metadata for directories the archive does not describe but needs (missing parents, base directory):
    #: (mode, uid, gid) already mapped, keyed by their path in the volume.
    implied_dirs: dict[str, tuple[int, int, int]] = field(default_factory=dict)


@dataclass
class UnpackResult:
    bytes_written: int = 0  # sum of regular file sizes: GrootFS's volume "Size"
    entries: int = 0


def _normalise(name: str, what: str, entry: str) -> list[str]:
    if name.startswith("/"):
        raise UnsafeArchive(f"refusing {what} `{entry}`: absolute path names are not allowed in a layer")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"refusing {what} `{entry}`: `..` would point outside the layer")
    return parts


def _mtime_ns(member: tarfile.TarInfo) -> int:
    # PAX mtimes are fractional; keep nanoseconds rather than float-rounding them.
    raw = member.pax_headers.get("mtime")
    if raw:
        sec, _, frac = raw.partition(".")
        try:
            return int(sec) * 1_000_000_000 + int((frac + "000000000")[:9]) * (-1 if sec.startswith("-") else 1)
        except ValueError:
            pass
    return int(member.mtime) * 1_000_000_000


def _xattrs(member: tarfile.TarInfo) -> list[tuple[str, bytes]]:
    out = []
    for key, value in member.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            # tarfile decodes PAX values as UTF-8 with surrogateescape: this gives back the raw bytes.
            out.append((key[len("SCHILY.xattr.") :], value.encode("utf-8", "surrogateescape")))
    return out


class _Unpacker:
    def __init__(self, root_fd: int, root_path: str, opts: UnpackOptions) -> None:
        self.fd = root_fd
        self.root = root_path
        self.opts = opts
        self.result = UnpackResult()
        self._symlinks: set[str] = set()
        self._dirs: set[str] = {""}
        # path -> (mode, mtime_ns): applied at the end, deepest first.
        self._dir_meta: dict[str, tuple[int, int]] = {}
        # The base directory names a place inside the volume, and Garden passes it absolute (the
        # preloaded+layer `layer_path`, e.g. /home/vcap): strip the leading "/" rather than refuse it as we
        # refuse absolute member names, which made every such create fail. `..` is still refused.
        self._base = _normalise(opts.base_directory.lstrip("/"), "base directory", opts.base_directory)
        self._root_owner = (opts.uid_map(0), opts.gid_map(0))

    # -- path safety ---------------------------------------------------------------------------------------

    def _check_parents(self, parts: list[str], entry: str) -> None:
        if not self._symlinks:
            return
        prefix = ""
        for part in parts[:-1]:
            prefix = f"{prefix}/{part}" if prefix else part
            if prefix in self._symlinks:
                raise UnsafeArchive(f"refusing `{entry}`: it would be written through the symlink `{prefix}`")

    def _forget(self, path: str) -> None:
        """Drop what we know about ``path`` and everything below it (it was removed or replaced)."""
        below = path + "/"
        self._symlinks = {p for p in self._symlinks if p != path and not p.startswith(below)}
        self._dirs = {p for p in self._dirs if p != path and not p.startswith(below)}
        for p in [p for p in self._dir_meta if p == path or p.startswith(below)]:
            del self._dir_meta[p]

    def _remove(self, path: str) -> None:
        try:
            st = os.lstat(path, dir_fd=self.fd)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            # rmtree with dir_fd never follows symlinks out of the tree it removes.
            shutil.rmtree(path, dir_fd=self.fd)
        else:
            os.unlink(path, dir_fd=self.fd)
        self._forget(path)

    def _mkdir_parents(self, parts: list[str]) -> None:
        prefix = ""
        for part in parts[:-1]:
            prefix = f"{prefix}/{part}" if prefix else part
            if prefix in self._dirs:
                continue
            self._ensure_dir(prefix, implied=True)

    def _ensure_dir(self, path: str, implied: bool) -> None:
        try:
            os.mkdir(path, 0o700, dir_fd=self.fd)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path, dir_fd=self.fd).st_mode):
                self._remove(path)
                os.mkdir(path, 0o700, dir_fd=self.fd)
            elif implied:
                self._dirs.add(path)
                return
        self._dirs.add(path)
        if implied:
            mode, uid, gid = self.opts.implied_dirs.get(path, (0o755, *self._root_owner))
            self._chown(path, uid, gid)
            self._dir_meta.setdefault(path, (mode, -1))

    def _chown(self, path: str, uid: int, gid: int) -> None:
        if self.opts.preserve_owner:
            os.chown(path, uid, gid, dir_fd=self.fd, follow_symlinks=False)

    # -- entries -------------------------------------------------------------------------------------------

    def run(self, tar: tarfile.TarFile) -> UnpackResult:
        if self._base:
            self._mkdir_parents([*self._base, ""])
        for member in tar:
            self.result.entries += 1
            self._entry(tar, member)
        self._finish_dirs()
        return self.result

    def _entry(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = self._base + _normalise(m.name, "entry", m.name)
        if not parts or parts == self._base:
            if m.isdir():  # "./": the layer root (or base directory) itself
                self._dir(m, "/".join(parts) if parts else ".")
            return
        self._check_parents(parts, m.name)
        name = parts[-1]
        if name.startswith(WHITEOUT_PREFIX):
            self._whiteout(parts, name, m.name)
            return
        self._mkdir_parents(parts)
        path = "/".join(parts)
        uid, gid = self.opts.uid_map(m.uid), self.opts.gid_map(m.gid)
        if m.isreg():
            self._file(tar, m, path, uid, gid)
        elif m.isdir():
            self._dir(m, path)
        elif m.issym():
            self._remove_if_present(path)
            os.symlink(m.linkname, path, dir_fd=self.fd)
            self._symlinks.add(path)
            self._chown(path, uid, gid)
            self._times(path, m, follow=False)
        elif m.islnk():
            self._hardlink(m, path)
        elif m.isfifo() or m.ischr() or m.isblk():
            self._node(m, path, uid, gid)
        # Other types (GNU volume headers, contiguous files...) carry nothing overlayfs could show.

    def _remove_if_present(self, path: str) -> None:
        try:
            os.lstat(path, dir_fd=self.fd)
        except FileNotFoundError:
            return
        self._remove(path)

    def _file(self, tar: tarfile.TarFile, m: tarfile.TarInfo, path: str, uid: int, gid: int) -> None:
        try:
            fd = os.open(path, _O_NEWFILE, 0o600, dir_fd=self.fd)
        except FileExistsError:
            self._remove(path)
            fd = os.open(path, _O_NEWFILE, 0o600, dir_fd=self.fd)
        try:
            src = tar.extractfile(m)
            if src is not None:
                self._copy(src, fd, m.size, sparse=m.issparse())
            if self.opts.preserve_owner:
                os.fchown(fd, uid, gid)
            os.fchmod(fd, m.mode & 0o7777)
            for key, value in _xattrs(m):
                os.setxattr(fd, key, value)
            ns = _mtime_ns(m)
            os.utime(fd, ns=(ns, ns))
        finally:
            os.close(fd)
        self.result.bytes_written += m.size

    @staticmethod
    def _copy(src: IO[bytes], fd: int, size: int, sparse: bool) -> None:
        buf = bytearray(min(_COPY_CHUNK, max(size, 1)))
        view = memoryview(buf)
        while True:
            n = src.readinto(view)  # type: ignore[attr-defined]
            if not n:
                break
            chunk = view[:n]
            # Sparse members: seek over zero runs instead of writing them, so holes stay holes.
            if sparse and buf.count(0, 0, n) == n:
                os.lseek(fd, n, os.SEEK_CUR)
                continue
            while chunk:
                written = os.write(fd, chunk)
                chunk = chunk[written:]
        if sparse:
            os.ftruncate(fd, size)

    def _dir(self, m: tarfile.TarInfo, path: str) -> None:
        if path != ".":
            self._ensure_dir(path, implied=False)
        self._chown(path, self.opts.uid_map(m.uid), self.opts.gid_map(m.gid))
        if m.pax_headers:
            xattrs = _xattrs(m)
            if xattrs:
                dfd = os.open(path, _O_DIR, dir_fd=self.fd)
                try:
                    for key, value in xattrs:
                        os.setxattr(dfd, key, value)
                finally:
                    os.close(dfd)
        self._dir_meta[path] = (m.mode & 0o7777, _mtime_ns(m))

    def _hardlink(self, m: tarfile.TarInfo, path: str) -> None:
        target_parts = self._base + _normalise(m.linkname, "hard link target", m.linkname)
        if not target_parts:
            raise UnsafeArchive(f"refusing hard link `{m.name}`: it points at the layer root")
        self._check_parents(target_parts, m.name)
        target = "/".join(target_parts)
        try:
            st = os.lstat(target, dir_fd=self.fd)
        except FileNotFoundError:
            raise InvalidImage(f"hard link `{m.name}` points at `{m.linkname}`, which is not in the layer") from None
        if target == path:
            return
        if stat.S_ISDIR(st.st_mode):
            # linkat() would fail with a bare EPERM (reported as a kernel error); it is the archive that is wrong.
            raise InvalidImage(f"hard link `{m.name}` points at `{m.linkname}`, which is a directory")
        self._remove_if_present(path)
        os.link(target, path, src_dir_fd=self.fd, dst_dir_fd=self.fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            self._symlinks.add(path)

    def _node(self, m: tarfile.TarInfo, path: str, uid: int, gid: int) -> None:
        if m.isfifo():
            kind = stat.S_IFIFO
        elif not self.opts.devices:
            return  # no mknod in a user namespace; the runtime provides /dev anyway
        else:
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
        self._remove_if_present(path)
        os.mknod(path, kind | 0o600, os.makedev(m.devmajor, m.devminor), dir_fd=self.fd)
        self._chown(path, uid, gid)
        os.chmod(path, m.mode & 0o7777, dir_fd=self.fd)
        self._times(path, m, follow=False)

    def _whiteout(self, parts: list[str], name: str, entry: str) -> None:
        self._mkdir_parents(parts)
        parent = "/".join(parts[:-1]) or "."
        if name == OPAQUE_MARKER and self.opts.whiteouts == "file":
            self._marker("/".join(parts))
            return
        if name == OPAQUE_MARKER:
            dfd = os.open(parent, _O_DIR, dir_fd=self.fd)
            try:
                os.setxattr(dfd, f"{self.opts.xattr_namespace}.overlay.opaque", b"y")
            finally:
                os.close(dfd)
            return
        hidden = name[len(WHITEOUT_PREFIX) :]
        if not hidden or hidden in (".", ".."):
            raise UnsafeArchive(f"refusing whiteout `{entry}`: it names no file")
        target = "/".join([*parts[:-1], hidden])
        if self.opts.whiteouts == "none":
            raise Unsupported(
                f"the layer deletes `{target}`, and whiteouts (0:0 character devices) cannot be made on this "
                "store's filesystem (see graftfs features)"
            )
        self._remove_if_present(target)
        if self.opts.whiteouts == "file":
            self._marker("/".join(parts))
            return
        # A 0:0 character device is overlayfs's whiteout (Documentation/filesystems/overlayfs.rst).
        os.mknod(target, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=self.fd)

    def _marker(self, path: str) -> None:
        """An empty ``.wh.`` file, kept as the layer has it (whiteouts="file")."""
        self._remove_if_present(path)
        os.close(os.open(path, _O_NEWFILE, 0o600, dir_fd=self.fd))

    def _times(self, path: str, m: tarfile.TarInfo, follow: bool) -> None:
        ns = _mtime_ns(m)
        os.utime(path, ns=(ns, ns), dir_fd=self.fd, follow_symlinks=follow)

    def _finish_dirs(self) -> None:
        for path in sorted(self._dir_meta, key=lambda p: p.count("/") if p != "." else -1, reverse=True):
            mode, mtime = self._dir_meta[path]
            os.chmod(path, mode, dir_fd=self.fd)
            if mtime >= 0:
                os.utime(path, ns=(mtime, mtime), dir_fd=self.fd)


def unpack(tar_stream: IO[bytes], dest: str, opts: UnpackOptions | None = None) -> UnpackResult:
    """Unpack an uncompressed tar stream into ``dest`` (an existing, empty directory).

    Raises :class:`UnsafeArchive` for entries that would escape ``dest`` and :class:`InvalidImage` for
    archives that are not valid tar. The caller owns ``dest`` and removes it on failure.
    """
    opts = opts or UnpackOptions()
    root_fd = os.open(dest, _O_DIR)
    try:
        # Stream mode ("r|"): one pass, no seeking, no member index kept in memory beyond the current one.
        with tarfile.open(fileobj=tar_stream, mode="r|", bufsize=_TAR_BUFFER) as tar:
            return _Unpacker(root_fd, dest, opts).run(tar)
    except tarfile.TarError as exc:
        raise InvalidImage(f"invalid layer tar: {exc}") from exc
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            where = f"{exc.filename}: " if exc.filename else ""
            raise InvalidImage(f"layer puts an entry under a non-directory: {where}{os_reason(exc)}") from exc
        raise
    finally:
        os.close(root_fd)

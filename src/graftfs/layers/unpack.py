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

Hostile layers get one line, in time proportional to their bytes: the tar is read by
:mod:`graftfs.layers.tarreader` (malformed headers are :class:`InvalidImage`), the bookkeeping of replaced
names costs what the replaced subtree holds, sparse holes are seeked over, and a failing system call is
reported as ``` `entry`: operation: reason``` (naming the capability an EPERM lacked).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from ..errors import InvalidImage, KernelError, UnsafeArchive, Unsupported, os_reason
from .tarreader import BLK, CHR, DIR, FIFO, LNK, REG, SYM, Member, TarReader, show

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_COPY_CHUNK = 1 << 20
# Linux's PATH_MAX counts the terminating NUL: a longer name cannot be passed to any system call, and
# refusing it up front keeps the per-component work on the way there bounded.
_PATH_MAX = 4096
_O_NEWFILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

IdMapper = Callable[[int], int]

# What each operation needs when the kernel says EPERM (capabilities(7)); the failure names it if it is
# missing from this process's effective set. Keyed by the start of the operation's text.
_NEEDS = (
    ("changing owner", "CAP_CHOWN"),
    ("setting xattr security.capability", "CAP_SETFCAP"),
    ("setting xattr trusted.", "CAP_SYS_ADMIN"),
    ("creating device node", "CAP_MKNOD"),
    ("creating whiteout", "CAP_MKNOD"),
    ("changing mode", "CAP_FOWNER"),
    ("setting times", "CAP_FOWNER"),
)
_CAP_BITS = {"CAP_CHOWN": 0, "CAP_FOWNER": 3, "CAP_SYS_ADMIN": 21, "CAP_MKNOD": 27, "CAP_SETFCAP": 31}

_CREATING_FILE = "creating file"
_CREATING_DIR = "creating directory"
_REPLACING = "removing the entry it replaces"
_WRITING = "writing file"
_READING = "reading the layer"
_CHMOD = "changing mode"
_TIMES = "setting times"


def _identity(i: int) -> int:
    return i


def _lacks(cap: str) -> bool:
    """Whether ``cap`` is missing from this process's effective capabilities (False when unknown).

    store.features reads the same line for ``features``; importing it here would load the store's modules
    into every unpack for five lines, and this runs only once a system call has already failed."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return not (int(line.split()[1], 16) >> _CAP_BITS[cap]) & 1
    except (OSError, ValueError, IndexError):
        pass
    return False


def failure(entry: str, operation: str, exc: OSError) -> KernelError:
    """```entry`: operation: reason``, and for EPERM the capability that was missing, if one was."""
    text = f"`{show(entry)}`: {operation}: {os_reason(exc)}"
    if exc.errno == errno.EPERM:
        for prefix, cap in _NEEDS:
            if operation.startswith(prefix):
                if _lacks(cap):
                    text += f" (needs {cap}, which this process does not have)"
                break
    return KernelError(text, exc.errno or 0)


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


def _normalise(name: str, what: str, entry: str) -> list[str]:
    if name.startswith("/"):
        raise UnsafeArchive(f"refusing {what} `{show(entry)}`: absolute path names are not allowed in a layer")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"refusing {what} `{show(entry)}`: `..` would point outside the layer")
    return parts


def _check_length(path: str, entry: str) -> None:
    if len(path) >= _PATH_MAX // 4 and len(os.fsencode(path)) >= _PATH_MAX:
        raise InvalidImage(f"`{show(entry)}`: file name too long (Linux allows {_PATH_MAX - 1} bytes)")


class _Unpacker:
    def __init__(self, root_fd: int, root_path: str, opts: UnpackOptions) -> None:
        self.fd = root_fd
        self.root = root_path
        self.opts = opts
        self.result = UnpackResult()
        self._symlinks: set[str] = set()
        # Directories this unpack made or found (every ancestor of one is one too: see _forget).
        self._dirs: set[str] = {""}
        # path -> (mode, mtime_ns): applied at the end, deepest first.
        self._dir_meta: dict[str, tuple[int, int]] = {}
        # parent -> the paths below it in the three collections above, so that forgetting a replaced name
        # costs what was under it, not a scan of everything: a layer replacing one name 16,000 times next
        # to 8,000 directories took 35 s when every replacement scanned them all.
        self._kids: dict[str, set[str]] = {}
        # What the current system call is doing, for the failure's text (see failure()).
        self._doing = ""
        self._buf = bytearray(_COPY_CHUNK)
        # The base directory names a place inside the volume, and Garden passes it absolute (the
        # preloaded+layer `layer_path`, e.g. /home/vcap): strip the leading "/" rather than refuse it as we
        # refuse absolute member names, which made every such create fail. `..` is still refused.
        self._base = _normalise(opts.base_directory.lstrip("/"), "base directory", opts.base_directory)
        self._root_owner = (opts.uid_map(0), opts.gid_map(0))

    # -- bookkeeping ---------------------------------------------------------------------------------------

    def _track(self, path: str) -> None:
        kids = self._kids.get(parent := path.rpartition("/")[0])
        if kids is None:
            self._kids[parent] = {path}
        else:
            kids.add(path)

    def _forget(self, path: str) -> None:
        """Drop what we know about ``path`` and everything below it (it was removed or replaced)."""
        stack = [path]
        while stack:
            p = stack.pop()
            self._symlinks.discard(p)
            self._dirs.discard(p)
            self._dir_meta.pop(p, None)
            stack.extend(self._kids.pop(p, ()))
        kids = self._kids.get(path.rpartition("/")[0])
        if kids is not None:
            kids.discard(path)

    # -- path safety ---------------------------------------------------------------------------------------

    def _parents_ready(self, parts: list[str], path: str, entry: str, make: bool = True) -> None:
        """Refuse a path through one of our symlinks; with ``make``, create missing parents."""
        parent = path.rpartition("/")[0]
        if parent in self._dirs:
            # A known directory's ancestors are known directories, never symlinks: nothing to walk.
            return
        self._check_parents(parts, entry)
        if make:
            self._mkdir_parents(parts)

    def _check_parents(self, parts: list[str], entry: str) -> None:
        if not self._symlinks:
            return
        prefix = ""
        for part in parts[:-1]:
            prefix = f"{prefix}/{part}" if prefix else part
            if prefix in self._symlinks:
                raise UnsafeArchive(
                    f"refusing `{show(entry)}`: it would be written through the symlink `{show(prefix)}`"
                )

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
        doing = self._doing
        self._doing = f"creating parent directory `{show(path)}`" if implied else _CREATING_DIR
        try:
            os.mkdir(path, 0o700, dir_fd=self.fd)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path, dir_fd=self.fd).st_mode):
                self._remove(path)
                os.mkdir(path, 0o700, dir_fd=self.fd)
            elif implied:
                self._dirs.add(path)
                self._track(path)
                self._doing = doing
                return
        self._dirs.add(path)
        self._track(path)
        if implied:
            mode, uid, gid = self.opts.implied_dirs.get(path, (0o755, *self._root_owner))
            self._chown(path, uid, gid)
            self._dir_meta.setdefault(path, (mode, -1))
        self._doing = doing

    def _chown(self, path: str, uid: int, gid: int) -> None:
        if self.opts.preserve_owner:
            self._doing = f"changing owner to {uid}:{gid}"
            os.chown(path, uid, gid, dir_fd=self.fd, follow_symlinks=False)

    # -- entries -------------------------------------------------------------------------------------------

    def run(self, tar: TarReader) -> UnpackResult:
        if self._base:
            try:
                self._mkdir_parents([*self._base, ""])
            except OSError as exc:
                raise failure("/".join(self._base), self._doing, exc) from exc
        for member in tar:
            try:
                self._entry(tar, member)
            except OSError as exc:
                entry = "/".join(p for p in member.name.split("/") if p not in ("", ".")) or "."
                if exc.errno == errno.ENOTDIR:
                    raise InvalidImage(
                        f"layer puts an entry under a non-directory: `{show(entry)}`: {self._doing}: {os_reason(exc)}"
                    ) from exc
                raise failure(entry, self._doing, exc) from exc
            except (ValueError, OverflowError) as exc:
                # A value the reader's checks let through and the os module refused: still the layer's error.
                raise InvalidImage(f"`{show(member.name)}`: {exc}") from exc
        self._finish_dirs()
        return self.result

    def _entry(self, tar: TarReader, m: Member) -> None:
        parts = self._base + _normalise(m.name, "entry", m.name)
        if not parts or parts == self._base:
            if m.type == DIR:  # "./": the layer root (or base directory) itself
                self._dir(m, "/".join(parts) if parts else ".")
            return
        path = "/".join(parts)
        _check_length(path, m.name)
        name = parts[-1]
        if name.startswith(WHITEOUT_PREFIX):
            self._parents_ready(parts, path, m.name)
            self._whiteout(parts, name, m.name)
            return
        self._parents_ready(parts, path, m.name)
        kind = m.type
        if kind == REG:
            self._file(tar, m, path, self.opts.uid_map(m.uid), self.opts.gid_map(m.gid))
        elif kind == DIR:
            self._dir(m, path)
        elif kind == SYM:
            self._remove_if_present(path)
            self._doing = "creating symlink"
            os.symlink(m.linkname, path, dir_fd=self.fd)
            self._symlinks.add(path)
            self._track(path)
            self._chown(path, self.opts.uid_map(m.uid), self.opts.gid_map(m.gid))
            self._times(path, m)
        elif kind == LNK:
            self._hardlink(m, path)
        elif kind in (FIFO, CHR, BLK):
            self._node(m, path, self.opts.uid_map(m.uid), self.opts.gid_map(m.gid))
        # Other types (GNU volume headers, ...) carry nothing overlayfs could show.

    def _remove_if_present(self, path: str) -> None:
        doing = self._doing
        self._doing = _REPLACING
        try:
            os.lstat(path, dir_fd=self.fd)
        except FileNotFoundError:
            self._doing = doing
            return
        self._remove(path)
        self._doing = doing

    def _file(self, tar: TarReader, m: Member, path: str, uid: int, gid: int) -> None:
        self._doing = _CREATING_FILE
        try:
            fd = os.open(path, _O_NEWFILE, 0o600, dir_fd=self.fd)
        except FileExistsError:
            self._doing = _REPLACING
            self._remove(path)
            self._doing = _CREATING_FILE
            fd = os.open(path, _O_NEWFILE, 0o600, dir_fd=self.fd)
        try:
            if m.sparse is None:
                self._copy(tar, fd, m.size)
            else:
                self._copy_sparse(tar, fd, m.sparse, m.size)
            if self.opts.preserve_owner:
                self._doing = f"changing owner to {uid}:{gid}"
                os.fchown(fd, uid, gid)
            self._doing = _CHMOD
            os.fchmod(fd, m.mode & 0o7777)
            for key, value in m.xattrs:
                self._doing = f"setting xattr {key}"
                os.setxattr(fd, key, value)
            self._doing = _TIMES
            os.utime(fd, ns=(m.mtime_ns, m.mtime_ns))
        finally:
            os.close(fd)
        self.result.bytes_written += m.size

    def _copy(self, tar: TarReader, fd: int, size: int) -> None:
        view = memoryview(self._buf)[: min(_COPY_CHUNK, size)]
        while True:
            self._doing = _READING
            n = tar.readinto(view)
            if not n:
                break
            self._doing = _WRITING
            chunk = view[:n]
            while chunk:
                written = os.write(fd, chunk)
                chunk = chunk[written:]

    def _copy_sparse(self, tar: TarReader, fd: int, regions: list[tuple[int, int]], size: int) -> None:
        # Only the data regions are written, each at its offset: holes are seeked over, so they stay holes
        # and cost nothing however large they are.
        view = memoryview(self._buf)
        for offset, length in regions:
            self._doing = _WRITING
            os.lseek(fd, offset, os.SEEK_SET)
            while length:
                self._doing = _READING
                n = tar.readinto(view[: min(length, _COPY_CHUNK)])
                if not n:
                    raise InvalidImage("invalid layer tar: unexpected end of data")
                length -= n
                self._doing = _WRITING
                chunk = view[:n]
                while chunk:
                    written = os.write(fd, chunk)
                    chunk = chunk[written:]
        self._doing = _WRITING
        os.ftruncate(fd, size)

    def _dir(self, m: Member, path: str) -> None:
        if path != ".":
            self._ensure_dir(path, implied=False)
        self._chown(path, self.opts.uid_map(m.uid), self.opts.gid_map(m.gid))
        if m.xattrs:
            self._doing = "opening directory"
            dfd = os.open(path, _O_DIR, dir_fd=self.fd)
            try:
                for key, value in m.xattrs:
                    self._doing = f"setting xattr {key}"
                    os.setxattr(dfd, key, value)
            finally:
                os.close(dfd)
        self._dir_meta[path] = (m.mode & 0o7777, m.mtime_ns)  # _ensure_dir tracked the path

    def _hardlink(self, m: Member, path: str) -> None:
        target_parts = self._base + _normalise(m.linkname, "hard link target", m.linkname)
        if not target_parts:
            raise UnsafeArchive(f"refusing hard link `{show(m.name)}`: it points at the layer root")
        target = "/".join(target_parts)
        _check_length(target, m.linkname)
        self._parents_ready(target_parts, target, m.name, make=False)
        self._doing = f"looking up hard link target `{show(m.linkname)}`"
        try:
            st = os.lstat(target, dir_fd=self.fd)
        except FileNotFoundError:
            raise InvalidImage(
                f"hard link `{show(m.name)}` points at `{show(m.linkname)}`, which is not in the layer"
            ) from None
        if target == path:
            return
        if stat.S_ISDIR(st.st_mode):
            # linkat() would fail with a bare EPERM (reported as a kernel error); it is the archive that is wrong.
            raise InvalidImage(f"hard link `{show(m.name)}` points at `{show(m.linkname)}`, which is a directory")
        self._remove_if_present(path)
        self._doing = f"creating hard link to `{show(m.linkname)}`"
        os.link(target, path, src_dir_fd=self.fd, dst_dir_fd=self.fd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            self._symlinks.add(path)
            self._track(path)

    def _node(self, m: Member, path: str, uid: int, gid: int) -> None:
        if m.type == FIFO:
            kind = stat.S_IFIFO
            self._doing = "creating fifo"
        elif not self.opts.devices:
            return  # no mknod in a user namespace; the runtime provides /dev anyway
        else:
            kind = stat.S_IFCHR if m.type == CHR else stat.S_IFBLK
            self._doing = f"creating device node {m.devmajor}:{m.devminor}"
        self._remove_if_present(path)
        os.mknod(path, kind | 0o600, os.makedev(m.devmajor, m.devminor), dir_fd=self.fd)
        self._chown(path, uid, gid)
        self._doing = _CHMOD
        os.chmod(path, m.mode & 0o7777, dir_fd=self.fd)
        self._times(path, m)

    def _whiteout(self, parts: list[str], name: str, entry: str) -> None:
        parent = "/".join(parts[:-1]) or "."
        if name == OPAQUE_MARKER and self.opts.whiteouts == "file":
            self._marker("/".join(parts))
            return
        if name == OPAQUE_MARKER:
            self._doing = "opening directory"
            dfd = os.open(parent, _O_DIR, dir_fd=self.fd)
            try:
                self._doing = f"setting xattr {self.opts.xattr_namespace}.overlay.opaque"
                os.setxattr(dfd, f"{self.opts.xattr_namespace}.overlay.opaque", b"y")
            finally:
                os.close(dfd)
            return
        hidden = name[len(WHITEOUT_PREFIX) :]
        if not hidden or hidden in (".", ".."):
            raise UnsafeArchive(f"refusing whiteout `{show(entry)}`: it names no file")
        target = "/".join([*parts[:-1], hidden])
        if self.opts.whiteouts == "none":
            raise Unsupported(
                f"the layer deletes `{show(target)}`, and whiteouts (0:0 character devices) cannot be made on "
                "this store's filesystem (see graftfs features)"
            )
        self._remove_if_present(target)
        if self.opts.whiteouts == "file":
            self._marker("/".join(parts))
            return
        # A 0:0 character device is overlayfs's whiteout (Documentation/filesystems/overlayfs.rst).
        self._doing = "creating whiteout (a 0:0 character device)"
        os.mknod(target, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=self.fd)

    def _marker(self, path: str) -> None:
        """An empty ``.wh.`` file, kept as the layer has it (whiteouts="file")."""
        self._remove_if_present(path)
        self._doing = _CREATING_FILE
        os.close(os.open(path, _O_NEWFILE, 0o600, dir_fd=self.fd))

    def _times(self, path: str, m: Member) -> None:
        self._doing = _TIMES
        os.utime(path, ns=(m.mtime_ns, m.mtime_ns), dir_fd=self.fd, follow_symlinks=False)

    def _finish_dirs(self) -> None:
        for path in sorted(self._dir_meta, key=lambda p: p.count("/") if p != "." else -1, reverse=True):
            mode, mtime = self._dir_meta[path]
            try:
                self._doing = _CHMOD
                os.chmod(path, mode, dir_fd=self.fd)
                if mtime >= 0:
                    self._doing = _TIMES
                    os.utime(path, ns=(mtime, mtime), dir_fd=self.fd)
            except OSError as exc:
                raise failure(path, self._doing, exc) from exc


def unpack(tar_stream: IO[bytes], dest: str, opts: UnpackOptions | None = None) -> UnpackResult:
    """Unpack an uncompressed tar stream into ``dest`` (an existing, empty directory).

    Raises :class:`UnsafeArchive` for entries that would escape ``dest``, :class:`InvalidImage` for archives
    that are not valid tar, and :class:`KernelError` (```entry`: operation: reason``) for a system call that
    failed. The caller owns ``dest`` and removes it on failure.
    """
    opts = opts or UnpackOptions()
    root_fd = os.open(dest, _O_DIR)
    try:
        # One pass, no seeking, nothing kept of a member once the next one is read.
        return _Unpacker(root_fd, dest, opts).run(TarReader(tar_stream))
    finally:
        os.close(root_fd)

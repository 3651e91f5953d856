"""A layer from an overlay upper directory: what a container changed, as the OCI layer tar a registry, S3 or
a layer repository keeps. The reverse of :mod:`graftfs.layers.unpack`.

An upper directory holds the changes in overlayfs's own form, and the layer says them in the OCI form:

* a whiteout (a 0:0 character device) becomes an empty ``.wh.<name>`` file beside where the name was;
* an opaque directory (the ``<ns>.overlay.opaque`` xattr set to ``y``) is written as itself followed by an
  empty ``.wh..wh..opq`` in it, so that on the way back in it hides what the layers below hold there;
* overlayfs's other xattrs (``<ns>.overlay.*``) are its bookkeeping, not the container's, and are left out;
  every other xattr goes in as a PAX ``SCHILY.xattr`` record, as containerd and Docker write them;
* a directory renamed with ``redirect_dir`` or a file copied up metadata-only (``metacopy``) have no OCI
  form without the lower layers' data: such an upper is refused by name (graftfs's mounts do not ask for
  either; only a kernel built or configured to turn them on by default makes them);
* sockets are left out, as containerd and Docker leave them out: they belong to a running program.

The tar is deterministic (names sorted, no user or group names, the gzip header's time zero), so the same
changes give the same digest: a publisher uploading by digest uploads them once. Work is one pass over the
tree; the tar is compressed and both digests computed as it streams, in memory bounded by a chunk.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from hashlib import sha256

from ..errors import InvalidArgument, Unsupported, os_reason

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import IO, Any

    from typing_extensions import Buffer

MEDIA_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"


class LayerDigests:
    """What a written layer is: its digest and size as stored (compressed), and its diffID (uncompressed)."""

    __slots__ = ("diff_id", "digest", "media_type", "size")

    def __init__(self, digest: str, diff_id: str, size: int, media_type: str) -> None:
        self.digest = digest
        self.diff_id = diff_id
        self.size = size
        self.media_type = media_type

    def __repr__(self) -> str:
        return f"LayerDigests(digest={self.digest!r}, diff_id={self.diff_id!r}, size={self.size})"


class _Sink(io.RawIOBase):
    """The tar's output: hashed (the diffID), compressed, hashed again (the digest) and written out."""

    def __init__(self, out: IO[bytes], compression: str) -> None:
        super().__init__()
        self.out = out
        self.diff = sha256()
        self.digest = sha256()
        self.size = 0
        self.compressor = _compressor(compression)

    def writable(self) -> bool:
        return True

    def write(self, data: Buffer) -> int:
        data = bytes(data)
        self.diff.update(data)
        self._emit(self.compressor.compress(data) if self.compressor is not None else data)
        return len(data)

    def finish(self) -> None:
        if self.compressor is not None:
            self._emit(self.compressor.flush())

    def _emit(self, data: bytes) -> None:
        if data:
            self.digest.update(data)
            self.size += len(data)
            self.out.write(data)


def _compressor(compression: str) -> Any:
    if compression == "gzip":
        from isal import isal_zlib  # several times zlib's speed, the same format

        # wbits 31: a gzip wrapper, its header's time zero. isal's default level (2 of 0-3) compresses about
        # as well as zlib's 6, at several times the speed.
        return isal_zlib.compressobj(isal_zlib.ISAL_DEFAULT_COMPRESSION, isal_zlib.DEFLATED, 31)
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=3).compressobj()
    if compression == "none":
        return None
    raise InvalidArgument(f"layer compression must be gzip, zstd or none, not `{compression}`")


def _identity(i: int) -> int:
    return i


def write_layer(
    upper: str,
    out: IO[bytes],
    compression: str = "gzip",
    xattr_namespace: str = "trusted",
    uid_map: Callable[[int], int] = _identity,
    gid_map: Callable[[int], int] = _identity,
) -> LayerDigests:
    """Write the changes in the overlay upper directory ``upper`` to ``out`` as an OCI layer. ``upper`` must
    not be changing (its overlay unmounted, or its container frozen). ``xattr_namespace`` is where its
    overlay keeps whiteout xattrs (``user`` for a mount with ``userxattr``); ``uid_map``/``gid_map`` turn the
    IDs on disk into the image's (the inverse of a store's ID mapping)."""
    if compression not in MEDIA_TYPES:
        _compressor(compression)  # raises the one-line error
    sink = _Sink(out, compression)
    writer = _Writer(upper, f"{xattr_namespace}.overlay.", uid_map, gid_map)
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8") as tar:
        writer.tar = tar
        writer.walk("")
    sink.finish()
    return LayerDigests(
        "sha256:" + sink.digest.hexdigest(), "sha256:" + sink.diff.hexdigest(), sink.size, MEDIA_TYPES[compression]
    )


class _Writer:
    def __init__(self, root: str, overlay_prefix: str, uid_map: Callable[[int], int], gid_map: Callable[[int], int]):
        self.root = root
        self.prefix = overlay_prefix
        self.uid_map = uid_map
        self.gid_map = gid_map
        self.tar: tarfile.TarFile | None = None
        self.links: dict[tuple[int, int], str] = {}  # (dev, inode) of a file with other names -> its first

    def walk(self, top: str) -> None:
        """Write the entries under the directory ``top`` (relative to the root), depth first, names sorted;
        with a stack, not recursion, so that no tree is too deep."""
        stack = [(top, sorted(os.listdir(os.path.join(self.root, top)), reverse=True))]
        while stack:
            rel, names = stack[-1]
            if not names:
                stack.pop()
                continue
            name = names.pop()
            path = os.path.join(self.root, rel, name)
            arcname = os.path.join(rel, name)
            st = os.lstat(path)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                self._add(_empty(os.path.join(rel, WHITEOUT_PREFIX + name), st))
                continue
            if stat.S_ISSOCK(st.st_mode):
                continue  # a socket is a running program's, never a file: containerd and Docker leave them out
            self._entry(path, arcname, st, self._xattrs(path, arcname))
            if stat.S_ISDIR(st.st_mode):
                if self._opaque(path):
                    self._add(_empty(os.path.join(arcname, OPAQUE_MARKER), st))
                stack.append((arcname, sorted(os.listdir(path), reverse=True)))

    def _opaque(self, path: str) -> bool:
        try:
            return os.getxattr(path, self.prefix + "opaque", follow_symlinks=False) == b"y"
        except OSError:  # ENODATA: not opaque
            return False

    def _xattrs(self, path: str, arcname: str) -> dict[str, str]:
        found = {}
        for name in sorted(os.listxattr(path, follow_symlinks=False)):  # sorted: the digest must not depend on
            # the order they were set in
            if name.startswith(self.prefix):
                if name[len(self.prefix) :] in ("redirect", "metacopy"):
                    raise Unsupported(
                        f"`{arcname}` in {self.root} is an overlayfs {name[len(self.prefix) :]} entry, whose "
                        "contents live in the layers below: such an upper directory cannot become a layer"
                    )
                continue  # overlayfs's bookkeeping (opaque, origin, impure ...), not the container's
            value = os.getxattr(path, name, follow_symlinks=False)
            found["SCHILY.xattr." + name] = value.decode("utf-8", "surrogateescape")
        return found

    def _entry(self, path: str, arcname: str, st: os.stat_result, xattrs: dict[str, str]) -> None:
        info = tarfile.TarInfo(arcname)
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid = self.uid_map(st.st_uid)
        info.gid = self.gid_map(st.st_gid)
        info.uname = info.gname = ""
        info.mtime = int(st.st_mtime)
        info.pax_headers = xattrs
        data = None
        if stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.links:
                info.type = tarfile.LNKTYPE
                info.linkname = self.links[key]
            else:
                if st.st_nlink > 1:
                    self.links[key] = arcname
                info.type = tarfile.REGTYPE
                info.size = st.st_size
                data = path
        elif stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(st.st_mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(path)
        elif stat.S_ISFIFO(st.st_mode):
            info.type = tarfile.FIFOTYPE
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        if data is None:
            self._add(info)
            return
        # Not followed, not blocked on, and checked to be the file lstat saw: a container still running could
        # have put a symlink to a host file (or a FIFO) there since, and its target must not reach the layer.
        try:
            fd = os.open(data, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise Unsupported(f"`{arcname}` in {self.root} changed while it was read: {os_reason(exc)}") from None
        with os.fdopen(fd, "rb") as f:
            now = os.fstat(fd)
            if (now.st_dev, now.st_ino, now.st_size) != (st.st_dev, st.st_ino, st.st_size):
                raise Unsupported(f"`{arcname}` in {self.root} changed while it was read: unmount it first")
            try:
                self._add(info, f)
            except OSError as exc:  # tarfile's "unexpected end of data": it shrank meanwhile
                raise Unsupported(f"`{arcname}` in {self.root} changed while it was read: {exc}") from None

    def _add(self, info: tarfile.TarInfo, data: IO[bytes] | None = None) -> None:
        assert self.tar is not None
        self.tar.addfile(info, data)


def _empty(arcname: str, st: os.stat_result) -> tarfile.TarInfo:
    """A whiteout or opaque marker: an empty regular file, owned by root, with the time of what it marks."""
    info = tarfile.TarInfo(arcname)
    info.mode = 0o644
    info.mtime = int(st.st_mtime)
    info.uname = info.gname = ""
    return info


__all__ = ["MEDIA_TYPES", "LayerDigests", "write_layer"]

"""Build container image fixtures in pure Python, without a network.

Everything here is deterministic: fixed mtimes, no user/group names, sorted
JSON, gzip without a timestamp. The same call therefore yields the same
digests every time, so tests may hard-code or compare digests across runs.

The OCI image layout written by :func:`write_oci_layout` follows the
image-spec v1.0/v1.1 layout (``oci-layout``, ``index.json``,
``blobs/sha256/<hex>``) and unpacks with ``umoci``; see
``tests/integration/test_support_runc.py``.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import os
import platform as _platform
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Self, TypedDict, Unpack

import zstandard

# 2020-01-01T00:00:00Z. Any constant works; it only has to be fixed so that
# two builds of the same builder produce byte-identical tars (and digests).
DEFAULT_MTIME = 1_577_836_800
DEFAULT_CREATED = "2020-01-01T00:00:00Z"

DEFAULT_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]

MEDIA_TYPE_LAYOUT_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER = "application/vnd.oci.image.layer.v1.tar"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"

Compression = Literal["gzip", "zstd", "none"]

LAYER_MEDIA_TYPES: dict[str, str] = {
    "none": MEDIA_TYPE_LAYER,
    "gzip": MEDIA_TYPE_LAYER + "+gzip",
    "zstd": MEDIA_TYPE_LAYER + "+zstd",
}

# tarfile pads the archive to a multiple of this (its RECORDSIZE); we do the
# same when assembling entries by hand so output matches what tarfile would
# have written for the same members.
_RECORD_SIZE = 20 * tarfile.BLOCKSIZE

# The applets the busybox base layer links into /bin. Kept in one list so a
# test can iterate over them (e.g. to check every link resolves).
BUSYBOX_APPLETS: tuple[str, ...] = (
    "sh", "ls", "cat", "echo", "id", "stat", "test", "touch", "mkdir", "rm", "head", "dd",
    "find", "sleep", "true", "false", "readlink", "wc", "du", "df", "grep",
)  # fmt: skip

BUSYBOX_PATH = Path("/bin/busybox")


def sha256_digest(data: bytes) -> str:
    """Return ``"sha256:<hex>"`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _norm(name: str) -> str:
    # Layer tars in the wild use relative member names ("etc/passwd"); a
    # leading "/" is accepted by callers for convenience and stripped here.
    # Deliberately hostile names go through TarBuilder.raw(), which does not
    # normalise anything.
    return name.lstrip("/")


def _xattr_pax_headers(xattrs: Mapping[str, bytes] | None) -> dict[str, str]:
    # tarfile only accepts str values in pax_headers. Decoding with
    # utf-8 + surrogateescape maps every byte sequence to a str that tarfile
    # re-encodes (it switches to "hdrcharset=BINARY" and encodes with the
    # archive encoding, utf-8, + surrogateescape) to the *exact* original
    # bytes, so binary values such as a security.capability blob survive.
    # Readers get them back with value.encode("utf-8", "surrogateescape").
    if not xattrs:
        return {}
    return {f"SCHILY.xattr.{key}": value.decode("utf-8", "surrogateescape") for key, value in xattrs.items()}


def xattrs_of(member: tarfile.TarInfo) -> dict[str, bytes]:
    """Read back the ``SCHILY.xattr.*`` records of a member as raw bytes."""
    prefix = "SCHILY.xattr."
    return {
        key[len(prefix) :]: value.encode("utf-8", "surrogateescape")
        for key, value in member.pax_headers.items()
        if key.startswith(prefix)
    }


def _entry_bytes(info: tarfile.TarInfo, data: bytes | None) -> bytes:
    # Serialise a single member (header(s) + data + padding) without the
    # end-of-archive marker. Writing each member into its own TarFile and not
    # closing it gives exactly those blocks, which lets the builder splice in
    # members tarfile cannot produce itself (GNU sparse from GNU tar, or
    # arbitrary hand-made blocks) between ordinary ones.
    buf = io.BytesIO()
    tf = tarfile.TarFile(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8")
    tf.addfile(info, io.BytesIO(data) if data is not None else None)
    # Not calling tf.close() on purpose: close() would append the two zero
    # blocks that end the archive. The BytesIO is ours, nothing leaks.
    return buf.getvalue()


@dataclass
class TarBuilder:
    """Fluent builder for uncompressed (PAX) layer tars.

    Members are written in the order the methods are called; parent
    directories are *not* created implicitly, so tests can also build layers
    with missing parents. Names are relative (a leading "/" is stripped),
    except for :meth:`raw` and :meth:`raw_blocks` which take everything as is.
    """

    default_mtime: int = DEFAULT_MTIME
    _chunks: list[bytes] = field(default_factory=list, repr=False)

    # -- generic -----------------------------------------------------------

    def _info(
        self,
        name: str,
        type_: bytes,
        *,
        mode: int,
        uid: int,
        gid: int,
        mtime: int | None,
    ) -> tarfile.TarInfo:
        info = tarfile.TarInfo(_norm(name))
        info.type = type_
        info.mode = mode
        info.uid = uid
        info.gid = gid
        # An int mtime keeps tarfile from emitting a PAX "mtime" record (it
        # only does that for floats / out of range values).
        info.mtime = self.default_mtime if mtime is None else int(mtime)
        info.uname = ""
        info.gname = ""
        return info

    def _add(self, info: tarfile.TarInfo, data: bytes | None = None) -> Self:
        if data is not None:
            info.size = len(data)
        self._chunks.append(_entry_bytes(info, data))
        return self

    def raw(self, info: tarfile.TarInfo, data: bytes | None = None) -> Self:
        """Add a hand-crafted member verbatim (e.g. ``../escape``, ``/abs``).

        ``info`` is copied; when ``data`` is given its length becomes the
        member size. For a header whose size lies about the data, use
        :meth:`raw_blocks`.
        """
        return self._add(copy.copy(info), data)

    def raw_blocks(self, blocks: bytes) -> Self:
        """Append pre-built tar blocks (must be a multiple of 512 bytes)."""
        if len(blocks) % tarfile.BLOCKSIZE:
            raise ValueError(f"raw blocks must be a multiple of {tarfile.BLOCKSIZE} bytes")
        self._chunks.append(bytes(blocks))
        return self

    def extend(self, other: TarBuilder) -> Self:
        """Append all members of ``other`` (after the ones already added)."""
        self._chunks.extend(other._chunks)
        return self

    # -- member kinds ------------------------------------------------------

    def dir(
        self,
        name: str,
        mode: int = 0o755,
        uid: int = 0,
        gid: int = 0,
        mtime: int | None = None,
        xattrs: Mapping[str, bytes] | None = None,
    ) -> Self:
        info = self._info(name, tarfile.DIRTYPE, mode=mode, uid=uid, gid=gid, mtime=mtime)
        info.pax_headers = _xattr_pax_headers(xattrs)
        return self._add(info)

    def file(
        self,
        name: str,
        data: bytes = b"",
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        mtime: int | None = None,
        xattrs: Mapping[str, bytes] | None = None,
    ) -> Self:
        info = self._info(name, tarfile.REGTYPE, mode=mode, uid=uid, gid=gid, mtime=mtime)
        info.pax_headers = _xattr_pax_headers(xattrs)
        return self._add(info, data)

    def symlink(self, name: str, target: str, uid: int = 0, gid: int = 0, mtime: int | None = None) -> Self:
        # The target is stored as given: relative, absolute or escaping
        # ("../../etc") targets are all legitimate test inputs.
        info = self._info(name, tarfile.SYMTYPE, mode=0o777, uid=uid, gid=gid, mtime=mtime)
        info.linkname = target
        return self._add(info)

    def hardlink(self, name: str, target: str, uid: int = 0, gid: int = 0, mtime: int | None = None) -> Self:
        # Hard link targets are archive member names, so they get the same
        # leading-"/" normalisation as member names.
        info = self._info(name, tarfile.LNKTYPE, mode=0o644, uid=uid, gid=gid, mtime=mtime)
        info.linkname = _norm(target)
        return self._add(info)

    def fifo(self, name: str, mode: int = 0o644, uid: int = 0, gid: int = 0, mtime: int | None = None) -> Self:
        return self._add(self._info(name, tarfile.FIFOTYPE, mode=mode, uid=uid, gid=gid, mtime=mtime))

    def chardev(
        self,
        name: str,
        major: int,
        minor: int,
        mode: int = 0o666,
        uid: int = 0,
        gid: int = 0,
        mtime: int | None = None,
    ) -> Self:
        info = self._info(name, tarfile.CHRTYPE, mode=mode, uid=uid, gid=gid, mtime=mtime)
        info.devmajor, info.devminor = major, minor
        return self._add(info)

    def blockdev(
        self,
        name: str,
        major: int,
        minor: int,
        mode: int = 0o660,
        uid: int = 0,
        gid: int = 0,
        mtime: int | None = None,
    ) -> Self:
        info = self._info(name, tarfile.BLKTYPE, mode=mode, uid=uid, gid=gid, mtime=mtime)
        info.devmajor, info.devminor = major, minor
        return self._add(info)

    def whiteout(self, path: str, mtime: int | None = None) -> Self:
        """Delete ``path`` from lower layers: adds ``<dir>/.wh.<base>``."""
        parent, _, base = _norm(path).rstrip("/").rpartition("/")
        name = f"{parent}/.wh.{base}" if parent else f".wh.{base}"
        return self.file(name, b"", mode=0o644, mtime=mtime)

    def opaque(self, dir: str, mtime: int | None = None) -> Self:
        """Hide all lower-layer content of ``dir``: adds ``<dir>/.wh..wh..opq``."""
        d = _norm(dir).rstrip("/")
        return self.file(f"{d}/.wh..wh..opq" if d else ".wh..wh..opq", b"", mode=0o644, mtime=mtime)

    def sparse_file(
        self,
        name: str,
        size: int,
        data_at: Sequence[tuple[int, bytes]],
        *,
        fmt: Literal["pax", "gnu"] = "pax",
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        mtime: int | None = None,
    ) -> Self:
        """Add a sparse file of apparent ``size`` with data at the given offsets.

        ``fmt="pax"`` (default) writes a PAX 1.0 sparse member (the format
        GNU tar uses with ``--format=posix``, and Go's archive/tar reads)
        directly with tarfile. tarfile cannot *write* sparse members, but the
        1.0 format is an ordinary regular-file member whose PAX records
        (``GNU.sparse.major=1``, ``minor=0``, ``name``, ``realsize``) say the
        data starts with a text sparse map, so it can be hand-assembled.

        ``fmt="gnu"`` produces an old-GNU sparse member (type ``S``) by
        running GNU ``tar --sparse --format=gnu -c`` on a real sparse file
        made in a temporary directory, then splicing its blocks in. Its
        hole detection works on filesystem blocks, so the stored map is the
        data ranges rounded out to the filesystem block size.
        """
        chunks = sorted((off, bytes(d)) for off, d in data_at)
        end = 0
        for off, d in chunks:
            if off < end:
                raise ValueError("sparse data ranges overlap or are unsorted")
            end = off + len(d)
        if end > size:
            raise ValueError("sparse data extends past the file size")
        if fmt == "gnu":
            real_mtime = self.default_mtime if mtime is None else int(mtime)
            member = _gnu_tar_sparse_member(_norm(name), size, chunks, mode=mode, uid=uid, gid=gid, mtime=real_mtime)
            return self.raw_blocks(member)
        regions = _block_aligned_regions(size, chunks)
        region_data = [bytes(d) for _, d in regions]
        sparse_map = [(off, len(d)) for off, d in regions]
        # GNU tar ends the map with a zero-length region at the real size when
        # the file ends in a hole; some readers use it to size the file.
        if not sparse_map or sparse_map[-1][0] + sparse_map[-1][1] < size:
            sparse_map.append((size, 0))
        map_text = f"{len(sparse_map)}\n" + "".join(f"{o}\n{n}\n" for o, n in sparse_map)
        map_bytes = map_text.encode()
        map_bytes += b"\0" * (-len(map_bytes) % tarfile.BLOCKSIZE)
        payload = map_bytes + b"".join(region_data)
        real = _norm(name)
        parent, _, base = real.rpartition("/")
        # Same placeholder member name GNU tar uses (with a fixed "pid" 0) so
        # a reader that ignores the sparse records extracts it out of the way.
        placeholder = f"{parent}/GNUSparseFile.0/{base}" if parent else f"GNUSparseFile.0/{base}"
        info = self._info(placeholder, tarfile.REGTYPE, mode=mode, uid=uid, gid=gid, mtime=mtime)
        info.pax_headers = {
            "GNU.sparse.major": "1",
            "GNU.sparse.minor": "0",
            "GNU.sparse.name": real,
            "GNU.sparse.realsize": str(size),
        }
        return self._add(info, payload)

    # -- output ------------------------------------------------------------

    def build(self) -> bytes:
        """Return the complete tar (members + end-of-archive + record padding)."""
        out = b"".join(self._chunks) + b"\0" * (2 * tarfile.BLOCKSIZE)
        return out + b"\0" * (-len(out) % _RECORD_SIZE)


def _block_aligned_regions(size: int, chunks: list[tuple[int, bytes]]) -> list[tuple[int, bytearray]]:
    # Readers disagree on where a region's data starts in the archive: GNU
    # tar starts every region on a fresh 512-byte block, while Python's
    # tarfile and Go's archive/tar read regions back to back. They agree
    # when every region but the last is a whole number of blocks, which is
    # all GNU tar ever writes (it finds regions at filesystem-block
    # granularity). So widen each range to 512-byte boundaries (zero-filled,
    # the file content is unchanged) and merge ranges that then touch.
    block = tarfile.BLOCKSIZE
    out: list[tuple[int, bytearray]] = []
    for off, d in chunks:
        if not d:
            continue
        start = off - off % block
        end = min(-(-(off + len(d)) // block) * block, size)
        if out and start <= out[-1][0] + len(out[-1][1]):
            prev_off, buf = out[-1]
        else:
            prev_off, buf = start, bytearray()
            out.append((prev_off, buf))
        if len(buf) < end - prev_off:
            buf.extend(b"\0" * (end - prev_off - len(buf)))
        buf[off - prev_off : off - prev_off + len(d)] = d
    return out


def _gnu_tar_sparse_member(
    name: str, size: int, chunks: list[tuple[int, bytes]], *, mode: int, uid: int, gid: int, mtime: int
) -> bytes:
    tar = shutil.which("tar")
    if tar is None:
        raise RuntimeError("GNU tar is needed for fmt='gnu' sparse members")
    with tempfile.TemporaryDirectory(prefix="graftfs-sparse-") as tmp:
        src = Path(tmp, "src")
        target = src / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as fh:
            # truncate() creates the holes; only the written ranges allocate.
            fh.truncate(size)
            for off, d in chunks:
                fh.seek(off)
                fh.write(d)
        os.chmod(target, mode)
        out = Path(tmp, "out.tar")
        # Every option that would leak host state (owner names, times) is
        # pinned so the member is reproducible.
        cmd = [tar, "--sparse", "--format=gnu", "--numeric-owner", f"--owner=+{uid}", f"--group=+{gid}"]
        cmd += [f"--mtime=@{mtime}", "-C", str(src), "-cf", str(out), name]
        subprocess.run(cmd, check=True, capture_output=True)
        data = out.read_bytes()
    # Cut off the end-of-archive marker: tarfile's offset after reading every
    # member points at it (trailing zero blocks cannot be stripped blindly, a
    # member's data may itself end in zero blocks).
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        tf.getmembers()
        return data[: tf.offset]


# -- busybox base layer -------------------------------------------------------

PASSWD = "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/sh\n"
GROUP = "root:x:0:\nwww-data:x:33:\n"


def busybox_layer(extra: TarBuilder | None = None, *, busybox: Path = BUSYBOX_PATH) -> bytes:
    """A minimal bootable base layer: static busybox + applet links + users.

    The host's ``/bin/busybox`` must be statically linked (Debian's
    busybox-static is), since the layer ships no libc.
    """
    tb = TarBuilder()
    for d in ("bin", "etc", "dev", "proc", "sys", "var", "var/www"):
        tb.dir(d)
    tb.dir("root", mode=0o700)
    tb.dir("tmp", mode=0o1777)
    tb.file("bin/busybox", busybox.read_bytes(), mode=0o755)
    for applet in BUSYBOX_APPLETS:
        tb.symlink(f"bin/{applet}", "busybox")
    tb.file("etc/passwd", PASSWD.encode())
    tb.file("etc/group", GROUP.encode())
    if extra is not None:
        tb.extend(extra)
    return tb.build()


# -- compression ---------------------------------------------------------------


def compress(data: bytes, kind: Compression | str) -> bytes:
    """Compress ``data`` for a layer blob (deterministically)."""
    if kind == "none":
        return data
    if kind == "gzip":
        # mtime=0 keeps the gzip header (and thus the blob digest) stable.
        return gzip.compress(data, compresslevel=6, mtime=0)
    if kind == "zstd":
        # write_content_size makes the frame self-describing, as the zstd CLI
        # and containerd do.
        return zstandard.ZstdCompressor(level=3, write_content_size=True).compress(data)
    raise ValueError(f"unknown compression {kind!r}")


def write_rootfs_tar(path: Path, layer: bytes, compression: Compression | str = "none") -> Path:
    """Write a (possibly compressed) rootfs tarball, e.g. for ``graftfs create <tar>``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(compress(layer, compression))
    return path


# -- OCI layout -----------------------------------------------------------------


_GOARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def host_arch() -> str:
    """The host's architecture as GOARCH (what OCI platform fields use)."""
    machine = _platform.machine()
    return _GOARCH.get(machine, machine)


def host_platform() -> tuple[str, str, str | None]:
    return ("linux", host_arch(), None)


def platform_string(os_: str, arch: str, variant: str | None) -> str:
    return f"{os_}/{arch}/{variant}" if variant else f"{os_}/{arch}"


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """OCI ChainIDs: chain0 = diff0; chainN = sha256(chainN-1 + " " + diffN)."""
    out: list[str] = []
    for diff in diff_ids:
        out.append(diff if not out else sha256_digest(f"{out[-1]} {diff}".encode()))
    return out


def _canonical_json(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class ManifestInfo:
    """One image manifest written into a layout (one per platform)."""

    digest: str
    size: int
    platform: tuple[str, str, str | None]
    config_digest: str
    layer_digests: list[str]
    layer_sizes: list[int]
    layer_media_types: list[str]
    diff_ids: list[str]
    config_diff_ids: list[str]
    chain_ids: list[str]


@dataclass(frozen=True)
class OCIImageInfo:
    """What :func:`write_oci_layout` wrote.

    The top-level fields describe the *primary* image: the host platform's
    manifest (the only one for single-platform layouts, else the first one
    matching the host os/arch, else the first platform). ``diff_ids`` and
    ``chain_ids`` are always the true values computed from the layer bytes;
    ``config_diff_ids`` is what the config actually claims (they differ when
    ``wrong_diff_id_at`` was used).
    """

    path: Path
    tag: str | None
    manifest_digest: str
    config_digest: str
    layer_digests: list[str]
    layer_media_types: list[str]
    diff_ids: list[str]
    config_diff_ids: list[str]
    chain_ids: list[str]
    manifests: list[ManifestInfo]
    # Digest of the nested image index blob (multi-platform, nested_index=True).
    index_digest: str | None = None

    @property
    def manifest_digests(self) -> list[str]:
        return [m.digest for m in self.manifests]

    def url(self, tag: bool = True) -> str:
        """``oci://<abs path>[:tag]``."""
        base = f"oci://{self.path.absolute()}"
        return f"{base}:{self.tag}" if tag and self.tag is not None else base

    def blob_path(self, digest: str) -> Path:
        algo, _, hexd = digest.partition(":")
        return self.path / "blobs" / algo / hexd


def _write_blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = sha256_digest(data)
    blob = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    if not blob.exists():
        blob.write_bytes(data)
    return digest, len(data)


def _write_image(
    layout: Path,
    layers: Sequence[bytes],
    compressions: Sequence[str],
    *,
    plat: tuple[str, str, str | None],
    env: list[str],
    config_extra: Mapping[str, object] | None,
    manifest_annotations: Mapping[str, str] | None,
    wrong_diff_id_at: int | None,
    wrong_size_at: int | None,
    wrong_size_delta: int,
) -> ManifestInfo:
    diff_ids = [sha256_digest(layer) for layer in layers]
    config_diff_ids = list(diff_ids)
    if wrong_diff_id_at is not None:
        # A well-formed digest that matches nothing: the blob is fine, only
        # the config's claim about the uncompressed content is wrong.
        config_diff_ids[wrong_diff_id_at] = sha256_digest(b"wrong diff_id " + layers[wrong_diff_id_at])
    descriptors: list[dict[str, object]] = []
    digests: list[str] = []
    sizes: list[int] = []
    media_types: list[str] = []
    for i, (layer, kind) in enumerate(zip(layers, compressions, strict=True)):
        digest, size = _write_blob(layout, compress(layer, kind))
        digests.append(digest)
        sizes.append(size)
        media_types.append(LAYER_MEDIA_TYPES[kind])
        claimed = size + wrong_size_delta if i == wrong_size_at else size
        descriptors.append({"mediaType": LAYER_MEDIA_TYPES[kind], "digest": digest, "size": claimed})
    os_, arch, variant = plat
    container_config: dict[str, object] = {"Env": list(env)}
    if config_extra:
        container_config.update(config_extra)
    config: dict[str, object] = {
        "created": DEFAULT_CREATED,
        "architecture": arch,
        "os": os_,
        "config": container_config,
        "rootfs": {"type": "layers", "diff_ids": config_diff_ids},
        "history": [
            {"created": DEFAULT_CREATED, "created_by": f"graftfs tests: layer {i}"} for i in range(len(layers))
        ],
    }
    if variant:
        config["variant"] = variant
    config_digest, config_size = _write_blob(layout, _canonical_json(config))
    manifest: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": {"mediaType": MEDIA_TYPE_CONFIG, "digest": config_digest, "size": config_size},
        "layers": descriptors,
    }
    if manifest_annotations:
        manifest["annotations"] = dict(manifest_annotations)
    manifest_digest, manifest_size = _write_blob(layout, _canonical_json(manifest))
    return ManifestInfo(
        digest=manifest_digest,
        size=manifest_size,
        platform=plat,
        config_digest=config_digest,
        layer_digests=digests,
        layer_sizes=sizes,
        layer_media_types=media_types,
        diff_ids=diff_ids,
        config_diff_ids=config_diff_ids,
        chain_ids=chain_ids(diff_ids),
    )


def _platform_json(plat: tuple[str, str, str | None]) -> dict[str, str]:
    os_, arch, variant = plat
    out = {"architecture": arch, "os": os_}
    if variant:
        out["variant"] = variant
    return out


def write_oci_layout(
    path: Path,
    layers: Sequence[bytes],
    *,
    compression: Sequence[str] | str = "gzip",
    env: list[str] | None = None,
    tag: str | None = "latest",
    platforms: Sequence[tuple[str, str, str | None]] | None = None,
    nested_index: bool = True,
    annotations: Mapping[str, str] | None = None,
    manifest_annotations: Mapping[str, str] | None = None,
    config: Mapping[str, object] | None = None,
    wrong_diff_id_at: int | None = None,
    wrong_size_at: int | None = None,
    wrong_size_delta: int = 1,
) -> OCIImageInfo:
    """Write an OCI image layout at ``path`` holding one image.

    * ``layers``: uncompressed layer tars, bottom first.
    * ``compression``: one kind for all layers or one per layer
      (``gzip``/``zstd``/``none``); sets blob bytes and media type.
    * ``env``: ``config.Env`` (default: a standard PATH only).
    * ``tag``: the ``org.opencontainers.image.ref.name`` annotation of the
      index.json entry (``None``: untagged, reachable by digest only).
    * ``platforms``: ``(os, arch, variant)`` triples. Each gets its own
      manifest and config; the one matching the host os/arch gets
      ``layers``, the others a single layer with ``/platform`` containing
      ``os/arch[/variant]``. With ``nested_index`` the index.json entry
      points at an image index blob listing them (the usual multi-arch
      layout); otherwise index.json lists every manifest directly, each
      with its ``platform`` and the same tag.
    * ``annotations``: extra annotations on the index.json entry/entries;
      ``manifest_annotations``: annotations inside the manifest(s).
    * ``config``: extra keys merged into the image config's ``config``
      object (``User``, ``Cmd``, ``WorkingDir``, ``Volumes`` ...).
    * Corruption: ``wrong_diff_id_at`` puts a wrong diff_id for that layer
      in the config; ``wrong_size_at`` makes that layer's manifest
      descriptor claim ``size + wrong_size_delta``.

    If ``path`` already holds a layout the image is added to it, replacing
    any index.json entry with the same tag, so one layout can carry several
    tags.
    """
    kinds = [compression] * len(layers) if isinstance(compression, str) else list(compression)
    if len(kinds) != len(layers):
        raise ValueError("need one compression per layer")
    for kind in kinds:
        if kind not in LAYER_MEDIA_TYPES:
            raise ValueError(f"unknown compression {kind!r}")
    env = list(DEFAULT_ENV) if env is None else list(env)
    (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    layout_file = path / "oci-layout"
    if not layout_file.exists():
        layout_file.write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))

    def write_image(
        plat: tuple[str, str, str | None], img_layers: Sequence[bytes], img_kinds: Sequence[str]
    ) -> ManifestInfo:
        return _write_image(
            path,
            img_layers,
            img_kinds,
            plat=plat,
            env=env,
            config_extra=config,
            manifest_annotations=manifest_annotations,
            wrong_diff_id_at=wrong_diff_id_at,
            wrong_size_at=wrong_size_at,
            wrong_size_delta=wrong_size_delta,
        )

    entry_annotations: dict[str, str] = dict(annotations or {})
    if tag is not None:
        entry_annotations[REF_NAME_ANNOTATION] = tag

    index_digest: str | None = None
    entries: list[dict[str, object]] = []
    if platforms is None:
        manifests = [write_image(host_platform(), layers, kinds)]
        primary = manifests[0]
        entry: dict[str, object] = {
            "mediaType": MEDIA_TYPE_MANIFEST,
            "digest": primary.digest,
            "size": primary.size,
        }
        if entry_annotations:
            entry["annotations"] = entry_annotations
        entries.append(entry)
    else:
        host_os, host_a, _ = host_platform()
        primary_idx = next((i for i, (o, a, _v) in enumerate(platforms) if (o, a) == (host_os, host_a)), 0)
        manifests = []
        for i, plat in enumerate(platforms):
            if i == primary_idx and (plat[0], plat[1]) == (host_os, host_a):
                plat_layers: Sequence[bytes] = layers
                plat_kinds: Sequence[str] = kinds
            else:
                marker = (platform_string(*plat) + "\n").encode()
                plat_layers = [TarBuilder().file("platform", marker).build()]
                plat_kinds = [kinds[0] if kinds else "gzip"]
            manifests.append(write_image(plat, plat_layers, plat_kinds))
        primary = manifests[primary_idx]
        descs: list[dict[str, object]] = [
            {
                "mediaType": MEDIA_TYPE_MANIFEST,
                "digest": m.digest,
                "size": m.size,
                "platform": _platform_json(m.platform),
            }
            for m in manifests
        ]
        if nested_index:
            image_index = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_LAYOUT_INDEX, "manifests": descs}
            index_digest, index_size = _write_blob(path, _canonical_json(image_index))
            entry = {"mediaType": MEDIA_TYPE_LAYOUT_INDEX, "digest": index_digest, "size": index_size}
            if entry_annotations:
                entry["annotations"] = entry_annotations
            entries.append(entry)
        else:
            for desc in descs:
                if entry_annotations:
                    desc["annotations"] = dict(entry_annotations)
                entries.append(desc)

    index_path = path / "index.json"
    existing: list[dict[str, object]] = []
    if index_path.exists():
        old = json.loads(index_path.read_text())
        existing = [
            e
            for e in old.get("manifests", [])
            if tag is None or (e.get("annotations") or {}).get(REF_NAME_ANNOTATION) != tag
        ]
    index = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_LAYOUT_INDEX, "manifests": existing + entries}
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

    return OCIImageInfo(
        path=path,
        tag=tag,
        manifest_digest=primary.digest,
        config_digest=primary.config_digest,
        layer_digests=primary.layer_digests,
        layer_media_types=primary.layer_media_types,
        diff_ids=primary.diff_ids,
        config_diff_ids=primary.config_diff_ids,
        chain_ids=primary.chain_ids,
        manifests=manifests,
        index_digest=index_digest,
    )


# -- corruption helpers -----------------------------------------------------------


def corrupt_blob(info: OCIImageInfo, layer_index: int, *, offset: int | None = None, count: int = 16) -> Path:
    """Flip ``count`` bytes of a layer blob in place (file name unchanged).

    The default offset is the middle of the blob, away from the gzip/zstd
    header, so the blob still *looks* like its media type but no longer
    matches its digest (and usually fails to decompress too).
    """
    blob = info.blob_path(info.layer_digests[layer_index])
    data = bytearray(blob.read_bytes())
    start = len(data) // 2 if offset is None else offset
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0xFF
    blob.write_bytes(bytes(data))
    return blob


class LayoutOptions(TypedDict, total=False):
    """The non-corruption keyword arguments of :func:`write_oci_layout`."""

    compression: Sequence[str] | str
    env: list[str] | None
    tag: str | None
    platforms: Sequence[tuple[str, str, str | None]] | None
    nested_index: bool
    annotations: Mapping[str, str] | None
    manifest_annotations: Mapping[str, str] | None
    config: Mapping[str, object] | None


def write_layout_with_wrong_diffid(
    path: Path, layers: Sequence[bytes], layer_index: int = 0, **kwargs: Unpack[LayoutOptions]
) -> OCIImageInfo:
    """A layout whose config lists a wrong diff_id for ``layer_index``."""
    return write_oci_layout(path, layers, wrong_diff_id_at=layer_index, **kwargs)


def write_layout_with_wrong_size(
    path: Path,
    layers: Sequence[bytes],
    layer_index: int = 0,
    delta: int = 1,
    **kwargs: Unpack[LayoutOptions],
) -> OCIImageInfo:
    """A layout whose manifest claims ``size + delta`` for layer ``layer_index``."""
    return write_oci_layout(path, layers, wrong_size_at=layer_index, wrong_size_delta=delta, **kwargs)


def remove_blob(info: OCIImageInfo, digest: str) -> None:
    """Delete a blob, for missing-blob tests."""
    info.blob_path(digest).unlink()


# -- convenience images ------------------------------------------------------------


def tiny_layer(i: int) -> bytes:
    """Layer ``i`` of :func:`many_layers_image`: adds ``/layers/<i>``."""
    return TarBuilder().dir("layers").file(f"layers/{i}", f"{i}\n".encode()).build()


def many_layers_image(path: Path, n: int, *, compression: str = "gzip", tag: str | None = "latest") -> OCIImageInfo:
    """An ``n``-layer image: busybox base plus ``n - 1`` layers adding ``/layers/<i>``."""
    if n < 1:
        raise ValueError("an image needs at least one layer")
    layers = [busybox_layer()] + [tiny_layer(i) for i in range(1, n)]
    return write_oci_layout(path, layers, compression=compression, tag=tag)


# -- naive extraction ----------------------------------------------------------------


def naive_extract(layer: bytes, dest: Path, *, id_shift: int = 0) -> Path:
    """Extract an (uncompressed or gzip) layer with tarfile, for smoke tests.

    This is *not* an image unpacker: whiteouts stay as ``.wh.`` files and
    no path-safety checks beyond tarfile's are made. It exists so support
    code (e.g. the runc helper) can be tested without graftfs. Run as root,
    ownership, modes and device nodes are kept; ``id_shift`` adds to every
    uid/gid, giving the ownership a user-namespaced container (host id =
    container id + shift) expects.
    """
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:*") as tf:
        members = tf.getmembers()
        for m in members:
            m.uid += id_shift
            m.gid += id_shift
        # "fully_trusted" (keep ownership, devices, setuid bits) is the
        # behaviour these smoke tests want; naming it explicitly also avoids
        # the DeprecationWarning newer Pythons give for an implicit filter.
        tf.extractall(dest, members=members, numeric_owner=True, filter="fully_trusted")
    return dest

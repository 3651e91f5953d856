"""Layer repositories in CERN DUCC's layout, for tests: ``DIR/.layers/<hh>/<hex>/layerfs``.

:func:`write_repository` unpacks layers as DUCC's ``cvmfs_server ingest`` leaves them (docs: the research note
on DUCC): the tar extracted as it is, so OCI whiteouts (``.wh.<name>``) and opaque markers (``.wh..wh..opq``)
stay plain files, plus the empty ``layerfs/.cvmfscatalog`` that ``ingest --catalog`` makes. :func:`erofs`
makes the tree a real read-only filesystem: an erofs image (``mkfs.erofs``, package erofs-utils) mounted
straight from the file (Linux 6.12+ mounts erofs from a regular file, no loop device), unmounted on exit.
:func:`fuse_mount` serves a tree read-only through FUSE (fuse-overlayfs with one lower), as CernVM-FS does,
whose filesystem refuses idmapped mounts; the daemon runs in the foreground and is reaped by PID.
:func:`lazy` makes the tree a *lazy* repository, as CernVM-FS is one: a squashfs image (``mksquashfs``,
squashfs-tools) served over HTTP with Range requests (:mod:`tests.support.rangeserver`, counting the bytes it
serves), the URL mounted as a file by ``httpfs2`` (FUSE), and that file mounted by ``squashfuse`` (FUSE,
read-only): only what is read is fetched. Both daemons run in the foreground and are unmounted and reaped by
PID on exit.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from graftfs.errors import GraftfsError
from graftfs.mount import kernel
from tests.support.rangeserver import Served

MKFS_EROFS = "/usr/bin/mkfs.erofs"
MKSQUASHFS = "/usr/bin/mksquashfs"
HTTPFS2 = "/usr/bin/httpfs2"
SQUASHFUSE = "/usr/bin/squashfuse"


def layer_dir(root: Path, digest: str) -> Path:
    hexd = digest.split(":", 1)[1]
    return root / ".layers" / hexd[:2] / hexd / "layerfs"


def write_repository(root: Path, layers: Sequence[tuple[str, bytes | Path]], *, catalog_marker: bool = True) -> Path:
    """Add ``(manifest digest, uncompressed tar)`` layers to the repository at ``root``, as DUCC does (a tar
    given as a path is read from that file)."""
    (root / ".layers").mkdir(parents=True, exist_ok=True)
    for digest, tar in layers:
        target = layer_dir(root, digest)
        target.mkdir(parents=True)
        # GNU tar keeps .wh. entries as the plain files they are in the tar: what DUCC's ingest stores.
        if isinstance(tar, Path):
            subprocess.run(["tar", "-x", "--numeric-owner", "-C", str(target), "-f", str(tar)], check=True)
        else:
            subprocess.run(["tar", "-x", "--numeric-owner", "-C", str(target)], input=tar, check=True)
        if catalog_marker:
            (target / ".cvmfscatalog").write_bytes(b"")
        meta = target.parent / ".metadata"
        meta.mkdir()
        (meta / "layers.json").write_text("[]\n")
    root.chmod(0o755)
    return root


def tree(path: Path) -> dict[str, tuple[int, int, int, int, bytes | str]]:
    """Every entry under ``path`` with mode, owner, size, mtime and content (or link target)."""
    out: dict[str, tuple[int, int, int, int, bytes | str]] = {}
    for base, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(base, name)
            st = os.lstat(full)
            content: bytes | str = b""
            if os.path.islink(full):
                content = os.readlink(full)
            elif os.path.isfile(full):
                content = Path(full).read_bytes()
            out[os.path.relpath(full, path)] = (st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns, content)
    return out


def make_erofs(source: Path, image: Path) -> None:
    subprocess.run([MKFS_EROFS, "--quiet", str(image), str(source)], check=True, capture_output=True)


def mount_erofs(image: Path, mountpoint: Path) -> None:
    """The erofs image ``image`` mounted read-only at ``mountpoint``, straight from the file."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    kernel._call_mount(os.fsencode(str(image)), str(mountpoint), b"erofs", kernel.MS_RDONLY, None)


@contextmanager
def erofs(source: Path, image: Path, mountpoint: Path) -> Iterator[Path]:
    """``source`` as an erofs image at ``image``, mounted read-only at ``mountpoint`` (from the file)."""
    make_erofs(source, image)
    mount_erofs(image, mountpoint)
    try:
        yield mountpoint
    finally:
        kernel.unmount(str(mountpoint))


@contextmanager
def fuse_mount(source: Path, mountpoint: Path) -> Iterator[Path]:
    """``source`` served read-only by a FUSE daemon at ``mountpoint`` (unmounted and reaped on exit)."""
    with _fuse_daemon(["fuse-overlayfs", "-f", "-o", f"lowerdir={source},ro", str(mountpoint)], mountpoint):
        yield mountpoint


@contextmanager
def _fuse_daemon(argv: Sequence[str], mountpoint: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run a FUSE daemon in the foreground until it has mounted ``mountpoint``; on exit unmount it and reap
    the daemon by its PID (killed if it does not end by itself)."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a daemon that complains never blocks on it
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while not kernel.is_mountpoint(str(mountpoint)):
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    err.seek(0)
                    said = err.read().decode(errors="replace").strip()
                    raise AssertionError(f"{argv[0]} did not mount {mountpoint}: {said}")
                time.sleep(0.05)
            yield proc
        finally:
            try:
                kernel.unmount(str(mountpoint))  # not mounted (the daemon failed) is success
            except GraftfsError:  # still busy: detached, so that the daemon ends all the same
                subprocess.run(["umount", "-l", str(mountpoint)], check=False, capture_output=True)
            try:
                proc.wait(timeout=10)  # a foreground daemon ends once its filesystem is unmounted
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def make_squashfs(source: Path, image: Path) -> None:
    """``source`` as a squashfs image (owners, modes and times kept; gzip, 128 KiB blocks: the defaults)."""
    subprocess.run(
        [MKSQUASHFS, str(source), str(image), "-noappend", "-quiet", "-no-progress"], check=True, capture_output=True
    )


class Lazy:
    """A lazy repository: where it is mounted, the squashfs image's size, and the server that counts what it
    has served of it."""

    def __init__(self, mountpoint: Path, image_size: int, served: Served) -> None:
        self.mountpoint = mountpoint
        self.image_size = image_size
        self.served = served

    @property
    def bytes_served(self) -> int:
        return self.served.bytes_served


@contextmanager
def lazy(source: Path, work: Path) -> Iterator[Lazy]:
    """``source`` as a lazy repository mounted read-only at ``work/repo``: ``work/repo.squashfs`` served over
    HTTP, mounted as a file by httpfs2 at ``work/http``, and that file mounted by squashfuse."""
    from tests.support.rangeserver import serve_file

    image = work / "repo.squashfs"
    make_squashfs(source, image)
    http, mountpoint = work / "http", work / "repo"
    # httpfs2 shows the URL as one file, named as the URL's last component; -f: both in the foreground.
    # squashfuse: ro, so that the kernel says the filesystem is read-only, as a CernVM-FS mount does: without
    # it graftfs's repository check refuses Debian's layer (its /tmp is mode 1777, which only a read-only
    # filesystem makes harmless). allow_other as CernVM-FS mounts; not needed here (overlayfs reads its
    # lowers with the mounter's credentials, root's), but what a host's other users would need.
    squashfuse = [SQUASHFUSE, "-f", "-o", "ro,allow_other", str(http / image.name), str(mountpoint)]
    with (
        serve_file(image) as served,
        _fuse_daemon([HTTPFS2, "-f", served.url, str(http)], http),
        _fuse_daemon(squashfuse, mountpoint),
    ):
        yield Lazy(mountpoint, image.stat().st_size, served)

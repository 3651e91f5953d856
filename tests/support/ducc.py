"""Layer repositories in CERN DUCC's layout, for tests: ``DIR/.layers/<hh>/<hex>/layerfs``.

:func:`write_repository` unpacks layers as DUCC's ``cvmfs_server ingest`` leaves them (docs: the research note
on DUCC): the tar extracted as it is, so OCI whiteouts (``.wh.<name>``) and opaque markers (``.wh..wh..opq``)
stay plain files, plus the empty ``layerfs/.cvmfscatalog`` that ``ingest --catalog`` makes. :func:`erofs`
makes the tree a real read-only filesystem: an erofs image (``mkfs.erofs``, package erofs-utils) mounted
straight from the file (Linux 6.12+ mounts erofs from a regular file, no loop device), unmounted on exit.
:func:`fuse_mount` serves a tree read-only through FUSE (fuse-overlayfs with one lower), as CernVM-FS does,
whose filesystem refuses idmapped mounts; the daemon runs in the foreground and is reaped by PID.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from graftfs.mount import kernel

MKFS_EROFS = "/usr/bin/mkfs.erofs"


def layer_dir(root: Path, digest: str) -> Path:
    hexd = digest.split(":", 1)[1]
    return root / ".layers" / hexd[:2] / hexd / "layerfs"


def write_repository(root: Path, layers: Sequence[tuple[str, bytes]], *, catalog_marker: bool = True) -> Path:
    """Add ``(manifest digest, uncompressed tar)`` layers to the repository at ``root``, as DUCC does."""
    (root / ".layers").mkdir(parents=True, exist_ok=True)
    for digest, tar in layers:
        target = layer_dir(root, digest)
        target.mkdir(parents=True)
        # GNU tar keeps .wh. entries as the plain files they are in the tar: what DUCC's ingest stores.
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
    mountpoint.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["fuse-overlayfs", "-f", "-o", f"lowerdir={source},ro", str(mountpoint)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not kernel.is_mountpoint(str(mountpoint)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("fuse-overlayfs did not mount")
            time.sleep(0.05)
        yield mountpoint
    finally:
        if kernel.is_mountpoint(str(mountpoint)):
            kernel.unmount(str(mountpoint))
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

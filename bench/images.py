"""Benchmark images, built from this machine's own files: no network, same bytes on every build here.

The layers copy subtrees of the host's /usr (shared libraries, /usr/share's many small files, executables,
a Python library tree) on top of the busybox base layer the tests use, so the image runs (``/bin/sh``) and
looks like a Debian image to an unpacker: thousands of files of every size, directories, symlinks and hard
links. Entries are sorted and every mtime is fixed (TarBuilder's), so two builds on one machine give the
same digests. The small image is busybox alone; the many-small-files layer is generated from a seeded
random generator; the many-layer image is ``tests.support.images.many_layers_image``.
"""

from __future__ import annotations

import os
import random
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.images import OCIImageInfo, TarBuilder, busybox_layer, write_oci_layout


@dataclass(frozen=True)
class HostLayer:
    """One layer: a host subtree, taking ``share`` of the image's byte budget."""

    root: str
    share: float


# The base layer (busybox, ~2 MB) is not counted in the budget; these shares sum to 1.
DEBIAN_LIKE: tuple[HostLayer, ...] = (
    HostLayer("/usr/lib/x86_64-linux-gnu", 0.40),
    HostLayer("/usr/share", 0.25),
    HostLayer("/usr/bin", 0.20),
    HostLayer("/usr/lib/python3.11", 0.15),
)


class _Budget:
    """Bytes of file data a layer may still take, and the first name of each file with hard links."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.left = total
        self.links: dict[tuple[int, int], str] = {}


def _add_tree(tb: TarBuilder, root: Path, budget: _Budget) -> bool:
    """Add ``root`` and what lies under it in sorted pre-order; False once a file did not fit.

    A file larger than a quarter of the layer is skipped (one giant library would otherwise be the whole
    layer); the first file that does not fit in what is left ends the layer, so its size lands just under
    its budget and the choice of files depends only on the host's tree.
    """
    st = root.lstat()
    name = str(root).lstrip("/")
    if stat.S_ISDIR(st.st_mode):
        tb.dir(name, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid)
        for child in sorted(os.listdir(root)):
            if not _add_tree(tb, root / child, budget):
                return False
    elif stat.S_ISLNK(st.st_mode):
        tb.symlink(name, os.readlink(root), uid=st.st_uid, gid=st.st_gid)
    elif stat.S_ISREG(st.st_mode):
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in budget.links:
            tb.hardlink(name, budget.links[key], uid=st.st_uid, gid=st.st_gid)
            return True
        if st.st_size > budget.total // 4:
            return True
        if st.st_size > budget.left:
            return False
        tb.file(name, root.read_bytes(), mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid)
        budget.left -= st.st_size
        budget.links[key] = name
    # Sockets, fifos and devices have no place in /usr; skipped rather than reproduced.
    return True


def host_layer(root: str, budget_bytes: int) -> bytes:
    """An uncompressed layer tar of the host's ``root`` (an absolute path) with about ``budget_bytes`` of data."""
    tb = TarBuilder()
    for parent in reversed(Path(root).parents[:-1]):  # its parent directories, "/" excluded, outermost first
        tb.dir(str(parent).lstrip("/"))
    _add_tree(tb, Path(root), _Budget(budget_bytes))
    return tb.build()


def debian_like_image(
    path: Path, size_mb: int = 100, layers: Sequence[HostLayer] = DEBIAN_LIKE, tag: str = "latest"
) -> OCIImageInfo:
    """An OCI layout at ``path``: busybox base plus one gzip layer per ``layers``, ~``size_mb`` MB unpacked."""
    budget = size_mb << 20
    tars = [busybox_layer()] + [host_layer(layer.root, round(budget * layer.share)) for layer in layers]
    return write_oci_layout(path, tars, compression="gzip", tag=tag, config={"Cmd": ["/bin/sh"]})


def small_image(path: Path) -> OCIImageInfo:
    """One layer, busybox (~2 MB), and a command (``podman create`` refuses an image without one)."""
    return write_oci_layout(path, [busybox_layer()], config={"Cmd": ["/bin/sh"]})


def small_files_layer(files: int, seed: int = 0) -> bytes:
    """An uncompressed layer of ``files`` regular files of 1-8 KiB, 100 to a directory and 10 directories to
    a parent. Their content is random hex text, which gzip shrinks by about half, as it does the text and
    code that most small files in images hold (random bytes would not compress, zeros would vanish)."""
    rng = random.Random(seed)
    tb = TarBuilder().dir("data")
    for i in range(files):
        parent, leaf = f"data/{i // 1000:03d}", f"data/{i // 1000:03d}/{i // 100 % 10}"
        if i % 1000 == 0:
            tb.dir(parent)
        if i % 100 == 0:
            tb.dir(leaf)
        size = rng.randint(1024, 8192)
        tb.file(f"{leaf}/{i:05d}", rng.randbytes((size + 1) // 2).hex()[:size].encode())
    return tb.build()

"""A lazy layer repository (issue 13, "Lazy"): a container of a Debian image whose layer is in a repository
fetched over HTTP on demand, as CernVM-FS fetches ``/cvmfs/unpacked.cern.ch``, reads only a small part of it.

Everything is real: Debian bookworm made by debootstrap (cached, :mod:`tests.support.debian`), the layer
unpacked as DUCC's ingest leaves it, the repository a squashfs image served over HTTP with Range requests by a
server that counts the bytes it sends, mounted as a file by httpfs2 and as a directory by squashfuse (both
FUSE, :func:`tests.support.ducc.lazy`), a Garden-style ``graftfs create`` of the image from an OCI layout,
and the container run by runc.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Graftfs, mounts_under
from tests.support import debian, ducc
from tests.support.runc import run_in_rootfs, runc_binary

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="mounts FUSE filesystems and overlays"),
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse"),
    pytest.mark.skipif(
        not all(os.path.exists(tool) for tool in (ducc.MKSQUASHFS, ducc.HTTPFS2, ducc.SQUASHFUSE)),
        reason="needs mksquashfs (squashfs-tools), httpfs2 and squashfuse",
    ),
    pytest.mark.skipif(runc_binary() is None, reason="needs runc"),
    pytest.mark.skipif(bool(debian.available()), reason=debian.available() or "-"),
]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> debian.DebianImage:
    # Uncompressed: its blob is never read here (the layer is the repository's), so no time goes on gzip.
    return debian.write_debian_layout(tmp_path_factory.mktemp("debian") / "layout", compression="none")


@pytest.fixture(scope="module")
def repository(image: debian.DebianImage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ducc.Lazy]:
    work = tmp_path_factory.mktemp("lazy")
    source = work / "unpacked.example.org"
    ducc.write_repository(source, [(image.layer_digest, debian.debian_layer())])
    with ducc.lazy(source, work) as lazy:
        yield lazy
    assert mounts_under(work) == []


def test_a_container_of_a_debian_image_in_the_lazy_repository_reads_little_of_it(
    workdir: Path, image: debian.DebianImage, repository: ducc.Lazy
) -> None:
    started = repository.bytes_served  # what mounting it read: the superblock and squashfuse's tables
    g = Graftfs(workdir / "store")
    g.run("init-store", "--layer-repository", str(repository.mountpoint))
    t0 = time.monotonic()
    g.create(image.url(), "c1")
    created = time.monotonic() - t0
    assert g.volumes() == set()  # nothing pulled: the image's one layer is the repository's
    after_create = repository.bytes_served
    t0 = time.monotonic()
    out = run_in_rootfs(g.rootfs("c1"), ["cat", "/etc/os-release"]).stdout
    ran = time.monotonic() - t0
    assert 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"' in out
    assert "VERSION_CODENAME=bookworm" in out
    served = repository.bytes_served
    print(
        f"lazy repository: image {repository.image_size} bytes (layer tar {debian.debian_layer().stat().st_size}); "
        f"served {served} ({100 * served / repository.image_size:.2f}%): mount {started}, "
        f"init-store and create {after_create - started} ({created:.1f}s), run {served - after_create} ({ran:.1f}s); "
        f"{len(repository.served.requests)} requests",
        file=sys.stderr,
    )
    assert 0 < served < repository.image_size / 10
    g.run("delete", "c1")
    assert mounts_under(g.store) == []

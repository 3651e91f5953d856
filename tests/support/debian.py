"""A real Debian image for tests: bookworm's ``minbase`` made by ``debootstrap`` from Debian's mirror, as one
OCI layer.

:func:`debian_layer` returns the layer, an uncompressed tar, from :data:`CACHE` (kept across runs, outside
the repository, as :mod:`tests.support.vm` keeps its kernel): debootstrap takes a minute or more and needs
the network, so it runs once per machine, the first time a test asks (under a lock: parallel runs share
the cache). The tree is cleaned as Docker's ``debian`` images are (no device nodes in ``/dev``, no apt lists
or downloaded packages, no host ``resolv.conf``/``hostname``) and packed with GNU tar (numeric owners, names
sorted, no ``./`` prefix), built under a temporary name and renamed into place. The cache key is the recipe
(suite, variant, architecture, mirror and :data:`RECIPE`), so a changed recipe builds a new file; the bytes
then stay the same for as long as the file is there (a new build may differ: the mirror moves on).

:func:`write_debian_layout` writes an OCI image layout holding that image (the layer uncompressed, or
gzip-compressed, also cached), with a config like Docker's ``debian:bookworm`` (``Cmd: ["bash"]``).
"""

from __future__ import annotations

import fcntl
import functools
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support.images import (
    DEFAULT_CREATED,
    LAYER_MEDIA_TYPES,
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_LAYOUT_INDEX,
    MEDIA_TYPE_MANIFEST,
    REF_NAME_ANNOTATION,
    host_arch,
)

DEBOOTSTRAP = "/usr/sbin/debootstrap"
CACHE = Path(os.environ.get("GRAFTFS_TEST_CACHE", "/var/cache/graftfs-test"))
SUITE = "bookworm"
VARIANT = "minbase"
MIRROR = os.environ.get("GRAFTFS_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
#: Bump when the cleaning or packing below changes: the cache key includes it.
RECIPE = "1: rm dev/* var/lib/apt/lists/* var/cache/apt/*.bin var/cache/apt/archives/*.deb etc/resolv.conf; tar"
ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
BUILD_TIMEOUT = 1200


def available() -> str:
    """Why :func:`debian_layer` cannot work here ("" when it can): debootstrap is needed unless the layer
    is in the cache already."""
    if _final().exists():
        return ""
    if os.geteuid() != 0:
        return "building the Debian image (debootstrap) needs root"
    if not Path(DEBOOTSTRAP).exists():
        return "needs debootstrap (to build the Debian image once)"
    return ""


def debian_layer() -> Path:
    """The Debian bookworm minbase rootfs as an uncompressed OCI layer tar, built on first use."""
    final = _final()
    if final.exists():
        return final
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not final.exists():
            _build(final)
    return final


def debian_layer_gzip() -> Path:
    """The same layer, gzip-compressed (deterministically: no name, time zero), cached beside it."""
    layer = debian_layer()
    final = layer.with_name(layer.name + ".gz")
    if final.exists():
        return final
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not final.exists():
            tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
            try:
                with (
                    open(layer, "rb") as src,
                    open(tmp, "wb") as raw,
                    gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as out,
                ):
                    shutil.copyfileobj(src, out, 1 << 20)
                tmp.rename(final)
            finally:
                tmp.unlink(missing_ok=True)
    return final


def _key() -> str:
    recipe = json.dumps([SUITE, VARIANT, _dpkg_arch(), MIRROR, RECIPE]).encode()
    return hashlib.sha256(recipe).hexdigest()[:12]


def _final() -> Path:
    return CACHE / f"debian-{SUITE}-{VARIANT}-{_dpkg_arch()}-{_key()}.tar"


@functools.cache
def _dpkg_arch() -> str:
    try:
        found = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True)
        return found.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return host_arch()


def _build(final: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix=".build-debian-", dir=CACHE))
    try:
        rootfs = work / "rootfs"
        log = work / "debootstrap.log"
        with open(log, "wb") as out:
            got = subprocess.run(
                [DEBOOTSTRAP, f"--variant={VARIANT}", SUITE, str(rootfs), MIRROR],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=BUILD_TIMEOUT,
            )
        if got.returncode != 0:
            tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
            raise RuntimeError(f"debootstrap {SUITE} from {MIRROR} failed (exit {got.returncode}): {tail}")
        _clean(rootfs)
        tmp = work / "layer.tar"
        names = sorted(os.listdir(rootfs))
        subprocess.run(
            ["tar", "-C", str(rootfs), "-cf", str(tmp), "--numeric-owner", "--sort=name", "--format=pax",
             "--pax-option=delete=atime,delete=ctime", "--", *names],
            check=True,
            capture_output=True,
        )  # fmt: skip
        tmp.chmod(0o644)
        tmp.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _clean(rootfs: Path) -> None:
    """What Docker's debian images leave out: device nodes (a runtime makes /dev), apt's lists and downloaded
    packages, and the build host's resolver and name."""
    for pattern in ("dev/*", "var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb"):
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                if path.name != "partial":
                    shutil.rmtree(path)
            else:
                path.unlink()
    for name in ("etc/resolv.conf", "etc/hostname"):
        (rootfs / name).unlink(missing_ok=True)


@dataclass(frozen=True)
class DebianImage:
    """What :func:`write_debian_layout` wrote."""

    path: Path
    tag: str
    manifest_digest: str
    config_digest: str
    layer_digest: str
    diff_id: str
    layer_size: int

    def url(self) -> str:
        return f"oci://{self.path.absolute()}:{self.tag}"


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    return digest, len(data)


def write_debian_layout(path: Path, tag: str = SUITE, compression: str = "gzip") -> DebianImage:
    """An OCI image layout at ``path`` (made, or added to) holding the Debian image tagged ``tag``; its one
    layer uncompressed (``compression="none"``) or gzip-compressed (default, as registries serve it)."""
    if compression not in ("gzip", "none"):
        raise ValueError(f"compression {compression!r}: gzip or none")
    layer = debian_layer()
    blob_file = debian_layer_gzip() if compression == "gzip" else layer
    diff_id = _file_digest(layer)
    digest = _file_digest(blob_file)
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    if not (blobs / digest[7:]).exists():
        shutil.copyfile(blob_file, blobs / digest[7:])
    size = blob_file.stat().st_size
    config = {
        "created": DEFAULT_CREATED,
        "architecture": host_arch(),
        "os": "linux",
        "config": {"Env": ENV, "Cmd": ["bash"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": DEFAULT_CREATED, "created_by": f"debootstrap --variant={VARIANT} {SUITE} {MIRROR}"}],
    }
    config_digest, config_size = _blob(path, _canonical(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": {"mediaType": MEDIA_TYPE_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": LAYER_MEDIA_TYPES[compression], "digest": digest, "size": size}],
    }
    manifest_digest, manifest_size = _blob(path, _canonical(manifest))
    (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    index_path = path / "index.json"
    entries = []
    if index_path.exists():
        entries = [
            e
            for e in json.loads(index_path.read_text()).get("manifests", [])
            if (e.get("annotations") or {}).get(REF_NAME_ANNOTATION) != tag
        ]
    entries.append(
        {
            "mediaType": MEDIA_TYPE_MANIFEST,
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {REF_NAME_ANNOTATION: tag},
        }
    )
    index = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_LAYOUT_INDEX, "manifests": entries}
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return DebianImage(path, tag, manifest_digest, config_digest, digest, diff_id, size)


def _canonical(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


if __name__ == "__main__":
    print(debian_layer())

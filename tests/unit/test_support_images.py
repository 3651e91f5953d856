"""Self-tests for tests/support/images.py: the fixtures must be right before
graftfs tests can trust them (wrong digests here would show up as graftfs bugs).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any, Literal

import pytest
import zstandard

from tests.support import images
from tests.support.images import (
    BUSYBOX_APPLETS,
    DEFAULT_MTIME,
    TarBuilder,
    busybox_layer,
    chain_ids,
    compress,
    corrupt_blob,
    host_arch,
    many_layers_image,
    write_layout_with_wrong_diffid,
    write_layout_with_wrong_size,
    write_oci_layout,
    write_rootfs_tar,
    xattrs_of,
)

# A file capability blob (VFS_CAP_REVISION_2, cap_net_bind_service in
# permitted, effective bit set): NUL bytes and bytes that are not UTF-8.
CAP_BLOB = bytes.fromhex("0100000200040000000000000000000000000000")
NOT_UTF8 = b"\xff\xfe\xc3\x28\x00tail"


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        return {m.name: m for m in tf.getmembers()}


def read_member(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        fh = tf.extractfile(name)
        assert fh is not None
        return fh.read()


def decompress(blob: bytes, media_type: str) -> bytes:
    if media_type.endswith("+gzip"):
        return gzip.decompress(blob)
    if media_type.endswith("+zstd"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    assert media_type == images.MEDIA_TYPE_LAYER
    return blob


def load(path: Path) -> Any:
    return json.loads(path.read_bytes())


def blob(layout: Path, digest: str) -> bytes:
    algo, _, hexd = digest.partition(":")
    return (layout / "blobs" / algo / hexd).read_bytes()


def check_descriptor(layout: Path, desc: dict[str, Any]) -> bytes:
    data = blob(layout, desc["digest"])
    assert desc["size"] == len(data)
    assert desc["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
    return data


def check_image(layout: Path, manifest_desc: dict[str, Any]) -> tuple[dict[str, Any], list[bytes]]:
    """Validate one manifest: descriptors, digests, diff_ids. Returns config and layer tars."""
    manifest = json.loads(check_descriptor(layout, manifest_desc))
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == images.MEDIA_TYPE_MANIFEST
    assert manifest["config"]["mediaType"] == images.MEDIA_TYPE_CONFIG
    config = json.loads(check_descriptor(layout, manifest["config"]))
    tars = [decompress(check_descriptor(layout, d), d["mediaType"]) for d in manifest["layers"]]
    assert config["rootfs"]["type"] == "layers"
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(t).hexdigest() for t in tars]
    assert len(config["history"]) == len(tars)
    return config, tars


# -- TarBuilder --------------------------------------------------------------------


def test_builder_is_reproducible_and_uses_fixed_mtime() -> None:
    def make() -> bytes:
        return TarBuilder().dir("a").file("a/f", b"x" * 1000).symlink("a/l", "f").build()

    first = make()
    assert first == make()
    assert len(first) % (20 * 512) == 0
    for m in members(first).values():
        assert m.mtime == DEFAULT_MTIME
        assert (m.uname, m.gname) == ("", "")
        # No atime/ctime/mtime PAX records that would leak build time.
        assert not {"atime", "ctime", "mtime"} & set(m.pax_headers)


def test_builder_member_kinds() -> None:
    data = (
        TarBuilder()
        .dir("/etc", mode=0o700, uid=1, gid=2, mtime=5)
        .file("etc/f", b"hello", mode=0o4755, uid=33, gid=33)
        .symlink("etc/sym", "../target")
        .hardlink("etc/hard", "/etc/f")
        .fifo("etc/fifo")
        .chardev("dev/null", 1, 3)
        .blockdev("dev/loop0", 7, 0)
        .whiteout("/usr/lib/gone")
        .whiteout("topgone")
        .opaque("var/cache/")
        .build()
    )
    ms = members(data)
    assert list(ms) == [
        "etc", "etc/f", "etc/sym", "etc/hard", "etc/fifo", "dev/null", "dev/loop0",
        "usr/lib/.wh.gone", ".wh.topgone", "var/cache/.wh..wh..opq",
    ]  # fmt: skip
    d = ms["etc"]
    assert d.isdir() and (d.mode, d.uid, d.gid, d.mtime) == (0o700, 1, 2, 5)
    f = ms["etc/f"]
    assert f.isreg() and (f.mode, f.uid, f.gid, f.size) == (0o4755, 33, 33, 5)
    assert read_member(data, "etc/f") == b"hello"
    assert ms["etc/sym"].issym() and ms["etc/sym"].linkname == "../target"
    assert ms["etc/hard"].islnk() and ms["etc/hard"].linkname == "etc/f"
    assert ms["etc/fifo"].isfifo()
    assert ms["dev/null"].ischr() and (ms["dev/null"].devmajor, ms["dev/null"].devminor) == (1, 3)
    assert ms["dev/loop0"].isblk() and (ms["dev/loop0"].devmajor, ms["dev/loop0"].devminor) == (7, 0)
    assert ms["usr/lib/.wh.gone"].isreg() and ms["usr/lib/.wh.gone"].size == 0


def test_xattrs_round_trip_as_raw_bytes() -> None:
    xattrs = {"security.capability": CAP_BLOB, "user.bin": NOT_UTF8, "user.text": "héllo".encode()}
    data = (
        TarBuilder()
        .file("bin/ping", b"\x7fELF", mode=0o755, xattrs=xattrs)
        .dir("d", xattrs={"trusted.overlay.opaque": b"y"})
        .build()
    )
    ms = members(data)
    assert xattrs_of(ms["bin/ping"]) == xattrs
    assert xattrs_of(ms["d"]) == {"trusted.overlay.opaque": b"y"}
    # The PAX record must hold the exact value bytes (what Go's archive/tar,
    # GNU tar and graftfs read), not some escaped form of them.
    assert b" SCHILY.xattr.security.capability=" + CAP_BLOB + b"\n" in data
    assert b" SCHILY.xattr.user.bin=" + NOT_UTF8 + b"\n" in data


def test_raw_entries_are_kept_verbatim() -> None:
    evil = tarfile.TarInfo("../../etc/evil")
    absolute = tarfile.TarInfo("/etc/abs")
    link = tarfile.TarInfo("ok")
    link.type = tarfile.SYMTYPE
    link.linkname = "/../../../../etc/shadow"
    data = TarBuilder().raw(evil, b"pwned").raw(absolute, b"abs").raw(link).build()
    ms = members(data)
    assert list(ms) == ["../../etc/evil", "/etc/abs", "ok"]
    assert ms["../../etc/evil"].size == 5
    assert read_member(data, "/etc/abs") == b"abs"
    assert evil.size == 0, "raw() must not mutate the caller's TarInfo"


def test_raw_blocks_and_extend() -> None:
    lying = tarfile.TarInfo("lies")
    lying.size = 4096  # header claims more data than follows
    header = lying.tobuf(tarfile.PAX_FORMAT)
    data = TarBuilder().file("a", b"1").extend(TarBuilder().file("b", b"2")).raw_blocks(header).build()
    assert data.startswith(TarBuilder().file("a", b"1").file("b", b"2").build()[:2048])
    with pytest.raises(ValueError):
        TarBuilder().raw_blocks(b"x" * 100)


@pytest.mark.parametrize("fmt", ["pax", "gnu"])
def test_sparse_file(fmt: Literal["pax", "gnu"], tmp_path: Path) -> None:
    if fmt == "gnu" and shutil.which("tar") is None:
        pytest.skip("GNU tar not installed")
    size = 1 << 20
    data_at = [(4096, b"A" * 100), (600_000, b"B" * 5000), (size - 3, b"end")]
    data = TarBuilder().dir("d").sparse_file("d/sparse", size, data_at, fmt=fmt).file("d/after", b"x").build()
    assert len(data) < 64 * 1024, "holes must not be stored"
    expected = bytearray(size)
    for off, chunk in data_at:
        expected[off : off + len(chunk)] = chunk
    ms = members(data)
    assert ms["d/sparse"].sparse, "tarfile must see a sparse member"
    assert read_member(data, "d/sparse") == expected
    assert read_member(data, "d/after") == b"x"
    # GNU tar must agree (it places region data differently from tarfile
    # unless regions are block aligned) and recreate the holes.
    if shutil.which("tar") is not None:
        (tmp_path / "t.tar").write_bytes(data)
        out = tmp_path / "out"
        out.mkdir()
        subprocess.run(["tar", "-xf", str(tmp_path / "t.tar"), "-C", str(out)], check=True)
        assert (out / "d/sparse").read_bytes() == expected
        assert (out / "d/after").read_bytes() == b"x"
        assert (out / "d/sparse").stat().st_blocks * 512 < size


def test_sparse_file_rejects_bad_ranges() -> None:
    with pytest.raises(ValueError):
        TarBuilder().sparse_file("s", 100, [(90, b"x" * 20)])
    with pytest.raises(ValueError):
        TarBuilder().sparse_file("s", 100, [(0, b"x" * 20), (10, b"y")])


# -- busybox layer ------------------------------------------------------------------


def test_busybox_layer() -> None:
    extra = TarBuilder().file("etc/extra", b"e")
    data = busybox_layer(extra)
    assert data == busybox_layer(extra), "must be reproducible"
    ms = members(data)
    assert read_member(data, "bin/busybox") == Path("/bin/busybox").read_bytes()
    assert ms["bin/busybox"].mode == 0o755
    for applet in BUSYBOX_APPLETS:
        assert ms[f"bin/{applet}"].issym() and ms[f"bin/{applet}"].linkname == "busybox"
    assert ms["tmp"].isdir() and ms["tmp"].mode == 0o1777
    for d in ("root", "dev", "proc", "sys"):
        assert ms[d].isdir()
    passwd = read_member(data, "etc/passwd").decode()
    assert "root:x:0:0:" in passwd and "www-data:x:33:33:" in passwd
    assert "www-data:x:33:" in read_member(data, "etc/group").decode()
    assert list(ms)[-1] == "etc/extra"


# -- compression ---------------------------------------------------------------------


def test_compress() -> None:
    data = busybox_layer()
    assert compress(data, "none") is data
    gz = compress(data, "gzip")
    assert gzip.decompress(gz) == data and gz == compress(data, "gzip")
    zs = compress(data, "zstd")
    assert zs[:4] == b"\x28\xb5\x2f\xfd"
    assert zstandard.ZstdDecompressor().decompress(zs) == data
    with pytest.raises(ValueError):
        compress(data, "bzip2")


def test_write_rootfs_tar(tmp_path: Path) -> None:
    layer = TarBuilder().file("f", b"x").build()
    assert write_rootfs_tar(tmp_path / "r.tar", layer).read_bytes() == layer
    assert gzip.decompress(write_rootfs_tar(tmp_path / "r.tgz", layer, "gzip").read_bytes()) == layer


# -- OCI layout ------------------------------------------------------------------------


def test_chain_ids_known_answer() -> None:
    a, b, c = (images.sha256_digest(x) for x in (b"a", b"b", b"c"))
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    assert chain_ids([a, b, c]) == [a, ab, abc]
    assert chain_ids([]) == []


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none", ["none", "gzip", "zstd"]])
def test_single_platform_layout(tmp_path: Path, compression: str | list[str]) -> None:
    layers = [busybox_layer(), TarBuilder().file("a", b"1").build(), TarBuilder().whiteout("a").build()]
    options: images.LayoutOptions = {
        "compression": compression,
        "env": ["A=1", "B=2"],
        "config": {"User": "33"},
        "annotations": {"x": "y"},
    }
    info = write_oci_layout(tmp_path / "img", layers, **options)
    layout = tmp_path / "img"
    assert load(layout / "oci-layout") == {"imageLayoutVersion": "1.0.0"}
    index = load(layout / "index.json")
    assert index["schemaVersion"] == 2 and index["mediaType"] == images.MEDIA_TYPE_LAYOUT_INDEX
    [entry] = index["manifests"]
    assert entry["annotations"] == {images.REF_NAME_ANNOTATION: "latest", "x": "y"}
    assert entry["digest"] == info.manifest_digest and entry["mediaType"] == images.MEDIA_TYPE_MANIFEST
    config, tars = check_image(layout, entry)
    assert tars == layers
    assert config["architecture"] == host_arch() and config["os"] == "linux"
    assert config["config"] == {"Env": ["A=1", "B=2"], "User": "33"}
    kinds = [compression] * 3 if isinstance(compression, str) else compression
    assert info.layer_media_types == [images.LAYER_MEDIA_TYPES[k] for k in kinds]
    assert info.diff_ids == info.config_diff_ids == config["rootfs"]["diff_ids"]
    assert info.chain_ids == chain_ids(info.diff_ids)
    assert info.chain_ids[0] == info.diff_ids[0]
    assert info.manifest_digests == [info.manifest_digest]
    assert info.index_digest is None
    assert info.url() == f"oci://{layout.absolute()}:latest"
    assert info.url(tag=False) == f"oci://{layout.absolute()}"
    # Every file under blobs/ is named after its own digest.
    for p in (layout / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name
    # Same inputs, same digests.
    again = write_oci_layout(tmp_path / "again", layers, **options)
    assert again.manifest_digest == info.manifest_digest


def test_host_arch_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert host_arch() == "amd64"
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert host_arch() == "arm64"


def test_default_env_and_untagged(tmp_path: Path) -> None:
    info = write_oci_layout(tmp_path / "img", [busybox_layer()], tag=None)
    [entry] = load(tmp_path / "img" / "index.json")["manifests"]
    assert "annotations" not in entry
    config, _ = check_image(tmp_path / "img", entry)
    assert config["config"]["Env"] == images.DEFAULT_ENV
    assert info.url() == f"oci://{(tmp_path / 'img').absolute()}"


def test_adding_tags_to_an_existing_layout(tmp_path: Path) -> None:
    one = write_oci_layout(tmp_path / "img", [busybox_layer()], tag="v1")
    two = write_oci_layout(tmp_path / "img", [busybox_layer(), images.tiny_layer(1)], tag="v2")
    two_again = write_oci_layout(tmp_path / "img", [busybox_layer(), images.tiny_layer(1)], tag="v2")
    entries = load(tmp_path / "img" / "index.json")["manifests"]
    assert [(e["annotations"][images.REF_NAME_ANNOTATION], e["digest"]) for e in entries] == [
        ("v1", one.manifest_digest),
        ("v2", two.manifest_digest),
    ]
    assert two_again.manifest_digest == two.manifest_digest
    assert one.layer_digests[0] == two.layer_digests[0], "the shared base blob is stored once"


@pytest.mark.parametrize("nested", [True, False])
def test_multi_platform_layout(tmp_path: Path, nested: bool) -> None:
    platforms: list[tuple[str, str, str | None]] = [
        ("linux", "arm", "v7"),
        ("linux", host_arch(), None),
        ("linux", "s390x", None),
        ("windows", host_arch(), None),
    ]
    base = busybox_layer()
    info = write_oci_layout(tmp_path / "img", [base], platforms=platforms, nested_index=nested, tag="multi")
    layout = tmp_path / "img"
    index = load(layout / "index.json")
    if nested:
        [entry] = index["manifests"]
        assert entry["mediaType"] == images.MEDIA_TYPE_LAYOUT_INDEX
        assert entry["annotations"] == {images.REF_NAME_ANNOTATION: "multi"}
        assert entry["digest"] == info.index_digest
        image_index = json.loads(check_descriptor(layout, entry))
        assert image_index["mediaType"] == images.MEDIA_TYPE_LAYOUT_INDEX
        descs = image_index["manifests"]
    else:
        assert info.index_digest is None
        descs = index["manifests"]
        assert all(d["annotations"] == {images.REF_NAME_ANNOTATION: "multi"} for d in descs)
    assert [d["digest"] for d in descs] == info.manifest_digests
    seen = []
    for desc, (os_, arch, variant) in zip(descs, platforms, strict=True):
        expected_platform = {"os": os_, "architecture": arch} | ({"variant": variant} if variant else {})
        assert desc["platform"] == expected_platform
        config, tars = check_image(layout, desc)
        assert (config["os"], config["architecture"], config.get("variant")) == (os_, arch, variant)
        if (os_, arch) == ("linux", host_arch()):
            assert tars == [base]
        else:
            marker = images.platform_string(os_, arch, variant)
            assert read_member(tars[0], "platform") == f"{marker}\n".encode()
        seen.append(desc["digest"])
    assert info.manifest_digest == info.manifests[1].digest == seen[1]
    assert info.manifests[1].platform == ("linux", host_arch(), None)
    assert info.diff_ids == [images.sha256_digest(base)]


# -- corruption helpers -----------------------------------------------------------------


def test_corrupt_blob(tmp_path: Path) -> None:
    info = write_oci_layout(tmp_path / "img", [busybox_layer(), images.tiny_layer(1)])
    before = {p.name for p in (tmp_path / "img/blobs/sha256").iterdir()}
    path = corrupt_blob(info, 0)
    assert path == info.blob_path(info.layer_digests[0])
    assert {p.name for p in (tmp_path / "img/blobs/sha256").iterdir()} == before
    data = path.read_bytes()
    assert images.sha256_digest(data) != info.layer_digests[0]
    assert data[:2] == b"\x1f\x8b", "still looks like gzip"
    assert images.sha256_digest(info.blob_path(info.layer_digests[1]).read_bytes()) == info.layer_digests[1]


def test_wrong_diff_id(tmp_path: Path) -> None:
    layers = [busybox_layer(), images.tiny_layer(1)]
    info = write_layout_with_wrong_diffid(tmp_path / "img", layers, 1, compression="zstd")
    manifest = load(info.blob_path(info.manifest_digest))
    config = load(info.blob_path(manifest["config"]["digest"]))
    assert config["rootfs"]["diff_ids"] == info.config_diff_ids
    assert info.config_diff_ids[0] == info.diff_ids[0] == images.sha256_digest(layers[0])
    assert info.config_diff_ids[1] != info.diff_ids[1] == images.sha256_digest(layers[1])
    # Blobs and sizes themselves stay valid.
    for desc in manifest["layers"]:
        check_descriptor(info.path, desc)


def test_wrong_size(tmp_path: Path) -> None:
    layers = [busybox_layer(), images.tiny_layer(1)]
    info = write_layout_with_wrong_size(tmp_path / "img", layers, 0, delta=-7)
    manifest = load(info.blob_path(info.manifest_digest))
    real = [info.blob_path(d).stat().st_size for d in info.layer_digests]
    assert [d["size"] for d in manifest["layers"]] == [real[0] - 7, real[1]]
    assert [d["digest"] for d in manifest["layers"]] == info.layer_digests


def test_many_layers_image(tmp_path: Path) -> None:
    info = many_layers_image(tmp_path / "img", 5, compression="none")
    assert len(info.layer_digests) == len(info.diff_ids) == len(info.chain_ids) == 5
    manifest = load(info.blob_path(info.manifest_digest))
    tars = [blob(info.path, d["digest"]) for d in manifest["layers"]]
    assert tars[0] == busybox_layer()
    for i in range(1, 5):
        assert read_member(tars[i], f"layers/{i}") == f"{i}\n".encode()
    with pytest.raises(ValueError):
        many_layers_image(tmp_path / "none", 0)


def test_naive_extract(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("keeping ownership needs root")
    layer = TarBuilder().dir("d", uid=5, gid=6).file("d/f", b"x", mode=0o640, uid=7, gid=8).build()
    root = images.naive_extract(layer, tmp_path / "r", id_shift=1000)
    st = (root / "d/f").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1007, 1008, 0o640)
    assert ((root / "d").stat().st_uid, (root / "d").stat().st_gid) == (1005, 1006)

"""Thin images (issue 13 items 2 and 3): ``thin convert`` ingests an image's layers into a layer repository
in DUCC's layout and writes the thin image naming them; a create of a thin image stacks them from the store's
repository; ``thin publish`` uploads a container's changes to a real S3 (Ceph's RADOS Gateway) and ``thin
publisher`` ingests them into the repository.

Everything is real: images come from Debian's docker-registry, the repository is made an erofs image mounted
from the file (as a CernVM-FS client would show it: read-only), S3 is radosgw, containers run in runc.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import graftfs
from tests.integration.conftest import GRAFTFS, Graftfs, mounts_under
from tests.support import ducc
from tests.support.images import TarBuilder, busybox_layer, corrupt_blob, sha256_digest, write_oci_layout
from tests.support.registry import REGISTRY, Registry, start_registry
from tests.support.rgw import RGW, free_port, processes_using, start_rgw
from tests.support.runc import run_in_rootfs, runc_binary

pytestmark = [
    pytest.mark.skipif(
        not (Path(REGISTRY).exists() and shutil.which("skopeo")), reason="needs docker-registry and skopeo"
    ),
    pytest.mark.skipif(not Path(ducc.MKFS_EROFS).exists(), reason="needs mkfs.erofs (erofs-utils)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="mounts erofs and overlays"),
]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with start_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


def _base() -> bytes:
    return busybox_layer(
        TarBuilder()
        .file("etc/motd", b"from the base\n")
        .file("etc/old.conf", b"deleted above\n")
        .dir("opt")
        .dir("opt/dir")
        .file("opt/dir/a", b"a\n")
        .file("opt/dir/b", b"b\n")
    )


def _app_layers() -> list[bytes]:
    """busybox with a few files, an application layer, and one that deletes (a whiteout, an opaque dir)."""
    return [
        _base(),
        TarBuilder().dir("app").file("app/run.sh", b"#!/bin/sh\necho running\n", mode=0o755).build(),
        TarBuilder()
        .dir("etc")
        .whiteout("etc/old.conf")
        .dir("opt")
        .dir("opt/dir")
        .opaque("opt/dir")
        .file("opt/dir/c", b"c\n")
        .build(),
    ]


class Pushed:
    def __init__(self, url: str, digests: list[str]) -> None:
        self.url = url
        self.digests = digests


def _push(registry: Registry, work: Path, repo: str, tars: list[bytes]) -> Pushed:
    info = write_oci_layout(
        work / repo.replace("/", "_"),
        tars,
        tag="1",
        config={"Cmd": ["/app/run.sh"], "WorkingDir": "/app", "User": "0:0", "Entrypoint": ["/bin/sh", "-c"]},
        env=["PATH=/bin", "GREETING=hello"],
    )
    registry.push(info.path, "1", repo)
    return Pushed(registry.url(repo, "1"), info.layer_digests)


@pytest.fixture(scope="module")
def app(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    return _push(registry, tmp_path_factory.mktemp("app"), "team/app", _app_layers())


def _convert(g: Graftfs, registry: Registry, url: str, repo: Path, output: str, *flags: str) -> dict[str, object]:
    out = g.run(
        "thin",
        "convert",
        url,
        "--repository",
        str(repo),
        "--output",
        output,
        *flags,
        "--insecure-registry",
        registry.host,
    ).stdout
    doc = json.loads(out)
    assert isinstance(doc, dict)
    return doc


def _layout_image(path: Path, tag: str) -> tuple[dict[str, object], bytes]:
    """The config and the only layer's blob of the image tagged ``tag`` in the layout at ``path``."""
    index = json.loads((path / "index.json").read_text())
    (entry,) = [m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == tag]
    blobs = path / "blobs" / "sha256"
    manifest = json.loads((blobs / entry["digest"][7:]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"][7:]).read_bytes())
    (layer,) = manifest["layers"]
    return config, (blobs / layer["digest"][7:]).read_bytes()


def _descriptor(path: Path, tag: str) -> dict[str, object]:
    import gzip

    _, blob = _layout_image(path, tag)
    return layer_descriptor(gzip.decompress(blob))


def layer_descriptor(layer_tar: bytes) -> dict[str, object]:
    """The thin image descriptor a layer holds, which must be its only file (``thin.json``)."""
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(layer_tar)) as tar:
        assert tar.getnames() == ["thin.json"]
        member = tar.extractfile("thin.json")
        assert member is not None
        doc = json.loads(member.read())
    assert isinstance(doc, dict)
    return doc


def _check_app(rootfs: Path) -> None:
    assert (rootfs / "etc/motd").read_text() == "from the base\n"
    assert not (rootfs / "etc/old.conf").exists()
    assert sorted(os.listdir(rootfs / "opt/dir")) == ["c"]
    assert (rootfs / "app/run.sh").stat().st_mode & 0o777 == 0o755
    found = [n for _, dirs, files in os.walk(rootfs) for n in dirs + files]
    assert not [n for n in found if n.startswith(".wh.")]
    assert not (rootfs / "thin.json").exists()


def test_convert_then_create_the_thin_image_and_run_it(workdir: Path, registry: Registry, app: Pushed) -> None:
    repo_src = workdir / "unpacked.example.org"
    repo_src.mkdir()
    g = Graftfs(workdir / "store")
    out = workdir / "thin"
    doc = _convert(g, registry, app.url, repo_src, f"oci://{out}:1")
    assert doc["layers"] == [d[7:] for d in app.digests]
    # DUCC's layout, with the metadata that marks a layer complete, and nothing else in .layers/<hh>/.
    for digest in app.digests:
        entry = repo_src / ".layers" / digest[7:9] / digest[7:]
        assert (entry / "layerfs").is_dir()
        (info,) = json.loads((entry / ".metadata/layers.json").read_text())
        assert info["compressed-diff-digest"] == digest
        assert sorted(os.listdir(entry.parent)) == [digest[7:]]
    assert (ducc.layer_dir(repo_src, app.digests[2]) / "etc/.wh.old.conf").is_file()  # DUCC keeps it a file
    descriptor = _descriptor(out, "1")
    assert descriptor["origin"] == app.url
    assert descriptor["layers"] == [
        {"digest": d[7:], "url": f"cvmfs://unpacked.example.org/.layers/{d[7:9]}/{d[7:]}/layerfs"} for d in app.digests
    ]
    config, _ = _layout_image(out, "1")
    container = config["config"]
    assert isinstance(container, dict)
    assert container["Env"] == ["PATH=/bin", "GREETING=hello", "CVMFS_IMAGE=true"]
    assert (container["Cmd"], container["Entrypoint"]) == (["/app/run.sh"], ["/bin/sh", "-c"])
    assert (container["WorkingDir"], container["User"]) == ("/app", "0:0")
    # Converting again fetches no layer and writes the same image.
    before = registry.log.stat().st_size
    again = _convert(g, registry, app.url, repo_src, f"oci://{out}:1")
    assert again["manifest"] == doc["manifest"]
    asked = registry.log.read_bytes()[before:].decode(errors="replace")
    assert not [d for d in app.digests if d in asked]

    with ducc.erofs(repo_src, workdir / "repo.erofs", workdir / "repo") as repo:
        g.run("init-store", "--layer-repository", str(repo))
        spec = g.create(f"oci://{out}:1", "c1")
        process = spec["process"]
        assert isinstance(process, dict)
        assert "GREETING=hello" in process["env"]
        assert g.volumes() == set()  # nothing pulled: every layer is the repository's
        rootfs = g.rootfs("c1")
        _check_app(rootfs)
        if runc_binary() is not None:
            result = run_in_rootfs(rootfs, ["/bin/sh", "-c", "cat /etc/motd; /app/run.sh; ls /opt/dir"])
            assert result.stdout == "from the base\nrunning\nc\n"
        # The same thin image from a registry.
        registry.push(out, "1", "team/app-thin")
        g.create(registry.url("team/app-thin", "1"), "c3", "--insecure-registry", registry.host)
        _check_app(g.rootfs("c3"))
        g.run("delete", "c3")
        # The Python API too.
        store = graftfs.Store(str(g.store))
        image = store.create(f"oci://{out}:1", "c2", graftfs.CreateOptions())
        assert image.layers_built == 0
        assert "GREETING=hello" in image.env
        _check_app(Path(image.rootfs))
        for image_id in ("c1", "c2"):
            g.run("delete", image_id)
        assert mounts_under(g.store) == []


def test_a_thin_image_with_a_missing_layer_is_refused_naming_it(workdir: Path, registry: Registry, app: Pushed) -> None:
    repo_src = workdir / "repo-src"
    repo_src.mkdir()
    g = Graftfs(workdir / "store")
    _convert(g, registry, app.url, repo_src, f"oci://{workdir}/thin:1")
    missing = repo_src / ".layers" / app.digests[1][7:9] / app.digests[1][7:]
    shutil.rmtree(missing)
    with ducc.erofs(repo_src, workdir / "repo.erofs", workdir / "repo") as repo:
        g.run("init-store", "--layer-repository", str(repo))
        line = g.fails("create", f"oci://{workdir}/thin:1", "c1")
        assert app.digests[1][7:] in line
        assert app.digests[0][7:] not in line and app.digests[2][7:] not in line
        assert "not in the layer repository" in line
        assert not (g.store / "images" / "c1").exists()
        assert mounts_under(g.store) == []


def test_a_store_without_a_repository_refuses_a_thin_image(workdir: Path, registry: Registry, app: Pushed) -> None:
    repo_src = workdir / "repo-src"
    repo_src.mkdir()
    g = Graftfs(workdir / "store")
    _convert(g, registry, app.url, repo_src, f"oci://{workdir}/thin:1")
    g.run("init-store")
    line = g.fails("create", f"oci://{workdir}/thin:1", "c1")
    assert "thin image" in line and "no layer repository" in line
    # A descriptor that is not JSON: one line too.
    bad = workdir / "bad.tar"
    bad.write_bytes(TarBuilder().file("thin.json", b"{not json").build())
    line = g.fails("create", str(bad), "c2")
    assert "thin.json" in line and "not a thin image descriptor" in line


def test_five_concurrent_converts_of_overlapping_images_keep_one_copy_of_each_layer(
    workdir: Path, registry: Registry
) -> None:
    base = _base()
    middle = TarBuilder().dir("app").file("app/shared", b"shared\n").build()
    images = [
        _push(
            registry, workdir / f"src{i}", f"team/overlap{i}", [base, middle, TarBuilder().file(f"f{i}", b"x").build()]
        )
        for i in range(5)
    ]
    repo_src = workdir / "repo"
    repo_src.mkdir()
    g = Graftfs(workdir / "store")
    procs = [
        subprocess.Popen(
            [
                *GRAFTFS,
                "--store",
                str(g.store),
                "thin",
                "convert",
                img.url,
                "--repository",
                str(repo_src),
                "--output",
                f"oci://{workdir}/out:{i}",
                "--insecure-registry",
                registry.host,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, img in enumerate(images)
    ]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, (out, err)
    wanted = {d for img in images for d in img.digests}
    assert len(wanted) == 7  # two shared layers, five of their own
    found = {
        f"sha256:{name}" for hh in os.listdir(repo_src / ".layers") for name in os.listdir(repo_src / ".layers" / hh)
    }
    assert found == wanted  # one directory each: no temporary build, no lock file left
    for digest in wanted:
        assert (repo_src / ".layers" / digest[7:9] / digest[7:] / ".metadata/layers.json").is_file()
    # One output layout, written by all five: each tag is there.
    index = json.loads((workdir / "out/index.json").read_text())
    tags = sorted(m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"])
    assert tags == [str(i) for i in range(5)]


# -- publishing through S3 (a real RADOS Gateway) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def rgw() -> Iterator[RGW]:
    with start_rgw() as server:
        yield server
    assert processes_using(server.workdir / "ceph.conf") == []


def _s3_env(rgw: RGW, **extra: str) -> dict[str, str]:
    _, access_key, secret_key = rgw
    return {"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key, **extra}


_buckets = iter(range(1_000_000))


@pytest.fixture
def bucket(rgw: RGW) -> str:
    from graftfs.repository.s3 import S3Client

    endpoint, access_key, secret_key = rgw
    name = f"thin-{next(_buckets)}-{os.getpid()}"
    with S3Client(name, endpoint=endpoint, access_key=access_key, secret_key=secret_key, environ={}) as c:
        assert c.create_bucket()
    return name


def _repo_tree(repo: Path) -> set[str]:
    return {os.path.relpath(os.path.join(b, n), repo) for b, dirs, files in os.walk(repo) for n in dirs + files}


def test_publish_a_container_s_changes_and_create_the_new_thin_image(
    workdir: Path, registry: Registry, app: Pushed, rgw: RGW, bucket: str
) -> None:
    from graftfs.repository.s3 import S3Client

    repo_src = workdir / "unpacked.example.org"
    repo_src.mkdir()
    g = Graftfs(workdir / "store", env=_s3_env(rgw))
    _convert(g, registry, app.url, repo_src, f"oci://{workdir}/thin:1")
    s3 = ("--s3-endpoint", rgw.endpoint, "--s3-bucket", bucket)
    mnt = workdir / "repo"
    with ducc.erofs(repo_src, workdir / "repo.erofs", mnt) as repo:
        g.run("init-store", "--layer-repository", str(repo))
        g.create(f"oci://{workdir}/thin:1", "c1")
        rootfs = g.rootfs("c1")
        # A container that adds, changes and deletes files, and replaces a whole directory.
        script = (
            "echo added > /etc/added; echo changed > /etc/motd; rm /app/run.sh; "
            "rm -r /opt/dir; mkdir /opt/dir; echo new > /opt/dir/z"
        )
        if runc_binary() is not None:
            run_in_rootfs(rootfs, ["/bin/sh", "-c", script])
        else:
            subprocess.run(["chroot", str(rootfs), "/bin/sh", "-c", script], check=True)
        expected = ducc.tree(rootfs)

        doc = json.loads(g.run("thin", "publish", "c1", "--output", f"oci://{workdir}/thin:2", *s3).stdout)
        assert doc["uploaded"] is True
        layer = str(doc["layer"])
        endpoint, access_key, secret_key = rgw
        with S3Client(bucket, endpoint=endpoint, access_key=access_key, secret_key=secret_key, environ={}) as c:
            keys = [o.key for o in c.list_objects("layers/")]
            assert keys == [f"layers/{layer}"]
            data = io_bytes(c, keys[0])
        assert sha256_digest(data) == f"sha256:{layer}"
        # The same changes again: nothing new is uploaded, and the same thin image is written.
        again = json.loads(g.run("thin", "publish", "c1", "--output", f"oci://{workdir}/thin:2b", *s3).stdout)
        assert (again["uploaded"], again["layer"], again["manifest"]) == (False, layer, doc["manifest"])
        descriptor = _descriptor(workdir / "thin", "2")
        listed = descriptor["layers"]
        assert isinstance(listed, list)
        assert [lay["digest"] for lay in listed] == [*(d[7:] for d in app.digests), layer]
        g.run("delete", "c1")

    # The publisher takes it into the repository.
    publisher = g.run("thin", "publisher", "--once", "--repository", str(repo_src), *s3)
    assert publisher.stdout == ""
    layerfs = ducc.layer_dir(repo_src, f"sha256:{layer}")
    assert (layerfs / "etc/added").read_text() == "added\n"
    assert (layerfs / "app/.wh.run.sh").is_file()  # as DUCC keeps them: plain files
    assert (layerfs / "opt/dir/.wh..wh..opq").is_file()
    before = _repo_tree(repo_src)
    assert g.run("thin", "publisher", "--once", "--repository", str(repo_src), *s3).stdout == ""
    assert _repo_tree(repo_src) == before  # a second pass has nothing to do

    # A new revision of the repository (as CernVM-FS would publish it), and the new thin image on it.
    with ducc.erofs(repo_src, workdir / "repo2.erofs", mnt):
        g.create(f"oci://{workdir}/thin:2", "c2")
        got = ducc.tree(g.rootfs("c2"))
        assert _comparable(got) == _comparable(expected)
        assert not (g.rootfs("c2") / "app/run.sh").exists()
        assert sorted(os.listdir(g.rootfs("c2") / "opt/dir")) == ["z"]
        if runc_binary() is not None:
            out = run_in_rootfs(g.rootfs("c2"), ["/bin/sh", "-c", "cat /etc/added /etc/motd /opt/dir/z"]).stdout
            assert out == "added\nchanged\nnew\n"
        g.run("delete", "c2")
        assert mounts_under(g.store) == []


def io_bytes(client: object, key: str) -> bytes:
    import io

    buf = io.BytesIO()
    client.get_object(key, buf)  # type: ignore[attr-defined]
    return buf.getvalue()


def _comparable(tree: dict[str, tuple[int, int, int, int, bytes | str]]) -> dict[str, object]:
    """Mode, owner and content of every entry (times differ: copy-ups, and directories the overlay shows)."""
    return {
        k: (mode, uid, content) for k, (mode, uid, _size, _mtime, content) in tree.items() if not k.startswith("dev")
    }


def test_publish_waits_for_the_publisher(workdir: Path, registry: Registry, app: Pushed, rgw: RGW, bucket: str) -> None:
    repo_src = workdir / "repo"
    repo_src.mkdir()
    g = Graftfs(workdir / "store", env=_s3_env(rgw))
    _convert(g, registry, app.url, repo_src, f"oci://{workdir}/thin:1")
    s3 = ("--s3-endpoint", rgw.endpoint, "--s3-bucket", bucket)
    with ducc.erofs(repo_src, workdir / "repo.erofs", workdir / "mnt") as repo:
        g.run("init-store", "--layer-repository", str(repo))
        g.create(f"oci://{workdir}/thin:1", "c1")
        (g.rootfs("c1") / "new").write_text("x\n")
        waiting = subprocess.Popen(
            [
                *GRAFTFS,
                "--store",
                str(g.store),
                "thin",
                "publish",
                "c1",
                "--wait",
                "--repository",
                str(repo_src),
                "--output",
                f"oci://{workdir}/thin:2",
                *s3,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **_s3_env(rgw)},
        )
        try:
            deadline = 60
            import time

            start = time.monotonic()
            while True:
                g.run("thin", "publisher", "--once", "--repository", str(repo_src), *s3)
                if waiting.poll() is not None or time.monotonic() - start > deadline:
                    break
                time.sleep(0.3)
            out, err = waiting.communicate(timeout=30)
        finally:
            if waiting.poll() is None:
                waiting.kill()
                waiting.wait()
        assert waiting.returncode == 0, (out, err)
        layer = json.loads(out)["layer"]
        assert (ducc.layer_dir(repo_src, f"sha256:{layer}") / "new").read_text() == "x\n"
        g.run("delete", "c1")


def test_a_corrupt_layer_in_s3_is_reported_and_not_ingested(workdir: Path, rgw: RGW, bucket: str) -> None:
    from graftfs.repository.s3 import S3Client

    repo = workdir / "repo"
    (repo / ".layers").mkdir(parents=True)
    g = Graftfs(workdir / "store", env=_s3_env(rgw))
    claimed = sha256_digest(b"what the key says")[7:]
    endpoint, access_key, secret_key = rgw
    with S3Client(bucket, endpoint=endpoint, access_key=access_key, secret_key=secret_key, environ={}) as c:
        c.put_object(f"layers/{claimed}", b"\x1f\x8b corrupt bytes")
    line = g.fails(
        "thin", "publisher", "--once", "--repository", str(repo), "--s3-endpoint", rgw.endpoint, "--s3-bucket", bucket
    )
    assert f"layers/{claimed}" in line and "digest mismatch" in line
    assert _repo_tree(repo) == {".layers"}


def test_s3_unreachable_or_refusing_the_credentials_is_one_line_and_writes_nothing(
    workdir: Path, registry: Registry, app: Pushed, rgw: RGW, bucket: str
) -> None:
    repo_src = workdir / "repo"
    repo_src.mkdir()
    g = Graftfs(workdir / "store", env=_s3_env(rgw, AWS_SECRET_ACCESS_KEY="not-the-secret-xyz"))
    _convert(g, registry, app.url, repo_src, f"oci://{workdir}/thin:1")
    with ducc.erofs(repo_src, workdir / "repo.erofs", workdir / "mnt") as repo:
        g.run("init-store", "--layer-repository", str(repo))
        g.create(f"oci://{workdir}/thin:1", "c1")
        (g.rootfs("c1") / "new").write_text("x\n")
        out = workdir / "out"
        line = g.fails(
            "thin", "publish", "c1", "--output", f"oci://{out}:2", "--s3-endpoint", rgw.endpoint, "--s3-bucket", bucket
        )
        assert "not-the-secret" not in line
        assert "SignatureDoesNotMatch" in line or "denied" in line.lower(), line
        assert not out.exists()
        line = g.fails(
            "thin",
            "publish",
            "c1",
            "--output",
            f"oci://{out}:2",
            "--s3-endpoint",
            f"http://127.0.0.1:{free_port()}",
            "--s3-bucket",
            bucket,
        )
        assert "127.0.0.1" in line
        assert not out.exists()
        assert os.listdir(g.store / "tmp") == []
        before = _repo_tree(repo_src)
        line = g.fails(
            "thin",
            "publisher",
            "--once",
            "--repository",
            str(repo_src),
            "--s3-endpoint",
            f"http://127.0.0.1:{free_port()}",
            "--s3-bucket",
            bucket,
        )
        assert "127.0.0.1" in line
        assert _repo_tree(repo_src) == before
        g.run("delete", "c1")
        # Only a thin image's changes are published as a thin image.
        g.create(app.url, "plain", "--insecure-registry", registry.host)
        line = g.fails("thin", "publish", "plain", "--output", f"oci://{out}:2", "--s3-bucket", bucket)
        assert "not created from a thin image" in line
        assert "not found" in g.fails("thin", "publish", "nosuch", "--output", f"oci://{out}:2", "--s3-bucket", bucket)
        g.run("delete", "plain")


def test_a_warm_create_of_a_small_one_layer_ordinary_image_imports_nothing_of_thin_images(gfs: Graftfs) -> None:
    import sys

    info = write_oci_layout(gfs.store.parent / "small", [TarBuilder().file("thin.json", b"{}").file("x", b"").build()])
    gfs.create(info.url(), "first")  # cold: its small blob is looked into once (two files: not thin)
    assert len(gfs.volumes()) == 1
    argv = [sys.executable, "-X", "importtime", *GRAFTFS, "--store", str(gfs.store), "create", info.url(), "second"]
    result = subprocess.run(argv, capture_output=True, text=True, check=True)
    imported = {line.rpartition("|")[2].strip() for line in result.stderr.splitlines() if line.startswith("import")}
    assert not {name for name in imported if name.startswith("graftfs.repository")}
    for image_id in ("first", "second"):
        gfs.run("delete", image_id)


def test_convert_and_publish_from_python(
    workdir: Path, registry: Registry, app: Pushed, rgw: RGW, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Python API's thin_convert and Store.thin_publish, the calls the commands make: convert, create the
    thin image, publish a container's changes (twice: nothing uploaded the second time), waiting for a
    publisher, and create the published image from the repository's next revision."""
    import threading

    from graftfs.repository.publish import publisher_pass

    repo_src = workdir / "unpacked.example.org"
    repo_src.mkdir()
    out = workdir / "thin"
    converted = graftfs.thin_convert(app.url, str(repo_src), f"oci://{out}:1", insecure_registries=[registry.host])
    assert isinstance(converted, graftfs.ThinConverted)
    assert converted.layers == [d[7:] for d in app.digests]
    assert converted.image.origin == app.url
    assert converted.image.layers[0] == graftfs.ThinLayer(
        app.digests[0][7:], f"cvmfs://unpacked.example.org/.layers/{app.digests[0][7:9]}/{app.digests[0][7:]}/layerfs"
    )
    # The command is the same call: the same image (and nothing fetched again).
    g = Graftfs(workdir / "store")
    assert _convert(g, registry, app.url, repo_src, f"oci://{out}:1")["manifest"] == converted.manifest
    with pytest.raises(graftfs.InvalidArgument, match="oci:///PATH"):
        graftfs.thin_convert(app.url, str(repo_src), f"docker://{registry.host}/x:1")
    with pytest.raises(graftfs.FailedPrecondition, match="not a directory"):
        graftfs.thin_convert(app.url, str(workdir / "nowhere"), f"oci://{out}:1")

    endpoint, access_key, secret_key = rgw
    with ducc.erofs(repo_src, workdir / "repo.erofs", workdir / "repo") as repo:
        store = graftfs.Store(str(g.store))
        store.init(layer_repository=str(repo))
        image = store.create(f"oci://{out}:1", "c1", graftfs.CreateOptions())
        assert image.layers_built == 0
        (Path(image.rootfs) / "etc/added").write_text("from python\n")
        with pytest.raises(graftfs.InvalidArgument, match="compression"):
            store.thin_publish("c1", f"oci://{out}:2", bucket, endpoint=endpoint, compression="xz")
        with pytest.raises(graftfs.FailedPrecondition, match="not found"):
            store.thin_publish(
                "nosuch", f"oci://{out}:2", bucket, endpoint=endpoint, access_key=access_key, secret_key=secret_key
            )
        assert not (out / "index.json").read_text().count('"2"')

        # A publisher runs meanwhile (as on a Stratum 0); the publish returns once it has ingested the layer.
        stop = threading.Event()

        def publisher() -> None:
            from graftfs.log import NULL
            from graftfs.repository.s3 import S3Client

            with S3Client(
                bucket, endpoint=endpoint, access_key=access_key, secret_key=secret_key, environ={}
            ) as client:
                while not stop.is_set():
                    publisher_pass(client, str(repo_src), NULL)
                    stop.wait(0.2)

        thread = threading.Thread(target=publisher)
        thread.start()
        try:
            published = store.thin_publish(
                "c1",
                f"oci://{out}:2",
                bucket,
                endpoint=endpoint,
                access_key=access_key,
                secret_key=secret_key,
                wait_repository=str(repo_src),
                wait_timeout=60,
            )
        finally:
            stop.set()
            thread.join()
        assert isinstance(published, graftfs.ThinPublished)
        assert published.uploaded is True and published.key == f"layers/{published.layer.digest}"
        assert (ducc.layer_dir(repo_src, f"sha256:{published.layer.digest}") / "etc/added").is_file()
        # Credentials from the AWS_* variables, as the AWS tools take them.
        for name, value in _s3_env(rgw).items():
            monkeypatch.setenv(name, value)
        again = store.thin_publish("c1", f"oci://{out}:2", bucket, endpoint=endpoint)
        assert (again.uploaded, again.layer, again.manifest) == (False, published.layer, published.manifest)
        listed = _descriptor(out, "2")["layers"]
        assert isinstance(listed, list)
        assert [lay["digest"] for lay in listed] == [*converted.layers, published.layer.digest]
        store.delete("c1")

    with ducc.erofs(repo_src, workdir / "repo2.erofs", workdir / "repo"):
        image = store.create(f"oci://{out}:2", "c2", graftfs.CreateOptions())
        assert (Path(image.rootfs) / "etc/added").read_text() == "from python\n"
        _check_app(Path(image.rootfs))
        store.delete("c2")
        assert mounts_under(g.store) == []


def test_a_cold_create_of_a_small_one_layer_ordinary_image_fetches_its_blob_once(
    gfs: Graftfs, registry: Registry
) -> None:
    """The create looks into a small one-layer image's blob (is it thin?) and, finding an ordinary layer,
    unpacks it from the bytes it read: the registry's log shows one GET of the blob, not two."""
    tar = TarBuilder().dir("etc").file("etc/motd", b"small\n").file("thin.json", b"{}").build()
    info = write_oci_layout(gfs.store.parent / "small", [tar], tag="1")
    registry.push(info.path, "1", "team/small")
    (blob,) = info.layer_digests
    before = registry.log.stat().st_size
    gfs.create(registry.url("team/small", "1"), "c1", "--insecure-registry", registry.host)
    asked = registry.log.read_bytes()[before:].decode(errors="replace")
    assert len(re.findall(rf'"GET /v2/team/small/blobs/{blob} ', asked)) == 1, asked
    assert f"HEAD /v2/team/small/blobs/{blob}" not in asked
    assert (gfs.rootfs("c1") / "etc/motd").read_text() == "small\n"
    assert len(gfs.volumes()) == 1
    gfs.run("delete", "c1")


def test_a_small_one_layer_image_whose_blob_is_corrupt_gives_the_pull_s_digest_error(gfs: Graftfs) -> None:
    """The bytes read to look into the layer are verified by the pull as any blob's: a corrupt one is the
    usual one line (GrootFS's text), and leaves no volume."""
    tar = TarBuilder().dir("etc").file("etc/motd", b"small\n" * 512).build()
    info = write_oci_layout(gfs.store.parent / "corrupt", [tar])
    corrupt_blob(info, 0)
    line = gfs.fails("create", info.url(), "bad")
    assert line.startswith(f"pulling the image: streaming blob `{info.layer_digests[0]}`: layerID digest mismatch")
    assert gfs.volumes() == set()
    assert gfs.run("list").stdout == "Store empty\n"


def test_the_publisher_can_ingest_through_a_command(workdir: Path, rgw: RGW, bucket: str) -> None:
    """As on a real Stratum 0 with ``--ingest-command 'cvmfs_server ingest --catalog -t - -b {path} REPO'``;
    GNU tar stands in for cvmfs_server here (both extract the tar as it is, ``.wh.`` files kept)."""
    from graftfs.repository.s3 import S3Client
    from tests.support.images import compress

    repo = workdir / "repo"
    (repo / ".layers").mkdir(parents=True)
    tar = TarBuilder().dir("etc").file("etc/hello", b"hi\n").whiteout("etc/gone").build()
    blob = compress(tar, "gzip")
    digest = sha256_digest(blob)
    endpoint, access_key, secret_key = rgw
    with S3Client(bucket, endpoint=endpoint, access_key=access_key, secret_key=secret_key, environ={}) as c:
        c.put_object(f"layers/{digest[7:]}", blob)
    g = Graftfs(workdir / "store", env=_s3_env(rgw))
    s3 = ("--s3-endpoint", rgw.endpoint, "--s3-bucket", bucket)
    command = f'sh -c \'mkdir -p "$0/{{path}}" && tar -x --numeric-owner -C "$0/{{path}}"\' {repo}'
    line = g.fails("thin", "publisher", "--once", "--repository", str(repo), *s3, "--ingest-command", "false {hex}")
    assert f"layers/{digest[7:]}" in line and "ingest command false" in line and "exit status 1" in line
    assert (
        g.run("thin", "publisher", "--once", "--repository", str(repo), *s3, "--ingest-command", command).stdout == ""
    )
    layerfs = ducc.layer_dir(repo, digest)
    assert (layerfs / "etc/hello").read_text() == "hi\n"
    assert (layerfs / "etc/.wh.gone").is_file()
    # Already there (its layerfs): the next pass runs no command.
    assert (
        g.run("thin", "publisher", "--once", "--repository", str(repo), *s3, "--ingest-command", "false").stdout == ""
    )


def test_a_store_with_id_mappings_stacks_a_thin_image_s_layers_idmapped(registry: Registry, app: Pushed) -> None:
    from tests.support.runc import traversable_tmpdir

    mapping = "0:100000:65536"
    with traversable_tmpdir() as base:
        src = base / "repo-src"
        src.mkdir()
        g = Graftfs(base / "store")
        _convert(g, registry, app.url, src, f"oci://{base}/thin:1")
        with ducc.erofs(src, base / "repo.erofs", base / "repo") as repo:
            g.run("init-store", "--uid-mapping", mapping, "--gid-mapping", mapping, "--layer-repository", str(repo))
            g.create(f"oci://{base}/thin:1", "c1")
            rootfs = g.rootfs("c1")
            _check_app(rootfs)
            assert os.stat(rootfs / "etc/motd")[4:6] == (100000, 100000)
            if runc_binary() is not None:
                mapped = [(0, 100000, 65536)]
                out = run_in_rootfs(
                    rootfs, ["/bin/sh", "-c", "stat -c '%u' /etc/motd"], uid_mappings=mapped, gid_mappings=mapped
                ).stdout
                assert out == "0\n"
            # Idmapped binds cannot be handed to a runtime, and a thin image has nothing to pull instead.
            line = g.fails("create", "--without-mount", f"oci://{base}/thin:1", "c2")
            assert "thin image" in line and "cannot be used in place" in line
            g.run("delete", "c1")
            assert mounts_under(g.store) == []

"""Thin images through Docker (issue 14, "Thin"): ``graftfs thin convert`` makes a thin image, dockerd 20.10 with
``graftfs serve docker-graphdriver`` loads and runs it (the snapshot core stacks the repository's layers in
place of the layer holding ``/thin.json``), and ``docker commit`` of its container publishes the changes to S3
(Ceph's RADOS Gateway) from the plugin's ``Diff``: the committed image is thin again, and once ``graftfs thin
publisher`` has ingested the new layer, it runs with exactly the container's changes. With the plugin's
``--wait``, a commit returns once the publisher has ingested its layer: a legacy build on the thin image works,
each step published and waited for.

The layer repository is a directory only root can write, where the publisher ingests (a Stratum 0's), shown
to the store through a read-only bind mount of it (a CernVM-FS client's view: the store cannot write it, and
sees a published layer at once). Everything is real: dockerd in its private mount namespace
(:mod:`tests.support.dockerd`), radosgw (:mod:`tests.support.rgw`), skopeo to turn the OCI layout into the
``docker save`` archive dockerd 20.10 loads."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from graftfs.mount import kernel
from tests.integration.test_thin import _app_layers, layer_descriptor
from tests.support import dockerd as dk
from tests.support.images import write_oci_layout
from tests.support.rgw import missing_tools, start_rgw

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="dockerd runs as root"),
    pytest.mark.skipif(not os.path.exists(dk.DOCKERD), reason="Debian's docker.io is not installed"),
    pytest.mark.skipif(not shutil.which("skopeo"), reason="needs skopeo"),
    pytest.mark.skipif(bool(missing_tools()), reason="needs Ceph's radosgw, ceph-mon and ceph-osd"),
]


def _graftfs(*args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [*dk.GRAFTFS, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False
    )
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def _saved(d: dk.Dockerd, ref: str) -> list[bytes]:
    """The layer tars of ``docker save REF``, bottom first."""
    archive = d.docker("save", ref).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        return [tar.extractfile(name).read() for name in manifest[0]["Layers"]]  # type: ignore[union-attr]


#: What dockerd's init layer and runtime put in every container: not the image's, not the container's changes.
_RUNTIME = ("etc/hosts", "etc/hostname", "etc/resolv.conf", ".dockerenv", "dev", "proc", "sys", "etc/mtab")


def _exported(d: dk.Dockerd, container: str) -> dict[str, tuple[str, int, int, bytes]]:
    """``docker export``: every entry's type, mode, owner and content (or link target), but the runtime's."""
    out: dict[str, tuple[str, int, int, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(d.docker("export", container).stdout)) as tar:
        for m in tar.getmembers():
            name = m.name.rstrip("/")
            if any(name == p or name.startswith(p + "/") for p in _RUNTIME):
                continue
            f = tar.extractfile(m) if m.isfile() else None
            content = f.read() if f is not None else m.linkname.encode()
            out[name] = (m.type.decode(), m.mode, m.uid, content)
    return out


def test_docker_runs_a_thin_image_and_commit_publishes_its_container_s_changes() -> None:
    work = Path(tempfile.mkdtemp(prefix="gfs-dt-"))
    repo_src = work / "unpacked.example.org"  # the publisher's (Stratum 0): root's only
    repo = work / "repo"  # the store's view of it: read-only
    try:
        tars = _app_layers()
        info = write_oci_layout(work / "app", tars, tag="1", env=["PATH=/bin", "GREETING=hello"])
        repo_src.mkdir(mode=0o755)
        converted = json.loads(
            _graftfs(
                "thin",
                "convert",
                f"oci://{work}/app:1",
                "--repository",
                str(repo_src),
                "--output",
                f"oci://{work}/thin:1",
            )
        )
        assert converted["layers"] == [d[7:] for d in info.layer_digests]
        archive = work / "thin.tar"
        subprocess.run(
            ["skopeo", "copy", "--quiet", f"oci:{work}/thin:1", f"docker-archive:{archive}:thin:1"],
            check=True,
            capture_output=True,
        )
        repo.mkdir()
        subprocess.run(["mount", "--bind", str(repo_src), str(repo)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(repo)], check=True)
        (work / "dk").mkdir()
        _graftfs("--store", str(work / "dk" / "store"), "init-store", "--layer-repository", str(repo))

        with start_rgw() as rgw:
            from graftfs.repository.s3 import S3Client

            endpoint, access_key, secret_key = rgw
            creds = {"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
            s3 = ("--s3-endpoint", endpoint, "--s3-bucket", "layers")
            bucket = S3Client("layers", endpoint=endpoint, access_key=access_key, secret_key=secret_key, environ={})
            with bucket:
                assert bucket.create_bucket()
            plugin = ("--publish-commits", *s3)
            with dk.start_dockerd(work / "dk", plugin_args=plugin, plugin_env=creds, plugin_log_level="info") as d:
                assert "Loaded image: thin:1" in d.out("load", "-i", str(archive))
                # Its only layer holds /thin.json; the container shows the repository's layers instead.
                script = "cat /etc/motd; /app/run.sh; ls /opt/dir; echo $GREETING; test -e /thin.json || echo no-json"
                assert d.out("run", "--rm", "thin:1", "sh", "-c", script) == (
                    "from the base\nrunning\nc\nhello\nno-json\n"
                )
                # A container that adds, changes and deletes files, and replaces a whole directory.
                changes = (
                    "echo added > /etc/added; echo changed > /etc/motd; rm /app/run.sh; "
                    "rm -r /opt/dir; mkdir /opt/dir; echo new > /opt/dir/z"
                )
                d.docker("run", "--name", "changer", "thin:1", "sh", "-c", changes)
                diff = set(d.out("diff", "changer").splitlines())
                assert {"A /etc/added", "C /etc/motd", "D /app/run.sh", "C /opt/dir", "A /opt/dir/z"} <= diff, diff
                expected = _exported(d, "changer")

                d.docker("commit", "changer", "thin:2")
                with bucket:
                    keys = [o.key for o in bucket.list_objects("layers/")]
                    assert len(keys) == 1, keys
                    data = io.BytesIO()
                    bucket.get_object(keys[0], data)
                layer = keys[0][len("layers/") :]
                assert hashlib.sha256(data.getvalue()).hexdigest() == layer  # under its digest
                # The committed image is thin again: its new layer is the descriptor with the layer on top, and
                # its first layer is the loaded one, byte for byte.
                saved = _saved(d, "thin:2")
                assert len(saved) == 2 and saved[0] == _saved(d, "thin:1")[0]
                assert list(dk.archive_layers(archive.read_bytes()).values()) == [saved[0]]  # as loaded
                listed = layer_descriptor(saved[1])["layers"]
                assert isinstance(listed, list)
                assert [lay["digest"] for lay in listed] == [*converted["layers"], layer]
                assert listed[-1]["url"] == f"cvmfs://unpacked.example.org/.layers/{layer[:2]}/{layer}/layerfs"

                # Not ingested yet: refused in one line naming the layer, never run on a partial stack.
                early = d.docker("run", "--rm", "thin:2", "true", check=False)
                assert early.returncode != 0
                assert f"1 of its 4 layers not in the layer repository {repo}: {layer}" in early.stderr.decode()

                assert _graftfs("thin", "publisher", "--once", "--repository", str(repo_src), *s3, env=creds) == ""
                script = "cat /etc/added /etc/motd /opt/dir/z; ls /opt/dir; test -e /app/run.sh || echo gone"
                assert d.out("run", "--rm", "thin:2", "sh", "-c", script) == "added\nchanged\nnew\nz\ngone\n"
                d.docker("create", "--name", "again", "thin:2")
                assert _exported(d, "again") == expected  # exactly the container's changes
                d.docker("rm", "again", "changer")

                # With --wait, a commit returns once the publisher (running beside) has ingested the layer: a
                # legacy build's next step, or a run, can use the committed image at once.
                d.stop_plugin()
                d.plugin_args = [*plugin, "--wait", "--wait-timeout-seconds", "120"]
                d.start_plugin()
                publisher = subprocess.Popen(
                    [
                        *dk.GRAFTFS,
                        "thin",
                        "publisher",
                        "--repository",
                        str(repo_src),
                        *s3,
                        "--poll-interval-seconds",
                        "1",
                    ],
                    env={**os.environ, **creds},
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                try:
                    (work / "ctx").mkdir()
                    (work / "ctx" / "Dockerfile").write_text(
                        "FROM thin:2\nRUN echo built > /built && rm /etc/added\nENV STEP=2\nRUN cat /built > /again\n"
                    )
                    d.docker("build", "-t", "built:1", str(work / "ctx"), env={"DOCKER_BUILDKIT": "0"})
                finally:
                    publisher.terminate()
                    publisher.wait(timeout=30)
                script = "cat /built /again /etc/motd; test -e /etc/added || echo gone"
                assert d.out("run", "--rm", "built:1", "sh", "-c", script) == "built\nbuilt\nchanged\ngone\n"
                # Each RUN published (the ENV step changed no file: no layer, nothing published), the image thin.
                saved = _saved(d, "built:1")
                built = layer_descriptor(saved[-1])["layers"]
                assert isinstance(built, list) and len(built) == 6  # thin:2's four, and one for each RUN
                assert len(saved) == 4  # thin:1's /thin.json layer, then one for thin:2 and for each RUN
                d.docker("rmi", "built:1", "thin:2", "thin:1")
                log = d.plugin_log.read_text(errors="replace")
                assert "thin-layer-published" in log and "unexpected-error" not in log, d.logs()
                assert secret_key not in log
    finally:
        # A bind mount of a directory on the same filesystem: found in mountinfo (is_mountpoint compares devices).
        while any(m.point == str(repo) for m in kernel.mountinfo()):
            kernel.unmount(str(repo))
        shutil.rmtree(work, ignore_errors=True)

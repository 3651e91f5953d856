"""Pulling from a real registry (Debian's ``docker-registry``, on 127.0.0.1 over plain HTTP).

Images are written as OCI layouts by tests/support/images.py and pushed with skopeo, which is also how the
Docker schema 2 and multi-platform variants are made.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.integration.conftest import Graftfs
from tests.support.images import (
    TarBuilder,
    busybox_layer,
    host_platform,
    write_oci_layout,
)
from tests.support.registry import REGISTRY, Registry, free_port, start_registry
from tests.support.runc import run_in_rootfs

ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hello from the registry"]

pytestmark = pytest.mark.skipif(
    not (Path(REGISTRY).exists() and shutil.which("skopeo")), reason="needs docker-registry and skopeo"
)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with start_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


def _layers() -> list[bytes]:
    top = (
        TarBuilder()
        .dir("etc")
        .file("etc/motd", b"from the registry\n")
        .dir("app")
        .file("app/run.sh", b"#!/bin/sh\necho running\n", mode=0o755)
    )
    return [busybox_layer(), top.build(), TarBuilder().file("app/version", b"1.2\n").build()]


@pytest.fixture(scope="module")
def app(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """team/app:1.2, three gzip layers, pushed as is (OCI manifest); returns (tag URL, digest URL)."""
    layout = tmp_path_factory.mktemp("layout") / "app"
    write_oci_layout(layout, _layers(), env=ENV, tag="1.2")
    digest = registry.push(layout, "1.2", "team/app")
    shutil.rmtree(layout)
    return registry.url("team/app", "1.2"), registry.url("team/app", digest)


def _create(gfs: Graftfs, registry: Registry, url: str, image_id: str) -> dict[str, object]:
    return gfs.create(url, image_id, "--insecure-registry", registry.host)


def _check_app(gfs: Graftfs, image_id: str) -> None:
    rootfs = gfs.rootfs(image_id)
    assert (rootfs / "etc/motd").read_text() == "from the registry\n"
    assert (rootfs / "app/version").read_text() == "1.2\n"
    assert (rootfs / "app/run.sh").stat().st_mode & 0o777 == 0o755


def test_create_from_a_registry_gives_a_working_rootfs(gfs: Graftfs, registry: Registry, app: tuple[str, str]) -> None:
    doc = _create(gfs, registry, app[0], "by-tag")
    assert doc["process"] == {"user": {"uid": 0, "gid": 0}, "env": ENV, "cwd": ""}
    _check_app(gfs, "by-tag")
    assert len(gfs.volumes()) == 3
    out = run_in_rootfs(gfs.rootfs("by-tag"), ["/bin/sh", "-c", "cat /etc/motd; /app/run.sh"], env=ENV).stdout
    assert out == "from the registry\nrunning\n"
    gfs.run("delete", "by-tag")


def test_pull_by_digest(gfs: Graftfs, registry: Registry, app: tuple[str, str]) -> None:
    _create(gfs, registry, app[1], "by-digest")
    _check_app(gfs, "by-digest")
    gfs.run("delete", "by-digest")


def test_a_second_create_downloads_nothing(gfs: Graftfs, registry: Registry, app: tuple[str, str]) -> None:
    _create(gfs, registry, app[0], "first")
    volumes = gfs.volumes()
    before = registry.blob_requests()
    start = time.monotonic()
    _create(gfs, registry, app[0], "second")
    elapsed = time.monotonic() - start
    assert gfs.volumes() == volumes
    assert registry.blob_requests() - before == 1  # the config, which carries the env; no layer
    assert elapsed < 5, elapsed
    _check_app(gfs, "second")
    gfs.run("delete", "first")
    gfs.run("delete", "second")


def test_docker_schema2_images(gfs: Graftfs, registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> None:
    layout = tmp_path_factory.mktemp("layout") / "v2s2"
    write_oci_layout(layout, _layers(), env=ENV, tag="v2s2")
    digest = registry.push(layout, "v2s2", "team/docker", "--format", "v2s2")
    manifest = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{registry.host}/team/docker@{digest}"],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    layer_types = {layer["mediaType"] for layer in json.loads(manifest)["layers"]}
    assert layer_types == {"application/vnd.docker.image.rootfs.diff.tar.gzip"}
    _create(gfs, registry, registry.url("team/docker", "v2s2"), "docker")
    _check_app(gfs, "docker")
    gfs.run("delete", "docker")


def test_multi_platform_index_picks_the_host(
    gfs: Graftfs, registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> None:
    layout = tmp_path_factory.mktemp("layout") / "multi"
    platforms = [("linux", "s390x", None), host_platform(), ("linux", "arm", "v7")]
    if host_platform()[1] == "s390x":
        platforms[0] = ("linux", "ppc64le", None)
    write_oci_layout(layout, _layers(), env=ENV, tag="multi", platforms=platforms)
    registry.push(layout, "multi", "team/multi", "--all")
    _create(gfs, registry, registry.url("team/multi", "multi"), "multi")
    _check_app(gfs, "multi")
    assert not (gfs.rootfs("multi") / "platform").exists()
    gfs.run("delete", "multi")


def test_a_missing_tag_is_not_found(gfs: Graftfs, registry: Registry, app: tuple[str, str]) -> None:
    url = registry.url("team/app", "nope")
    assert gfs.fails("create", "--insecure-registry", registry.host, url, "missing") == (
        f"{url} does not exist or you do not have permissions to see it."
    )
    url = registry.url("team/nothing-here", "latest")
    assert gfs.fails("create", "--insecure-registry", registry.host, url, "missing") == (
        f"{url} does not exist or you do not have permissions to see it."
    )
    assert not (gfs.store / "images" / "missing").exists()


@pytest.fixture
def front(registry: Registry) -> Iterator[str]:
    """A registry front on another port: blobs are redirected (307) to the real registry, as registries do
    to their CDN; ``private/`` asks for credentials; everything else is passed through."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path.startswith("/v2/private/"):
                self._reply(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": 'Basic realm="x"'})
            elif "/blobs/" in self.path:
                self._reply(307, b"", {"Location": f"http://{registry.host}{self.path}"})
            else:
                req = urllib.request.Request(f"http://{registry.host}{self.path}", headers=dict(self.headers))
                try:
                    with urllib.request.urlopen(req, timeout=10) as resp:
                        status, body, headers = resp.status, resp.read(), resp.headers
                except urllib.error.HTTPError as err:
                    status, body, headers = err.code, err.read(), err.headers
                keep = ("Content-Type", "Docker-Content-Digest")
                self._reply(status, body, {k: headers[k] for k in keep if headers[k]})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_blobs_follow_redirects_to_another_host(
    gfs: Graftfs, registry: Registry, app: tuple[str, str], front: str
) -> None:
    gfs.create(f"docker://{front}/team/app:1.2", "redirected", "--insecure-registry", front)
    _check_app(gfs, "redirected")
    gfs.run("delete", "redirected")


def test_a_registry_asking_for_credentials_is_a_clear_error(gfs: Graftfs, front: str) -> None:
    url = f"docker://{front}/private/app:1"
    assert gfs.fails("create", "--insecure-registry", front, url, "private") == (
        f"{url} does not exist or you do not have permissions to see it."
    )


def test_an_unreachable_registry_is_a_clear_error(gfs: Graftfs) -> None:
    host = f"127.0.0.1:{free_port()}"
    out = gfs.fails("create", "--insecure-registry", host, f"docker://{host}/team/app:1", "unreachable")
    assert out == f"fetching image reference: fetching http://{host}/v2/: connection refused"
    out = gfs.fails("create", f"docker://{host}/team/app:1", "unreachable")
    assert out == f"fetching image reference: fetching https://{host}/v2/: connection refused"

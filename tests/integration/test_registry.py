"""Pulling from a real registry (Debian's ``docker-registry``, on 127.0.0.1 over plain HTTP).

Images are written as OCI layouts by tests/support/images.py and pushed with skopeo, which is also how the
Docker schema 2 and multi-platform variants are made.
"""

from __future__ import annotations

import base64
import json
import os
import random
import selectors
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import ClassVar

import pytest

from tests.integration.conftest import GRAFTFS, Graftfs
from tests.support.images import (
    TarBuilder,
    busybox_layer,
    host_platform,
    write_oci_layout,
)
from tests.support.registry import REGISTRY, Registry, free_port, serve, start_registry
from tests.support.rss import run_measured
from tests.support.runc import run_in_rootfs

ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hello from the registry"]

pytestmark = pytest.mark.skipif(
    not (Path(REGISTRY).exists() and shutil.which("skopeo")), reason="needs docker-registry and skopeo"
)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    # Manifests may name layers by URL (foreign layers) on this host only: without an allow list the
    # registry refuses them.
    allow = "validation:\n  manifests:\n    urls:\n      allow:\n        - '^http://127\\.0\\.0\\.1:'\n"
    with start_registry(tmp_path_factory.mktemp("registry"), allow) as reg:
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


def test_an_insecure_registry_found_to_speak_plain_http_is_asked_over_http_first(
    gfs: Graftfs, registry: Registry, app: tuple[str, str]
) -> None:
    """GrootFS's order is HTTPS first, then HTTP: the failed handshake (and loading the TLS stack) would be
    paid on every warm create. The store remembers the answer, and the next create goes straight to HTTP."""
    _create(gfs, registry, app[0], "first")
    assert (gfs.store / "meta" / "plain-http" / registry.host).exists()
    argv = [sys.executable, "-X", "importtime", *GRAFTFS, "--store", str(gfs.store), "create"]
    result = subprocess.run(
        [*argv, "--insecure-registry", registry.host, app[0], "second"], capture_output=True, text=True, check=True
    )
    imported = {line.rpartition("|")[2].strip() for line in result.stderr.splitlines() if line.startswith("import")}
    assert "graftfs.sources.registry" in imported
    assert not imported & {"ssl", "http.client", "email.parser", "re"}, imported & {"ssl", "http.client", "re"}
    _check_app(gfs, "second")
    for image_id in ("first", "second"):
        gfs.run("delete", image_id)


def test_pull_by_digest(gfs: Graftfs, registry: Registry, app: tuple[str, str]) -> None:
    _create(gfs, registry, app[1], "by-digest")
    _check_app(gfs, "by-digest")
    gfs.run("delete", "by-digest")


def test_a_second_create_downloads_nothing(gfs: Graftfs, registry: Registry, app: tuple[str, str]) -> None:
    """A warm create by tag is one request, the manifest's (which also says whether the caller may have the
    image): no version check for a host known to speak plain HTTP, the config kept from the first create.
    By digest it is one request too: the kept copies never stand in for the registry's answer on the
    reference itself."""
    _create(gfs, registry, app[0], "first")
    volumes = gfs.volumes()
    kept = sorted(p.name for p in (gfs.store / "meta" / "documents").iterdir())
    assert len(kept) == 1 and kept[0].startswith("sha256-"), kept  # the config
    for url, image_id in ((app[0], "second"), (app[1], "third")):
        before = len(registry.requests())
        _create(gfs, registry, url, image_id)
        reference = url.rsplit(":", 1)[1] if image_id == "second" else url.rsplit("@", 1)[1]
        assert registry.requests()[before:] == [f"GET /v2/team/app/manifests/{reference}"], url
        assert gfs.volumes() == volumes
        _check_app(gfs, image_id)
    # A damaged copy is fetched again (and the create works as if there were none).
    (gfs.store / "meta" / "documents" / kept[0]).write_bytes(b"{}")
    before = registry.blob_requests()
    _create(gfs, registry, app[0], "fourth")
    assert registry.blob_requests() - before == 1
    _check_app(gfs, "fourth")
    for image_id in ("first", "second", "third", "fourth"):
        gfs.run("delete", image_id)


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

    with serve(Handler) as host:
        yield host


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


def test_an_image_pushed_with_zstd_layers(
    gfs: Graftfs, registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> None:
    layout = tmp_path_factory.mktemp("layout") / "zstd"
    write_oci_layout(layout, _layers(), env=ENV, tag="zstd", compression="zstd")
    digest = registry.push(layout, "zstd", "team/zstd")
    manifest = json.loads(registry.get(f"/v2/team/zstd/manifests/{digest}"))
    assert {layer["mediaType"] for layer in manifest["layers"]} == {"application/vnd.oci.image.layer.v1.tar+zstd"}
    _create(gfs, registry, registry.url("team/zstd", "zstd"), "zstd")
    _check_app(gfs, "zstd")
    gfs.run("delete", "zstd")


def test_a_foreign_layer_comes_from_its_urls(
    gfs: Graftfs, registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The top layer is not in the registry: its descriptor (non-distributable, as Windows base layers are)
    lists a URL on another server, which is where graftfs fetches it, verified like any other."""
    layout = tmp_path_factory.mktemp("layout") / "foreign"
    info = write_oci_layout(layout, _layers(), env=ENV, tag="1")
    manifest = json.loads(info.blob_path(info.manifest_digest).read_bytes())
    top = info.layer_digests[-1]
    hits: list[str] = []

    class Blobs(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            hits.append(self.path)
            body = info.blob_path(top).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with serve(Blobs) as blob_host:
        for digest in [info.config_digest, *info.layer_digests[:-1]]:
            registry.put_blob("team/foreign", info.blob_path(digest).read_bytes())
        manifest["layers"][-1]["mediaType"] = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        manifest["layers"][-1]["urls"] = [f"http://{blob_host}/layers/top.tar.gz"]
        registry.put_manifest("team/foreign", "1", json.dumps(manifest).encode(), manifest["mediaType"])
        _create(gfs, registry, registry.url("team/foreign", "1"), "foreign")
    _check_app(gfs, "foreign")
    assert hits == ["/layers/top.tar.gz"]
    gfs.run("delete", "foreign")


class _Proxy(socketserver.BaseRequestHandler):
    """A forward proxy: ``CONNECT`` tunnels and absolute-URI requests, relayed as bytes. It alone knows the
    name ``registry.graftfs.test`` (it is 127.0.0.1), so a pull of that name can only succeed through it."""

    seen: ClassVar[list[tuple[str, str, str]]] = []  # method, target, Proxy-Authorization

    def handle(self) -> None:
        reader = self.request.makefile("rb")
        head = [reader.readline()]
        while head[-1] not in (b"\r\n", b"\n", b""):
            head.append(reader.readline())
        method, target, _ = head[0].decode().split(" ", 2)
        auth = next(
            (h.decode().split(":", 1)[1].strip() for h in head if h.lower().startswith(b"proxy-authorization:")), ""
        )
        self.seen.append((method, target, auth))
        hostport = target if method == "CONNECT" else urllib.parse.urlsplit(target).netloc
        host, port = hostport.rsplit(":", 1)
        upstream = socket.create_connection(("127.0.0.1" if host == "registry.graftfs.test" else host, int(port)))
        if method == "CONNECT":
            self.request.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            upstream.sendall(b"".join(head))
        with upstream, selectors.DefaultSelector() as sel:
            sel.register(self.request, selectors.EVENT_READ, upstream)
            sel.register(upstream, selectors.EVENT_READ, self.request)
            while True:
                for key, _ in sel.select(timeout=30):
                    data = key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)


def test_pulls_go_through_the_proxy_from_the_environment(
    gfs: Graftfs, registry: Registry, app: tuple[str, str]
) -> None:
    _Proxy.seen = []
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Proxy) as proxy:
        proxy.daemon_threads = True
        thread = threading.Thread(target=proxy.serve_forever, daemon=True)
        thread.start()
        try:
            port = registry.host.rsplit(":", 1)[1]
            name = f"registry.graftfs.test:{port}"
            proxy_url = f"http://user:p%40ss@127.0.0.1:{proxy.server_address[1]}"
            gfs.env = {"HTTP_PROXY": proxy_url, "HTTPS_PROXY": proxy_url, "NO_PROXY": "", "no_proxy": ""}
            gfs.create(f"docker://{name}/team/app:1.2", "proxied", "--insecure-registry", name)
        finally:
            proxy.shutdown()
            thread.join()
    _check_app(gfs, "proxied")
    # HTTPS was tried first through a tunnel; the registry speaks plain HTTP, so then HTTP through the proxy.
    assert _Proxy.seen[0][:2] == ("CONNECT", name)
    assert ("GET", f"http://{name}/v2/") in [s[:2] for s in _Proxy.seen]
    assert {s[2] for s in _Proxy.seen} == {"Basic " + base64.b64encode(b"user:p@ss").decode()}
    gfs.run("delete", "proxied")


def test_a_cold_create_of_a_big_image_stays_under_100_mib(
    gfs: Graftfs, registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Peak RSS of the whole create (ru_maxrss of the graftfs process) for an image of a 256 MiB
    incompressible file and 20,000 small files: nothing is buffered whole, whatever the layer size."""
    big = random.Random(3).randbytes(1 << 20) * 256  # repeats beyond gzip's 32 KiB window: incompressible
    small = TarBuilder()
    for d in range(20):
        small.dir(f"many/{d}")
        for f in range(1000):
            small.file(f"many/{d}/{f}", b"%d\n" % f)
    layout = tmp_path_factory.mktemp("layout") / "big"
    write_oci_layout(layout, [busybox_layer(), TarBuilder().file("big", big).build(), small.build()], tag="big")
    del big
    registry.push(layout, "big", "team/big")
    shutil.rmtree(layout)

    argv = [*GRAFTFS, "--store", str(gfs.store), "--log-level", "error", "create"]
    url = registry.url("team/big", "big")
    code, peak_mib = run_measured([*argv, "--insecure-registry", registry.host, url, "big"], gfs.store.parent / "rss")
    assert code == 0
    assert (gfs.rootfs("big") / "big").stat().st_size == 256 << 20
    assert len(os.listdir(gfs.rootfs("big") / "many/19")) == 1000
    assert peak_mib < 100, f"peak RSS {peak_mib:.1f} MiB"
    gfs.run("delete", "big")

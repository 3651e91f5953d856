"""Pulling from a misbehaving registry: a small OCI distribution server on 127.0.0.1, serving an image
written by tests/support/images.py, that can be told to drop connections, answer 503 or 429, lie about a
blob or never answer. Transient faults must be retried (resuming a broken layer with a range request), real
ones reported in one line, and nothing partial may stay in the store either way.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.integration.conftest import Graftfs
from tests.support.images import OCIImageInfo, TarBuilder, write_oci_layout

REPO = "team/app"
PAYLOAD = random.Random(7).randbytes(300_000)  # incompressible: the layer blob is about as big


@dataclass
class Faults:
    """What the server does wrong; each fault is used up as it is served."""

    drop_after: dict[str, int] = field(default_factory=dict)  # blob digest -> bytes sent before a drop, once
    reset: bool = False  # drop with a reset (the client may lose what it had not read yet), not a close
    ignore_range: bool = False  # answer range requests with the whole blob (200)
    statuses: list[tuple[str, int, dict[str, str]]] = field(default_factory=list)  # (path part, status, headers)
    corrupt: set[str] = field(default_factory=set)  # blob digests served with one byte flipped
    hang: bool = False  # read requests, never answer
    blob_delay: float = 0.0  # seconds before answering a blob request (a slow link), every time
    manifest: tuple[str, bytes] | None = None  # (media type, body) served for the tag instead of the image's


class Server:
    def __init__(self, layout: Path, image: OCIImageInfo) -> None:
        self.blobs = {f"sha256:{p.name}": p.read_bytes() for p in (layout / "blobs" / "sha256").iterdir()}
        self.image = image
        self.faults = Faults()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.served: list[tuple[str, float, float]] = []  # blob digest, start and end of its answer
        self.lock = threading.Lock()
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                server.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = False  # server_close() joins the handler threads
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()

    def url(self, tag: str = "1.2") -> str:
        return f"docker://{self.host}/{REPO}:{tag}"

    def ranges(self) -> list[str]:
        return [h["Range"] for _, h in self.requests if "Range" in h]

    # -- serving -------------------------------------------------------------------------------------------

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.requests.append((h.path, dict(h.headers)))
            f = self.faults
            if f.hang:
                fault = None
            else:
                fault = next((s for s in f.statuses if s[0] in h.path), None)
                if fault is not None:
                    f.statuses.remove(fault)
        if self.faults.hang:
            self.stop.wait(60)
            h.close_connection = True
            return
        if fault is not None:
            self.reply(h, fault[1], b'{"errors":[{"code":"UNAVAILABLE","message":"try later"}]}', fault[2])
            return
        manifests, blobs = f"/v2/{REPO}/manifests/", f"/v2/{REPO}/blobs/"
        if h.path == "/v2/":
            self.reply(h, 200, b"{}", {"Content-Type": "application/json"})
        elif h.path.startswith(manifests) and self.faults.manifest is not None:
            media_type, document = self.faults.manifest
            self.reply(h, 200, document, {"Content-Type": media_type})
        elif h.path.startswith(manifests):
            ref = h.path[len(manifests) :]
            digest = self.image.manifest_digest if ref == self.image.tag else ref
            body = self.blobs.get(digest)
            if body is None:
                self.reply(h, 404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}', {})
                return
            media_type = json.loads(body)["mediaType"]
            self.reply(h, 200, body, {"Content-Type": media_type, "Docker-Content-Digest": digest})
        elif h.path.startswith(blobs) and h.path[len(blobs) :] in self.blobs:
            self.blob(h, h.path[len(blobs) :])
        else:
            self.reply(h, 404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}', {})

    def blob(self, h: BaseHTTPRequestHandler, digest: str) -> None:
        start_time = time.monotonic()
        time.sleep(self.faults.blob_delay)
        self._blob(h, digest)
        with self.lock:
            self.served.append((digest, start_time, time.monotonic()))

    def _blob(self, h: BaseHTTPRequestHandler, digest: str) -> None:
        body = self.blobs[digest]
        if digest in self.faults.corrupt:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest}
        status, start = 200, 0
        wanted = h.headers.get("Range", "")
        if wanted.startswith("bytes=") and wanted.endswith("-") and not self.faults.ignore_range:
            start = int(wanted[len("bytes=") : -1])
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
        with self.lock:
            drop = self.faults.drop_after.pop(digest, None)
        if drop is None:
            self.reply(h, status, body[start:], headers)
            return
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(body) - start))
        h.end_headers()
        h.wfile.write(body[start : start + drop])
        h.wfile.flush()
        if self.faults.reset:
            time.sleep(0.2)  # let the client take the headers first: a reset discards what it has not read
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.connection.close()
        else:
            h.connection.shutdown(socket.SHUT_RDWR)
        h.close_connection = True

    def reply(self, h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)


def _image(path: Path, wrong_size_at: int | None = None) -> OCIImageInfo:
    layers = [
        TarBuilder().dir("data").file("data/blob", PAYLOAD).build(),
        TarBuilder().dir("etc").file("etc/motd", b"from a flaky registry\n").build(),
    ]
    return write_oci_layout(path, layers, tag="1.2", wrong_size_at=wrong_size_at)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    layout = tmp_path / "layout"
    srv = Server(layout, _image(layout))
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(autouse=True)
def _delete_images(gfs: Graftfs) -> Iterator[None]:
    """Images made by a test are deleted (unmounted) even when it fails half way."""
    yield
    images = gfs.store / "images"
    for image_id in os.listdir(images) if images.exists() else ():
        gfs.run("delete", image_id, check=False)


@pytest.fixture
def short_env() -> dict[str, str]:
    return {**os.environ, "GRAFTFS_REGISTRY_TIMEOUT": "1", "GRAFTFS_REGISTRY_RETRY_BUDGET": "3"}


def _create(gfs: Graftfs, srv: Server, image_id: str, env: dict[str, str] | None = None) -> float:
    start = time.monotonic()
    gfs.run("create", "--insecure-registry", srv.host, srv.url(), image_id, env=env)
    return time.monotonic() - start


def _fails(gfs: Graftfs, srv: Server, image_id: str, env: dict[str, str] | None = None) -> tuple[str, float]:
    start = time.monotonic()
    result = gfs.run("create", "--insecure-registry", srv.host, srv.url(), image_id, check=False, env=env)
    elapsed = time.monotonic() - start
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stdout.splitlines()
    assert len(lines) == 1, f"expected one line on stdout, got {result.stdout!r}"
    assert not (gfs.store / "images" / image_id).exists()
    return lines[0], elapsed


def _check_rootfs(gfs: Graftfs, image_id: str) -> None:
    rootfs = gfs.rootfs(image_id)
    assert (rootfs / "data/blob").read_bytes() == PAYLOAD
    assert (rootfs / "etc/motd").read_text() == "from a flaky registry\n"


def _assert_clean(gfs: Graftfs, image: OCIImageInfo, complete: bool) -> None:
    volumes = gfs.volumes()
    assert not [v for v in volumes if "incomplete" in v], volumes
    assert os.listdir(gfs.store / "tmp") == []
    if complete:
        assert {c.partition(":")[2] for c in image.chain_ids} <= volumes


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("ignore_range", "reset"), [(False, False), (True, False), (False, True)], ids=["range", "range-ignored", "reset"]
)
def test_a_connection_dropped_mid_blob_is_resumed(
    gfs: Graftfs, server: Server, ignore_range: bool, reset: bool
) -> None:
    big = server.image.layer_digests[0]
    assert len(server.blobs[big]) > 250_000
    server.faults.drop_after[big] = 100_000
    server.faults.ignore_range = ignore_range
    server.faults.reset = reset
    _create(gfs, server, "resumed")
    _check_rootfs(gfs, "resumed")
    ranges = server.ranges()
    if reset:  # the reset discards whatever the client had received but not read yet
        assert len(ranges) == 1 and ranges[0].startswith("bytes="), ranges
    else:
        assert ranges == ["bytes=100000-"]
    _assert_clean(gfs, server.image, complete=True)


def test_503_twice_then_success(gfs: Graftfs, server: Server) -> None:
    server.faults.statuses = [("/manifests/", 503, {}), ("/manifests/", 503, {})]
    _create(gfs, server, "after-503")
    _check_rootfs(gfs, "after-503")
    assert not server.faults.statuses
    _assert_clean(gfs, server.image, complete=True)


def test_a_blob_answered_503_twice(gfs: Graftfs, server: Server) -> None:
    layer = server.image.layer_digests[0]
    server.faults.statuses = [(layer, 503, {}), (layer, 503, {})]
    _create(gfs, server, "blob-503")
    _check_rootfs(gfs, "blob-503")
    assert sum(1 for path, _ in server.requests if path.endswith(layer)) == 3
    _assert_clean(gfs, server.image, complete=True)


def test_429_honours_retry_after(gfs: Graftfs, server: Server) -> None:
    server.faults.statuses = [("/manifests/", 429, {"Retry-After": "1"})]
    elapsed = _create(gfs, server, "after-429")
    assert elapsed >= 1, elapsed
    _check_rootfs(gfs, "after-429")
    _assert_clean(gfs, server.image, complete=True)


def test_persistent_503_gives_up_within_the_budget(gfs: Graftfs, server: Server, short_env: dict[str, str]) -> None:
    server.faults.statuses = [("/manifests/", 503, {})] * 20
    out, elapsed = _fails(gfs, server, "unavailable", short_env)
    assert out.startswith(f"fetching image reference: fetching http://{server.host}/v2/{REPO}/manifests/1.2: gave up")
    assert out.endswith("HTTP 503 Service Unavailable: UNAVAILABLE: try later"), out
    assert elapsed < 15, elapsed
    assert gfs.volumes() == set()


def test_a_blob_not_matching_its_digest(gfs: Graftfs, server: Server) -> None:
    bad = server.image.layer_digests[0]
    server.faults.corrupt.add(bad)
    out, _ = _fails(gfs, server, "corrupt")
    actual = _digest(bytes([server.blobs[bad][0] ^ 0xFF]) + server.blobs[bad][1:])
    assert out == (
        f"pulling the image: streaming blob `{bad}`: layerID digest mismatch: expected: {bad}, actual: {actual}"
    )
    assert server.image.chain_ids[0].partition(":")[2] not in gfs.volumes()
    _assert_clean(gfs, server.image, complete=False)
    # The config it fetched and verified is kept only once an image is made from it.
    assert not (gfs.store / "meta" / "documents").exists()


def test_a_blob_of_the_wrong_size(gfs: Graftfs, tmp_path: Path) -> None:
    layout = tmp_path / "wrong-size"
    srv = Server(layout, _image(layout, wrong_size_at=1))
    try:
        out, _ = _fails(gfs, srv, "wrong-size")
    finally:
        srv.close()
    layer = srv.image.layer_digests[1]
    size = len(srv.blobs[layer])
    assert out == (
        f"pulling the image: streaming blob `{layer}`: validating actual blob size: layer size is different "
        f"from the value in the manifest; expected: {size + 1}, actual {size}"
    )
    assert srv.image.chain_ids[1].partition(":")[2] not in gfs.volumes()
    _assert_clean(gfs, srv.image, complete=False)


def test_a_registry_that_never_answers(gfs: Graftfs, server: Server, short_env: dict[str, str]) -> None:
    server.faults.hang = True
    out, elapsed = _fails(gfs, server, "hang", short_env)
    prefix = f"fetching image reference: fetching http://{server.host}/v2/: gave up after "
    assert out.startswith(prefix) and out.endswith(": timed out"), out
    assert elapsed < 15, elapsed
    assert gfs.volumes() == set()
    _assert_clean(gfs, server.image, complete=False)


def test_concurrent_creates_download_each_layer_once_and_layers_in_parallel(gfs: Graftfs, server: Server) -> None:
    server.faults.blob_delay = 0.5
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda i: _create(gfs, server, f"c{i}"), range(6)))
    for image_id in (f"c{i}" for i in range(6)):
        _check_rootfs(gfs, image_id)
    served = [(d, start, end) for d, start, end in server.served if d in server.image.layer_digests]
    # Six processes, one download per layer: the others waited for the volume, then used it.
    assert sorted(d for d, _, _ in served) == sorted(server.image.layer_digests)
    # The image's two layers were downloaded at the same time, not one after the other.
    (_, start1, end1), (_, start2, end2) = served
    assert start1 < end2 and start2 < end1, served
    _assert_clean(gfs, server.image, complete=True)


def test_a_schema1_manifest_is_refused_clearly(gfs: Graftfs, server: Server) -> None:
    schema1 = {"schemaVersion": 1, "name": REPO, "tag": "1.2", "architecture": "amd64", "fsLayers": [], "history": []}
    server.faults.manifest = ("application/vnd.docker.distribution.manifest.v1+prettyjws", json.dumps(schema1).encode())
    out, _ = _fails(gfs, server, "old")
    assert out == (
        "fetching image reference: the image has a Docker schema 1 manifest, which graftfs does not support "
        "(deprecated since 2017, it has no diffIDs to verify layers against): push the image again with a current "
        "client"
    )
    assert gfs.volumes() == set()

"""A real registry for tests: Debian's ``docker-registry`` (the CNCF distribution server) on 127.0.0.1.

:func:`start_registry` runs one with a config of the caller's choosing (TLS, htpasswd, token auth) and stops
it by PID. :class:`Registry` pushes OCI layouts to it with skopeo, or raw manifests and blobs over HTTP for
what skopeo will not make (foreign layers). :func:`serve` runs a small threaded HTTP server in-process.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REGISTRY = "/usr/bin/docker-registry"


@dataclass
class Registry:
    host: str  # 127.0.0.1:<port>
    log: Path
    work: Path
    tls: ssl.SSLContext | None = None  # how a test client reaches it, when it speaks TLS
    push_flags: list[str] = field(default_factory=lambda: ["--dest-tls-verify=false"])
    auth: str = ""  # Authorization header for raw pushes
    pid: int = 0  # the registry process's (benchmarks read the CPU it used)

    def url(self, repo: str, ref: str = "latest") -> str:
        sep = "@" if ref.startswith("sha256:") else ":"
        return f"docker://{self.host}/{repo}{sep}{ref}"

    def push(self, layout: Path, tag: str, repo: str, *flags: str) -> str:
        """Copy ``layout:tag`` to ``repo:tag`` with skopeo; returns the pushed manifest's digest."""
        digestfile = self.work / f"digest-{repo.replace('/', '_')}-{tag}"
        subprocess.run(
            [
                "skopeo",
                "copy",
                "--quiet",
                *self.push_flags,
                "--digestfile",
                str(digestfile),
                *flags,
                f"oci:{layout}:{tag}",
                f"docker://{self.host}/{repo}:{tag}",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        return digestfile.read_text().strip()

    def blob_requests(self) -> int:
        return self.log.read_text(errors="replace").count("/blobs/sha256:")

    def requests(self) -> list[str]:
        """Every request so far, ``METHOD /path``, oldest first (its access log's lines)."""
        return re.findall(r'"([A-Z]+ /\S*) HTTP/1\.[01]"', self.log.read_text(errors="replace"))

    # -- raw pushes ----------------------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes, str]:
        """Returns the status, the body and the Location header."""
        host, port = self.host.rsplit(":", 1)
        conn: http.client.HTTPConnection
        if self.tls is None:
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
        else:
            conn = http.client.HTTPSConnection(host, int(port), timeout=30, context=self.tls)
        try:
            all_headers = {"Content-Length": str(len(body)), **(headers or {})}
            if self.auth:
                all_headers["Authorization"] = self.auth
            conn.request(method, path, body, all_headers)
            resp = conn.getresponse()
            return resp.status, resp.read(), resp.getheader("Location") or ""
        finally:
            conn.close()

    def get(self, path: str) -> bytes:
        status, body, _ = self._request("GET", path, headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        assert status == 200, status
        return body

    def put_blob(self, repo: str, data: bytes) -> str:
        """Upload a blob: start an upload session, then finish it with the whole body; returns its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        status, _, location = self._request("POST", f"/v2/{repo}/blobs/uploads/")
        assert status == 202, status
        parts = urllib.parse.urlsplit(location)
        query = (parts.query + "&" if parts.query else "") + f"digest={digest}"
        status, _, _ = self._request("PUT", f"{parts.path}?{query}", data, {"Content-Type": "application/octet-stream"})
        assert status == 201, status
        return digest

    def put_manifest(self, repo: str, tag: str, manifest: bytes, media_type: str) -> str:
        status, body, _ = self._request("PUT", f"/v2/{repo}/manifests/{tag}", manifest, {"Content-Type": media_type})
        assert status == 201, (status, body)
        return "sha256:" + hashlib.sha256(manifest).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def start_registry(work: Path, config: str = "", tls: ssl.SSLContext | None = None) -> Iterator[Registry]:
    """Run ``docker-registry`` with storage under ``work`` on a free 127.0.0.1 port. ``config`` is added to
    the generated YAML (top-level ``auth:``, or lines of the ``http:`` section indented by two spaces and
    prefixed with ``http.``); the registry is stopped (by PID) and ``work`` removed on exit."""
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    http_extra = "".join(line[len("http.") :] + "\n" for line in config.splitlines() if line.startswith("http."))
    top_extra = "".join(line + "\n" for line in config.splitlines() if not line.startswith("http."))
    conf = work / "config.yml"
    conf.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {work / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{http_extra}{top_extra}"
    )
    log = work / "registry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([REGISTRY, "serve", str(conf)], stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"registry did not start: {log.read_text(errors='replace')}")
            time.sleep(0.05)
        yield Registry(f"127.0.0.1:{port}", log, work, tls, pid=proc.pid)
    finally:
        stop(proc)
        shutil.rmtree(work, ignore_errors=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a server we started, by its PID; kill it if it does not go."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def serve(handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """Run ``handler`` on a free 127.0.0.1 port in threads; yields ``127.0.0.1:<port>``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

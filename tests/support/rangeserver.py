"""A static file over HTTP with Range requests, counting the bytes it serves: the origin of a lazy layer
repository in tests (what a CernVM-FS Stratum 1 or a proxy is to a client: httpfs2 reads the squashfs image
from it piece by piece, as the kernel asks squashfuse for blocks).

:func:`serve_file` runs a threaded HTTP/1.1 server (keep-alive, ``HEAD``, ``GET`` with one
``Range: bytes=a-b`` / ``a-`` / ``-n``; 416 for a range outside the file) on a free 127.0.0.1 port, in this
process, and yields a :class:`Served` whose ``bytes_served`` is the sum of the body bytes sent so far.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 1 << 16


class Served:
    """The server's address and what it has served (updated by its threads)."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self.name = name
        self.size = path.stat().st_size
        self.host = ""
        self._lock = threading.Lock()
        self._bytes = 0
        self.requests: list[tuple[str, str]] = []  # (method, Range header or "")

    @property
    def url(self) -> str:
        return f"http://{self.host}/{self.name}"

    @property
    def bytes_served(self) -> int:
        with self._lock:
            return self._bytes

    def _count(self, method: str, range_header: str, n: int) -> None:
        with self._lock:
            self._bytes += n
            self.requests.append((method, range_header))


def _handler(served: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            if self.path.split("?", 1)[0] != "/" + served.name:
                self._empty(404)
                return
            size = served.size
            wanted = self.headers.get("Range", "")
            start, end, status = 0, size - 1, 200
            if wanted:
                found = _RANGE.match(wanted.strip())
                if not found or found.groups() == ("", ""):
                    self._empty(416, {"Content-Range": f"bytes */{size}"})
                    return
                first, last = found.groups()
                if first == "":
                    start, end = max(size - int(last), 0), size - 1
                else:
                    start, end = int(first), min(int(last), size - 1) if last else size - 1
                if start >= size or start > end:
                    self._empty(416, {"Content-Range": f"bytes */{size}"})
                    return
                status = 206
            length = end - start + 1
            self.send_response(status)
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            sent = 0
            if body:
                with open(served.path, "rb") as f:
                    f.seek(start)
                    while sent < length:
                        chunk = f.read(min(CHUNK, length - sent))
                        if not chunk:
                            break
                        self.wfile.write(chunk)
                        sent += len(chunk)
            served._count(self.command, wanted, sent)

        def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


@contextmanager
def serve_file(path: Path, name: str | None = None) -> Iterator[Served]:
    """Serve ``path`` at ``http://127.0.0.1:<port>/<name>`` (default: its file name) until the block ends."""
    served = Served(path, name or os.path.basename(path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    served.host = f"127.0.0.1:{server.server_address[1]}"
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join()

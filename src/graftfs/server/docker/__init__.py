"""``graftfs serve docker-graphdriver``: the snapshot core as a Docker graphdriver plugin (dockerd 20.10's
"legacy" v1 plugin protocol; Docker 27 deprecated graphdriver plugins and 28 removed them).

dockerd finds the plugin by a spec file (``/etc/docker/plugins/graftfs.spec`` holding
``unix:///path/to/graftfs.sock``) or a socket in ``/run/docker/plugins``, and uses it when started with
``--experimental --storage-driver graftfs``. The wire (moby's ``daemon/graphdriver/proxy.go`` and
``pkg/plugins/client.go``): HTTP/1.1 POSTs on the unix socket, ``/Plugin.Activate`` answered with
``{"Implements": ["GraphDriver"]}``, then ``/GraphDriver.<Verb>`` with JSON bodies (``ID``, ``Parent``,
``MountLabel``, ``StorageOpt``; ``Init``: ``Home``, ``Opts``, ``UIDMaps``, ``GIDMaps``), keys left out meaning
empty values, answered with JSON (``Err``, ``Dir``, ``Exists``, ``Status``, ``Changes``, ``Size``,
``Metadata``, ``Capabilities``). Two verbs are not JSON: ``ApplyDiff`` posts the layer's raw tar (chunked)
with ``id`` and ``parent`` in the query string; ``Diff`` answers with a raw tar.

Errors: HTTP 500 with ``{"Err": "<one line>"}`` (dockerd shows it as ``Error response from daemon: ...``): a
:class:`graftfs.errors.GraftfsError`'s own message, anything else one line naming its type, with the traceback
in the log only. ``Diff`` checks all it can before it answers, so a refusal is a 500 before the first byte of
the tar; a failure in the middle of the tar cuts the chunked stream short, which dockerd reads as an error.

The verbs are :class:`graftfs.server.docker.driver.Driver`'s (the mapping onto the core is described there).
``Capabilities`` says ``ReproducesExactDiffs: false``, so dockerd keeps its tar-split records and ``docker
save`` gives back the loaded layers byte for byte. With ``--s3-bucket`` (:class:`.driver.Publishing`), ``Diff``
of a thin image's container publishes its changes before it answers (``docker commit`` of a thin image gives a
thin image).
"""

from __future__ import annotations

import io
import json
import os
import signal
import socketserver
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from ...errors import GraftfsError, InvalidArgument, os_reason
from .. import claim_socket
from .driver import Driver, Publishing, id_maps

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ...log import Logger

CONTENT_TYPE = "application/vnd.docker.plugins.v1+json"
VERBS = (
    "Init",
    "Create",
    "CreateReadWrite",
    "Remove",
    "Get",
    "Put",
    "Exists",
    "Status",
    "GetMetadata",
    "Cleanup",
    "Diff",
    "Changes",
    "ApplyDiff",
    "DiffSize",
    "Capabilities",
)


class _Body:
    """A request body as a stream: ``read`` is the subclass's; ``readinto`` (the unpacker's) and ``drain`` (what
    an answer before the body's end leaves unread) are read's."""

    def read(self, size: int = -1) -> bytes:
        raise NotImplementedError

    def readinto(self, view: Any) -> int:
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        while self.read(1 << 16):
            pass


class ChunkedReader(_Body):
    """A request body sent with ``Transfer-Encoding: chunked``, read as a plain stream."""

    def __init__(self, raw: io.BufferedIOBase) -> None:
        self.raw = raw
        self.left = 0
        self.done = False

    def read(self, size: int = -1) -> bytes:
        out = bytearray()
        while not self.done and (size < 0 or len(out) < size):
            if self.left == 0:
                line = self.raw.readline(1024)
                if not line:
                    raise InvalidArgument("the request body ended inside a chunk")
                length = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if length == 0:
                    while self.raw.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    self.done = True
                    break
                self.left = length
            want = self.left if size < 0 else min(self.left, size - len(out))
            data = self.raw.read(want)
            if not data:
                raise InvalidArgument("the request body ended inside a chunk")
            out += data
            self.left -= len(data)
            if self.left == 0:
                self.raw.readline(16)  # the CRLF after the chunk
        return bytes(out)


class LengthReader(_Body):
    """A request body of ``Content-Length`` bytes."""

    def __init__(self, raw: io.BufferedIOBase, length: int) -> None:
        self.raw = raw
        self.left = length

    def read(self, size: int = -1) -> bytes:
        want = self.left if size < 0 else min(size, self.left)
        data = self.raw.read(want) if want else b""
        self.left -= len(data)
        return data


class ChunkedWriter:
    """A response body sent chunked (a ``Diff``'s tar, whose length is known only at its end)."""

    def __init__(self, raw: io.BufferedIOBase) -> None:
        self.raw = raw

    def write(self, data: bytes) -> int:
        if data:
            self.raw.write(b"%x\r\n" % len(data) + bytes(data) + b"\r\n")
        return len(data)

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:
        self.raw.write(b"0\r\n\r\n")
        self.raw.flush()


class Plugin:
    """The protocol's answers, over a :class:`Driver`: ``call(verb, body)`` returns the response's JSON."""

    def __init__(self, driver: Driver, log: Logger) -> None:
        self.driver = driver
        self.log = log

    def call(self, verb: str, request: dict[str, Any]) -> dict[str, Any]:
        d = self.driver
        layer_id = str(request.get("ID") or "")
        parent = str(request.get("Parent") or "")
        if verb == "Init":
            d.init(
                str(request.get("Home") or ""),
                list(request.get("Opts") or ()),
                id_maps(request.get("UIDMaps"), "UIDMaps"),
                id_maps(request.get("GIDMaps"), "GIDMaps"),
            )
            self.log.info("init", home=d.docker_home, uid_maps=len(d.uid_map.mappings))
            return {}
        if verb in ("Create", "CreateReadWrite"):
            d.create(layer_id, parent, dict(request.get("StorageOpt") or {}))
            return {}
        if verb == "Remove":
            d.remove(layer_id)
            return {}
        if verb == "Get":
            return {"Dir": d.get(layer_id)}
        if verb == "Put":
            d.put(layer_id)
            return {}
        if verb == "Exists":
            return {"Exists": d.exists(layer_id)}
        if verb == "Status":
            return {"Status": d.status()}
        if verb == "GetMetadata":
            return {"Metadata": d.metadata(layer_id)}
        if verb == "Cleanup":
            d.cleanup()
            return {}
        if verb == "Changes":
            return {"Changes": d.changes(layer_id, parent)}
        if verb == "DiffSize":
            return {"Size": d.diff_size(layer_id, parent)}
        if verb == "Capabilities":
            return {"Capabilities": {"ReproducesExactDiffs": False}}
        raise InvalidArgument(f"unknown graphdriver verb {verb}")

    def error(self, verb: str, exc: BaseException) -> str:
        """The one line a failed call answers with."""
        if isinstance(exc, GraftfsError):
            return " ".join(str(exc).splitlines())
        text = os_reason(exc) + (f": {exc.filename}" if isinstance(exc, OSError) and exc.filename else "")
        self.log.error("unexpected-error", text, verb=verb, traceback="".join(traceback.format_exception(exc)))
        return " ".join(f"graftfs {verb}: {type(exc).__name__}: {text}".splitlines())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the plugin logs what it does itself

    def address_string(self) -> str:
        return "unix"

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        name = url.path.lstrip("/")
        body = self._body()
        plugin = self.server.plugin
        with self.server.busy:
            self.server.calls += 1
        try:
            self._call(url, name, body, plugin)
        finally:
            with self.server.busy:
                self.server.calls -= 1

    def _call(self, url: Any, name: str, body: ChunkedReader | LengthReader, plugin: Plugin) -> None:
        try:
            if name == "Plugin.Activate":
                body.drain()
                self._json(200, {"Implements": ["GraphDriver"]})
                return
            verb = name.partition("GraphDriver.")[2]
            if not name.startswith("GraphDriver.") or verb not in VERBS:
                body.drain()
                self._json(404, {"Err": f"graftfs: no such plugin method {name}"})
                return
            if verb == "ApplyDiff":
                query = parse_qs(url.query)
                layer_id = (query.get("id") or [""])[0]
                parent = (query.get("parent") or [""])[0]
                try:
                    size = plugin.driver.apply_diff(layer_id, parent, body)  # type: ignore[arg-type]
                finally:
                    _drain(body)
                self._json(200, {"Size": size})
                return
            request = self._request(body)
            if verb == "Diff":
                write = plugin.driver.diff(str(request.get("ID") or ""), str(request.get("Parent") or ""))
                self._stream(write)
                return
            self._json(200, plugin.call(verb, request))
        except Exception as exc:
            self._json(500, {"Err": plugin.error(name, exc)})

    def _body(self) -> ChunkedReader | LengthReader:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return ChunkedReader(self.rfile)
        return LengthReader(self.rfile, int(self.headers.get("Content-Length") or 0))

    def _request(self, body: ChunkedReader | LengthReader) -> dict[str, Any]:
        data = body.read()
        if not data.strip():
            return {}
        try:
            request = json.loads(data)
        except ValueError as exc:
            raise InvalidArgument(f"the request is not JSON: {exc}") from None
        if request is None:
            return {}
        if not isinstance(request, dict):
            raise InvalidArgument("the request is not a JSON object")
        return request

    def _json(self, status: int, answer: dict[str, Any]) -> None:
        data = json.dumps(answer).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, write: Any) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-tar")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        out = ChunkedWriter(self.wfile)
        buffered = _Buffered(out)
        try:
            write(buffered)
            buffered.flush()
        except Exception as exc:
            # Too late for a status: cut the stream short (no last chunk), which the client sees as an error.
            self.server.plugin.error("GraphDriver.Diff", exc)
            self.server.plugin.log.error("diff-failed", str(exc))
            self.close_connection = True
            return
        out.close()


def _drain(body: ChunkedReader | LengthReader) -> None:
    """Read what is left of a request body, so the connection can carry the answer (and the next call); a
    body that cannot be read to its end is the client's to notice."""
    try:
        body.drain()
    except (OSError, ValueError, InvalidArgument):
        pass


class _Buffered:
    """Writes gathered into chunks of 64 KiB (tarfile writes in 512-byte blocks)."""

    def __init__(self, out: ChunkedWriter, size: int = 1 << 16) -> None:
        self.out = out
        self.size = size
        self.buf = bytearray()

    def write(self, data: Any) -> int:
        self.buf += data
        if len(self.buf) >= self.size:
            self.out.write(bytes(self.buf))
            self.buf.clear()
        return len(data)

    def flush(self) -> None:
        if self.buf:
            self.out.write(bytes(self.buf))
            self.buf.clear()


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, path: str, plugin: Plugin) -> None:
        self.plugin = plugin
        self.busy = threading.Lock()
        self.calls = 0  # under way, waited for at a stop
        super().__init__(path, Handler)


def serve(root: str, socket_path: str, log: Logger, publishing: Publishing | None = None) -> int:
    """Serve the graphdriver over the store (or bare directory) ``root`` on the unix socket ``socket_path``
    (mode 0600) until SIGTERM or SIGINT; then calls under way finish (up to 30 s) and the socket is removed.
    Mounts stay: a plugin started again continues with them (dockerd's ``Cleanup`` undoes them)."""
    socket_path = claim_socket("serve docker-graphdriver", socket_path)
    plugin = Plugin(Driver(root, log, publishing), log)
    stopping = threading.Event()

    def stop(signum: int, frame: object) -> None:
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    old_umask = os.umask(0o177)
    try:
        server = Server(socket_path, plugin)
    finally:
        os.umask(old_umask)
    thread = threading.Thread(target=server.serve_forever, name="graphdriver", daemon=True)
    thread.start()
    try:
        log.info("serving", socket=socket_path, store=root)
        while not stopping.wait(1.0):
            pass
        log.info("stopping", socket=socket_path)
        started = time.monotonic()
        server.shutdown()  # no new connections; calls under way finish
        while server.calls and time.monotonic() - started < 30:
            time.sleep(0.05)
        log.info("stopped", seconds=round(time.monotonic() - started, 3))
    finally:
        server.server_close()
        try:
            os.unlink(socket_path)
        except FileNotFoundError:
            pass
    return 0


__all__ = ["VERBS", "ChunkedReader", "Plugin", "serve"]

"""The snapshotter's verbs over containerd's gRPC wire: a client of ``graftfs serve containerd-snapshotter``.

:class:`WireSnapshotter` has the methods of :class:`graftfs.store.snapshots.Snapshotter` (what the conformance
suite calls) and makes each one call of ``containerd.services.snapshots.v1.Snapshots`` on the server's unix
socket, turning a failed call's status back into graftfs's error class with :func:`graftfs.errors.from_grpc`,
as containerd's ``errdefs.FromGRPC`` does.

:func:`start_server` runs the server as a real subprocess (``python -m graftfs serve containerd-snapshotter``)
and :func:`stop_server` stops it by its PID (SIGTERM, then SIGKILL) and reaps it. :func:`open_root` is the
conformance suite's ``Opener`` factory: it connects to the server a fixture started for a root (the socket's
path is written beside the root, in ``<root>.socket``), or starts one of its own that ``close`` stops.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import grpc
from google.protobuf import field_mask_pb2

from graftfs.errors import from_grpc
from graftfs.mount.spec import Mount
from graftfs.server.containerd import METHODS, SERVICE, info_message, info_value
from graftfs.server.containerd.proto import mount_pb2
from graftfs.server.containerd.proto import snapshots_pb2 as pb
from graftfs.store.snapshots import Info, Usage

REPO = Path(__file__).resolve().parents[2]
#: The name containerd's proxy client puts in every request's ``snapshotter`` field.
NAME = "graftfs"
CALL_TIMEOUT = 300.0


class WireSnapshotter:
    """The snapshotter verbs, each one gRPC call to the server on ``socket_path``. ``server``, when given, is
    the server process this client owns: ``close`` stops it."""

    def __init__(self, socket_path: str, server: Server | None = None) -> None:
        self.socket_path = socket_path
        self.server = server
        self.channel = grpc.insecure_channel("unix:" + socket_path)
        self._unary = {}
        self._stream = {}
        for method, (request_type, response_type, streams) in METHODS.items():
            path = f"/{SERVICE}/{method}"
            if streams:
                self._stream[method] = self.channel.unary_stream(
                    path,
                    request_serializer=request_type.SerializeToString,
                    response_deserializer=response_type.FromString,
                )
            else:
                self._unary[method] = self.channel.unary_unary(
                    path,
                    request_serializer=request_type.SerializeToString,
                    response_deserializer=response_type.FromString,
                )
        self.closed = False

    def _call(self, method: str, request: object) -> object:
        try:
            return self._unary[method](request, timeout=CALL_TIMEOUT)
        except grpc.RpcError as exc:
            raise _error(exc) from None

    # -- the verbs ------------------------------------------------------------------------------------------

    def stat(self, key: str) -> Info:
        response = self._call("Stat", pb.StatSnapshotRequest(snapshotter=NAME, key=key))
        assert isinstance(response, pb.StatSnapshotResponse)
        return info_value(response.info)

    def update(self, info: Info, *fieldpaths: str) -> Info:
        request = pb.UpdateSnapshotRequest(
            snapshotter=NAME, info=info_message(info), update_mask=field_mask_pb2.FieldMask(paths=list(fieldpaths))
        )
        response = self._call("Update", request)
        assert isinstance(response, pb.UpdateSnapshotResponse)
        return info_value(response.info)

    def usage(self, key: str) -> Usage:
        response = self._call("Usage", pb.UsageRequest(snapshotter=NAME, key=key))
        assert isinstance(response, pb.UsageResponse)
        return Usage(response.size, response.inodes)

    def mounts(self, key: str) -> list[Mount]:
        response = self._call("Mounts", pb.MountsRequest(snapshotter=NAME, key=key))
        assert isinstance(response, pb.MountsResponse)
        return _mounts(response.mounts)

    def prepare(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]:
        request = pb.PrepareSnapshotRequest(snapshotter=NAME, key=key, parent=parent, labels=dict(labels or {}))
        response = self._call("Prepare", request)
        assert isinstance(response, pb.PrepareSnapshotResponse)
        return _mounts(response.mounts)

    def view(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]:
        request = pb.ViewSnapshotRequest(snapshotter=NAME, key=key, parent=parent, labels=dict(labels or {}))
        response = self._call("View", request)
        assert isinstance(response, pb.ViewSnapshotResponse)
        return _mounts(response.mounts)

    def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        self._call("Commit", pb.CommitSnapshotRequest(snapshotter=NAME, name=name, key=key, labels=dict(labels or {})))

    def remove(self, key: str) -> None:
        self._call("Remove", pb.RemoveSnapshotRequest(snapshotter=NAME, key=key))

    def walk(self, *filters: str) -> Iterator[Info]:
        request = pb.ListSnapshotsRequest(snapshotter=NAME, filters=list(filters))
        try:
            for response in self._stream["List"](request, timeout=CALL_TIMEOUT):
                assert isinstance(response, pb.ListSnapshotsResponse)
                for info in response.info:
                    yield info_value(info)
        except grpc.RpcError as exc:
            raise _error(exc) from None

    def cleanup(self) -> None:
        self._call("Cleanup", pb.CleanupRequest(snapshotter=NAME))

    def close(self) -> None:
        """Closing twice is fine; the server this client started (if any) is stopped."""
        if self.closed:
            return
        self.closed = True
        self.channel.close()
        if self.server is not None:
            self.server.stop()


def _error(exc: grpc.RpcError) -> Exception:
    """The graftfs error a failed call's status stands for (containerd's errdefs.FromGRPC)."""
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    return from_grpc(code.value[0], details or "")


def _mounts(messages: Iterable[mount_pb2.Mount]) -> list[Mount]:
    return [Mount(m.type, m.source, tuple(m.options)) for m in messages]


# -- the server as a subprocess -----------------------------------------------------------------------------------


class Server:
    """A ``graftfs serve containerd-snapshotter`` process: its socket, its log file, and its own temp
    directory (removed by :meth:`stop`) when it made one."""

    def __init__(self, proc: subprocess.Popen[bytes], socket_path: str, log: Path, own_dir: str = "") -> None:
        self.proc = proc
        self.socket_path = socket_path
        self.log = log
        self.own_dir = own_dir

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, SIGKILL if it does not go in ``timeout`` seconds; reaped. Returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.own_dir:
            shutil.rmtree(self.own_dir, ignore_errors=True)
        return self.proc.returncode

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def server_argv(root: str, socket_path: str, log_level: str = "info", *flags: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "graftfs",
        "--log-level",
        log_level,
        "serve",
        "containerd-snapshotter",
        "--store",
        root,
        "--socket",
        socket_path,
        *flags,
    ]


def start_server(root: str, socket_path: str, log: Path, timeout: float = 60, flags: Sequence[str] = ()) -> Server:
    """Start the server on ``root`` (with the command's ``flags``) and wait until its socket accepts
    connections."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            server_argv(root, socket_path, "info", *flags),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=env,
            cwd="/",
        )
    server = Server(proc, socket_path, log)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited {proc.returncode}: {server.log_text()}")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(socket_path)
            return server
        except OSError:
            pass
        finally:
            probe.close()
        if time.monotonic() > deadline:
            server.stop()
            raise AssertionError(f"the server did not listen on {socket_path} in {timeout}s: {server.log_text()}")
        time.sleep(0.02)


def socket_file(root: str) -> str:
    """Where a fixture writes the socket path of the server it started for ``root``."""
    return os.path.abspath(root).rstrip("/") + ".socket"


def open_root(root: str) -> WireSnapshotter:
    """The conformance suite's factory: a client of the server started for ``root`` (see
    :func:`socket_file`), or of a server of its own, on a socket in a new temp dir, that ``close`` stops."""
    try:
        socket_path = Path(socket_file(root)).read_text().strip()
    except FileNotFoundError:
        own = tempfile.mkdtemp(prefix="gfs-wire-")
        server = start_server(root, os.path.join(own, "s.sock"), Path(own, "server.log"))
        server.own_dir = own
        return WireSnapshotter(server.socket_path, server)
    return WireSnapshotter(socket_path)

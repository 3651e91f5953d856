"""``graftfs serve containerd-snapshotter``: the snapshot core as containerd's snapshot service, a proxy plugin.

containerd reaches a snapshotter outside its own binary over gRPC on a unix socket (its config's
``[proxy_plugins.<name>] type = "snapshot" address = "<socket>"``); the service is
``containerd.services.snapshots.v1.Snapshots`` (``proto/snapshots.proto``). Each method here is a thin mapping
onto one :class:`graftfs.store.snapshots.Snapshotter` over the store:

* keys and names as containerd sends them (its metadata store namespaces them, ``<ns>/<n>/<key>``): the core
  takes any string, and keeps them in its namespace :data:`NAMESPACE`, apart from every other front end's:
  ``List`` shows containerd only its own snapshots (and the remote layers it made), so its garbage collector,
  which removes whatever its snapshotter lists and its records do not name, never sees the Python API's, the
  graftfs graphdriver's or the store's pulled layers. A store made before namespaces has its containerd
  snapshots (keys of containerd's shape, and remote layers) moved into the namespace as the server starts
  (:meth:`Snapshotter.adopt`). The request's ``snapshotter`` field (the plugin's name in containerd's config)
  is not checked: one server serves one snapshotter under whatever name containerd gives it.
* labels kept as they are; ``List`` takes containerd's filters (the core's ``walk``) and streams the
  snapshots in batches; ``Mounts`` are ``containerd.types.Mount`` with an empty target; times are
  ``google.protobuf.Timestamp``.
* errors: a :class:`graftfs.errors.GraftfsError` becomes the gRPC status of its kind
  (:func:`graftfs.errors.grpc_code`, the one table) with its one-line message; anything else becomes INTERNAL
  with one line, and is logged with its traceback. A client never sees a traceback.

Remote layers: a ``Prepare`` that carries containerd's ``containerd.io/snapshot.ref`` and a layer digest label
(``containerd.io/snapshot/cri.layer-digest``, or ``containerd.io/snapshot/remote/stargz.digest`` as
``ctr-remote images rpull`` sends it) for a layer in the store's layer repository answers ALREADY_EXISTS after
the core made the committed snapshot from the repository (:mod:`graftfs.store.snapshots`); containerd then
finds it with ``List`` and the filter ``labels."containerd.io/snapshot.ref"==<chain>,parent=="<parent>"``, and
downloads nothing. The labels pass through as they are.

grpc and protobuf (the ``containerd`` extra) are imported by this module, which only ``serve`` imports.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import empty_pb2, timestamp_pb2

from ...errors import GraftfsError, InvalidArgument, grpc_code
from ...store.snapshots import KIND_ACTIVE, KIND_COMMITTED, KIND_VIEW, Info, Snapshotter
from .. import claim_socket
from .proto import mount_pb2
from .proto import snapshots_pb2 as pb

TYPE_CHECKING = False
if TYPE_CHECKING:
    from google.protobuf.message import Message

    from ...log import Logger
    from ...mount.spec import Mount

SERVICE = "containerd.services.snapshots.v1.Snapshots"

#: The service's methods: name -> (request type, response type, whether the response is a stream).
METHODS: dict[str, tuple[type[Message], type[Message], bool]] = {
    "Prepare": (pb.PrepareSnapshotRequest, pb.PrepareSnapshotResponse, False),
    "View": (pb.ViewSnapshotRequest, pb.ViewSnapshotResponse, False),
    "Mounts": (pb.MountsRequest, pb.MountsResponse, False),
    "Commit": (pb.CommitSnapshotRequest, empty_pb2.Empty, False),
    "Remove": (pb.RemoveSnapshotRequest, empty_pb2.Empty, False),
    "Stat": (pb.StatSnapshotRequest, pb.StatSnapshotResponse, False),
    "Update": (pb.UpdateSnapshotRequest, pb.UpdateSnapshotResponse, False),
    "List": (pb.ListSnapshotsRequest, pb.ListSnapshotsResponse, True),
    "Usage": (pb.UsageRequest, pb.UsageResponse, False),
    "Cleanup": (pb.CleanupRequest, empty_pb2.Empty, False),
}

#: The core's namespace for containerd's snapshots (:mod:`graftfs.store.snapshots`).
NAMESPACE = "containerd"
#: A key as containerd's metadata store makes it for its snapshotter: ``<namespace>/<sequence>/<key>``
#: (containerd's namespaces are labels: letters and digits, with ``.``, ``_`` or ``-`` between them).
CONTAINERD_KEY = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*/[0-9]+/.")


def containerds(info: Info, remote: bool) -> bool:
    """Whether a snapshot a store made before namespaces is containerd's: a key of containerd's shape, or a
    remote layer (containerd's remote-snapshot protocol made it)."""
    return remote or CONTAINERD_KEY.match(info.name) is not None


#: Snapshots per ``ListSnapshotsResponse`` (containerd's own server sends 100 at a time).
LIST_BATCH = 100

KINDS = {KIND_VIEW: pb.VIEW, KIND_ACTIVE: pb.ACTIVE, KIND_COMMITTED: pb.COMMITTED}
KIND_NAMES = {number: name for name, number in KINDS.items()}
#: grpc's status codes by number.
STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


# -- messages <-> the core's values -----------------------------------------------------------------------------


def timestamp(ns: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def nanoseconds(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000_000 + ts.nanos


def info_message(info: Info) -> pb.Info:
    return pb.Info(
        name=info.name,
        parent=info.parent,
        kind=KINDS[info.kind],
        created_at=timestamp(info.created),
        updated_at=timestamp(info.updated),
        labels=info.labels,
    )


def info_value(message: pb.Info) -> Info:
    kind = KIND_NAMES.get(message.kind, "")
    return Info(
        message.name,
        kind,
        message.parent,
        dict(message.labels),
        nanoseconds(message.created_at),
        nanoseconds(message.updated_at),
    )


def mount_messages(mounts: list[Mount]) -> list[mount_pb2.Mount]:
    return [mount_pb2.Mount(type=m.type, source=m.source, target="", options=list(m.options)) for m in mounts]


# -- the service ------------------------------------------------------------------------------------------------


class Service:
    """The snapshot service's methods over ``snapshotter``: each takes a request message and returns the
    response (``List``: yields them). Errors are raised as they are; :meth:`handler` turns them into statuses."""

    def __init__(self, snapshotter: Snapshotter, log: Logger) -> None:
        self.sn = snapshotter
        self.log = log

    def Prepare(self, request: pb.PrepareSnapshotRequest) -> pb.PrepareSnapshotResponse:
        mounts = self.sn.prepare(request.key, request.parent, dict(request.labels))
        return pb.PrepareSnapshotResponse(mounts=mount_messages(mounts))

    def View(self, request: pb.ViewSnapshotRequest) -> pb.ViewSnapshotResponse:
        mounts = self.sn.view(request.key, request.parent, dict(request.labels))
        return pb.ViewSnapshotResponse(mounts=mount_messages(mounts))

    def Mounts(self, request: pb.MountsRequest) -> pb.MountsResponse:
        return pb.MountsResponse(mounts=mount_messages(self.sn.mounts(request.key)))

    def Commit(self, request: pb.CommitSnapshotRequest) -> empty_pb2.Empty:
        self.sn.commit(request.name, request.key, dict(request.labels))
        return empty_pb2.Empty()

    def Remove(self, request: pb.RemoveSnapshotRequest) -> empty_pb2.Empty:
        self.sn.remove(request.key)
        return empty_pb2.Empty()

    def Stat(self, request: pb.StatSnapshotRequest) -> pb.StatSnapshotResponse:
        return pb.StatSnapshotResponse(info=info_message(self.sn.stat(request.key)))

    def Update(self, request: pb.UpdateSnapshotRequest) -> pb.UpdateSnapshotResponse:
        if not request.info.name:
            raise InvalidArgument("update: the snapshot's name is empty")
        info = self.sn.update(info_value(request.info), *request.update_mask.paths)
        return pb.UpdateSnapshotResponse(info=info_message(info))

    def List(self, request: pb.ListSnapshotsRequest) -> Iterator[pb.ListSnapshotsResponse]:
        batch: list[pb.Info] = []
        for info in self.sn.walk(*request.filters):
            batch.append(info_message(info))
            if len(batch) >= LIST_BATCH:
                yield pb.ListSnapshotsResponse(info=batch)
                batch = []
        if batch:
            yield pb.ListSnapshotsResponse(info=batch)

    def Usage(self, request: pb.UsageRequest) -> pb.UsageResponse:
        usage = self.sn.usage(request.key)
        return pb.UsageResponse(size=usage.size, inodes=usage.inodes)

    def Cleanup(self, request: pb.CleanupRequest) -> empty_pb2.Empty:
        removed = self.sn.cleanup()
        if removed:
            self.log.info("cleanup", removed=removed)
        return empty_pb2.Empty()

    # -- the wire ------------------------------------------------------------------------------------------

    def status(self, method: str, exc: BaseException) -> tuple[grpc.StatusCode, str]:
        """The status a failed call answers with: its kind's code and its one line; for an error that is no
        GraftfsError, INTERNAL with one line (the traceback goes to the log, never to the client)."""
        number, _ = grpc_code(exc)
        if isinstance(exc, GraftfsError):
            message = str(exc)
        else:
            from ...errors import os_reason

            text = os_reason(exc) + (f": {exc.filename}" if isinstance(exc, OSError) and exc.filename else "")
            message = " ".join(f"{method}: {type(exc).__name__}: {text}".splitlines())
            self.log.error(
                "unexpected-error", message, method=method, traceback="".join(traceback.format_exception(exc))
            )
        return STATUS_CODES.get(number, grpc.StatusCode.INTERNAL), message

    def handler(self) -> grpc.GenericRpcHandler:
        handlers = {}
        for method, (request_type, response_type, streams) in METHODS.items():
            call = getattr(self, method)
            if streams:
                handlers[method] = grpc.unary_stream_rpc_method_handler(
                    self._streaming(method, call),
                    request_deserializer=request_type.FromString,
                    response_serializer=response_type.SerializeToString,
                )
            else:
                handlers[method] = grpc.unary_unary_rpc_method_handler(
                    self._unary(method, call),
                    request_deserializer=request_type.FromString,
                    response_serializer=response_type.SerializeToString,
                )
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    def _unary(self, method: str, call: Callable[[Any], Message]) -> Callable[[Any, grpc.ServicerContext], Message]:
        def unary(request: Any, context: grpc.ServicerContext) -> Message:
            try:
                return call(request)
            except Exception as exc:
                code, message = self.status(method, exc)
            context.abort(code, message)
            raise AssertionError("grpc's abort returned")  # it raises

        return unary

    def _streaming(
        self, method: str, call: Callable[[Any], Iterator[Message]]
    ) -> Callable[[Any, grpc.ServicerContext], Iterator[Message]]:
        def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Message]:
            try:
                yield from call(request)
                return
            except Exception as exc:
                code, message = self.status(method, exc)
            context.abort(code, message)

        return streaming


# -- serving ----------------------------------------------------------------------------------------------------


def serve(root: str, socket_path: str, log: Logger, workers: int = 32, namespace: str = NAMESPACE) -> int:
    """Serve the snapshot service over the store (or bare directory) ``root`` on the unix socket
    ``socket_path`` (mode 0600) until SIGTERM or SIGINT, then stop gracefully: calls under way finish (for
    up to 30 s), new ones are refused, and the socket is removed. containerd's snapshots are kept in the
    core's ``namespace`` (:data:`NAMESPACE` unless ``--namespace``: two containerds sharing a store need one
    each, or each one's garbage collection removes the other's); an old store's are adopted into the default
    one only."""
    socket_path = claim_socket("serve containerd-snapshotter", socket_path)
    from concurrent import futures

    snapshotter = Snapshotter(root, log=log, namespace=namespace)
    if namespace == NAMESPACE:
        snapshotter.adopt(containerds)
    service = Service(snapshotter, log)
    stopping = threading.Event()

    def stop(signum: int, frame: object) -> None:
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="snapshots"),
        handlers=(service.handler(),),
    )
    old_umask = os.umask(0o177)  # the socket is made 0600 from the start, not chmodded after a window
    try:
        server.add_insecure_port("unix:" + socket_path)
    finally:
        os.umask(old_umask)
    server.start()
    try:
        os.chmod(socket_path, 0o600)
        log.info("serving", socket=socket_path, store=root)
        while not stopping.wait(1.0):
            pass
        log.info("stopping", socket=socket_path)
        started = time.monotonic()
        server.stop(grace=30).wait()
        log.info("stopped", seconds=round(time.monotonic() - started, 3))
    finally:
        server.stop(grace=None)
        snapshotter.close()
        try:
            os.unlink(socket_path)
        except FileNotFoundError:
            pass
    return 0


__all__ = ["METHODS", "NAMESPACE", "SERVICE", "Service", "serve"]

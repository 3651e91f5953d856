"""The containerd snapshot service's mapping (graftfs.server.containerd), in-process: statuses from the one error
table, never a traceback to the client, times and kinds on the wire, List's batches; and that only ``serve``
loads grpc."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from graftfs import errors
from graftfs.log import LEVELS, Logger
from graftfs.server.containerd import LIST_BATCH, Service, info_message, info_value
from graftfs.server.containerd.proto import snapshots_pb2 as pb
from graftfs.store.snapshots import KIND_ACTIVE, KIND_COMMITTED, KIND_VIEW, Info, Snapshotter, Usage
from tests.support.snapshots_wire import WireSnapshotter


class Broken(Snapshotter):
    """A snapshotter whose usage fails as nothing graftfs raises would."""

    def usage(self, key: str) -> Usage:
        raise RuntimeError("boom\nsecond line")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[WireSnapshotter, Path]]:
    """An in-process server over a snapshotter on ``tmp_path/root`` whose usage breaks, its client, and its
    log file."""
    sock_dir = tempfile.mkdtemp(prefix="gfs-unit-")
    socket_path = os.path.join(sock_dir, "s.sock")
    log_path = tmp_path / "log"
    stream = open(log_path, "a")  # noqa: SIM115  (closed after the server stops)
    service = Service(Broken(str(tmp_path / "root")), Logger(LEVELS["error"], stream))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=(service.handler(),))
    server.add_insecure_port("unix:" + socket_path)
    server.start()
    client = WireSnapshotter(socket_path)
    try:
        yield client, log_path
    finally:
        client.close()
        server.stop(grace=None).wait()
        stream.close()
        shutil.rmtree(sock_dir)


def test_each_kind_is_the_status_of_the_table() -> None:
    service = Service.__new__(Service)
    for kind, row in errors.TABLE.items():
        cls = type(errors.from_grpc(row[2], "x"))
        assert cls.kind == kind
        code, message = service.status("Stat", cls("what went wrong"))
        assert (code.value[0], code.name) == (row[2], row[3])
        assert message == "what went wrong"


def test_an_unexpected_error_is_internal_with_one_line_and_logged(
    served: tuple[WireSnapshotter, Path],
) -> None:
    client, log_path = served
    client.prepare("a")
    with pytest.raises(errors.Internal) as caught:
        client.usage("a")
    text = str(caught.value)
    assert "\n" not in text and "Traceback" not in text
    assert text == "Usage: RuntimeError: boom second line"
    log = log_path.read_text()
    assert "unexpected-error" in log and "Traceback" in log and "RuntimeError" in log
    # The server goes on serving.
    assert client.stat("a").kind == KIND_ACTIVE


def test_errors_of_the_core_cross_the_wire_as_their_class(served: tuple[WireSnapshotter, Path]) -> None:
    client, log_path = served
    with pytest.raises(errors.NotFound, match="snapshot `missing` does not exist"):
        client.stat("missing")
    with pytest.raises(errors.InvalidArgument):
        list(client.walk("nofield==x"))
    client.prepare("a")
    with pytest.raises(errors.AlreadyExists):
        client.prepare("a")
    assert "unexpected-error" not in (log_path.read_text() if log_path.exists() else "")


def test_info_round_trips_with_nanoseconds_and_every_kind() -> None:
    for kind, number in ((KIND_VIEW, pb.VIEW), (KIND_ACTIVE, pb.ACTIVE), (KIND_COMMITTED, pb.COMMITTED)):
        info = Info("ns/1/k", kind, "p", {"a": "b"}, 1_700_000_000_123_456_789, 1_700_000_001_000_000_001)
        message = info_message(info)
        assert message.kind == number
        assert (message.created_at.seconds, message.created_at.nanos) == (1_700_000_000, 123_456_789)
        assert info_value(pb.Info.FromString(message.SerializeToString())) == info


def test_list_streams_batches(tmp_path: Path) -> None:
    sn = Snapshotter(str(tmp_path / "root"))
    count = LIST_BATCH * 2 + 5
    for i in range(count):
        sn.prepare(f"k{i}")
    batches = list(Service(sn, Logger()).List(pb.ListSnapshotsRequest()))
    assert [len(b.info) for b in batches] == [LIST_BATCH, LIST_BATCH, 5]
    assert {i.name for b in batches for i in b.info} == {f"k{i}" for i in range(count)}


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"], ["serve", "containerd-snapshotter", "--help"]])
def test_only_the_server_loads_grpc(argv: list[str]) -> None:
    code = (
        "import sys\n"
        "from graftfs.cli.main import run\n"
        f"run({argv!r})\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('grpc', 'google')]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=60)

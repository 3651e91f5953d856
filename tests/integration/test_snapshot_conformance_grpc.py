"""The snapshotter conformance suite (tests/support/snapshot_conformance.py) through containerd's gRPC wire:
every case calls a ``graftfs serve containerd-snapshotter`` process, started for it as a real subprocess on a
fresh root, through :class:`tests.support.snapshots_wire.WireSnapshotter` (statuses turned back into graftfs's
error classes). The server is stopped (SIGTERM) and reaped after each case, and must have exited 0 and logged
no unexpected error."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Graftfs
from tests.integration.test_snapshot_conformance import _unmount_left
from tests.support import snapshot_conformance as conformance
from tests.support import snapshots_wire as wire
from tests.support.snapshot_conformance import CaseFn, Opener, ProcessCaseFn


@pytest.fixture
def socket_dir() -> Iterator[str]:
    """A short private directory for the server's socket (a unix socket's path has at most 107 bytes; pytest's
    temp paths can be longer)."""
    path = tempfile.mkdtemp(prefix="gfs-wire-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _server(root: Path, socket_dir: str, log: Path) -> wire.Server:
    server = wire.start_server(str(root), os.path.join(socket_dir, "snapshots.sock"), log)
    Path(wire.socket_file(str(root))).write_text(server.socket_path)
    return server


def _stopped_cleanly(server: wire.Server) -> None:
    status = server.stop()
    log = server.log_text()
    assert status == 0, f"the server exited {status}: {log}"
    assert '"level":"error"' not in log, f"the server logged errors: {log}"
    assert not os.path.exists(server.socket_path), "the server left its socket behind"


@pytest.fixture(params=["bare", "store"])
def client(
    request: pytest.FixtureRequest, tmp_path: Path, socket_dir: str
) -> Iterator[tuple[wire.WireSnapshotter, str]]:
    """A client of a fresh server on ``tmp_path/root`` (a bare directory, or a store made by ``init-store``)
    and the empty play area ``tmp_path/work``; afterwards what is left mounted is unmounted, the client
    closed and the server stopped."""
    work = tmp_path / "work"
    work.mkdir()
    root = tmp_path / "root"
    if request.param == "store":
        Graftfs(root).run("init-store")
    failures = request.session.testsfailed
    server = _server(root, socket_dir, tmp_path / "server.log")
    sn = wire.WireSnapshotter(server.socket_path)
    try:
        with conformance.cleared_umask():
            yield sn, str(work)
    finally:
        left = _unmount_left(tmp_path)
        sn.close()
        _stopped_cleanly(server)
    assert request.session.testsfailed > failures or not left, f"the case left mounts behind: {left}"


@pytest.mark.parametrize(
    "case",
    [c for _, c in conformance.CASES + conformance.GRAFTFS_CASES],
    ids=[n for n, _ in conformance.CASES + conformance.GRAFTFS_CASES],
)
def test_conformance_over_grpc(case: CaseFn, client: tuple[wire.WireSnapshotter, str]) -> None:
    sn, work = client
    case(sn, work)


@pytest.fixture
def opener(request: pytest.FixtureRequest, tmp_path: Path, socket_dir: str) -> Iterator[tuple[Opener, str]]:
    """Every process of a case (this one, and the children it runs) opens ``tmp_path/root`` as a client of one
    server (:func:`tests.support.snapshots_wire.open_root`); a root the case makes on its own gets a server
    of its own, which its client stops."""
    work = tmp_path / "work"
    work.mkdir()
    root = tmp_path / "root"
    failures = request.session.testsfailed
    server = _server(root, socket_dir, tmp_path / "server.log")
    try:
        with conformance.cleared_umask():
            yield Opener(str(root), "tests.support.snapshots_wire:open_root"), str(work)
    finally:
        left = _unmount_left(tmp_path)
        _stopped_cleanly(server)
    assert request.session.testsfailed > failures or not left, f"the case left mounts behind: {left}"


@pytest.mark.parametrize(
    "case", [c for _, c in conformance.PROCESS_CASES], ids=[n for n, _ in conformance.PROCESS_CASES]
)
def test_across_processes_over_grpc(case: ProcessCaseFn, opener: tuple[Opener, str]) -> None:
    how, work = opener
    case(how, work)

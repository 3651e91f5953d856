"""``graftfs serve containerd-snapshotter`` as a process: its socket (0600, a stale one replaced, a live one or
a file that is no socket refused), its stop on SIGTERM and SIGINT (exit 0, socket removed), and its flags."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import snapshots_wire as wire


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="gfs-serve-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_socket_is_0600_and_removed_at_sigterm(sock_dir: Path, tmp_path: Path) -> None:
    server = wire.start_server(str(tmp_path / "root"), str(sock_dir / "s.sock"), tmp_path / "log")
    try:
        st = os.lstat(server.socket_path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        client = wire.WireSnapshotter(server.socket_path)
        client.prepare("a")
        client.close()
    finally:
        status = server.stop()
    assert status == 0, server.log_text()
    assert not os.path.exists(server.socket_path)
    assert "containerd-snapshotter.stopped" in server.log_text()


def test_sigint_stops_it_too(sock_dir: Path, tmp_path: Path) -> None:
    server = wire.start_server(str(tmp_path / "root"), str(sock_dir / "s.sock"), tmp_path / "log")
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(timeout=30) == 0, server.log_text()
    server.stop()
    assert not os.path.exists(server.socket_path)


def test_a_stale_socket_is_replaced(sock_dir: Path, tmp_path: Path) -> None:
    path = sock_dir / "s.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # bound, never listening: what a killed server leaves
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    server = wire.start_server(str(tmp_path / "root"), str(path), tmp_path / "log")
    try:
        client = wire.WireSnapshotter(str(path))
        assert list(client.walk()) == []
        client.close()
    finally:
        assert server.stop() == 0


def test_a_live_socket_or_another_file_is_refused(sock_dir: Path, tmp_path: Path) -> None:
    path = sock_dir / "s.sock"
    server = wire.start_server(str(tmp_path / "root"), str(path), tmp_path / "log")
    try:
        second = _run(*wire.server_argv(str(tmp_path / "root2"), str(path)))
        assert second.returncode == 1
        assert second.stdout == f"cannot serve on {path}: another server is listening on it\n"
        client = wire.WireSnapshotter(str(path))  # the first one still serves
        assert list(client.walk()) == []
        client.close()
    finally:
        assert server.stop() == 0
    other = sock_dir / "file"
    other.write_text("not a socket")
    refused = _run(*wire.server_argv(str(tmp_path / "root"), str(other)))
    assert refused.returncode == 1
    assert refused.stdout == f"cannot serve on {other}: it exists and is not a socket\n"
    assert other.read_text() == "not a socket"


def test_the_socket_flag_is_required(tmp_path: Path) -> None:
    argv = [a for a in wire.server_argv(str(tmp_path / "root"), "x") if a not in ("--socket", "x")]
    result = _run(*argv)
    assert (result.returncode, result.stdout) == (1, "invalid argument: --socket is required\n")
    assert not (tmp_path / "root").exists()


def test_each_namespace_flag_is_a_snapshotter_of_its_own_over_one_store(sock_dir: Path, tmp_path: Path) -> None:
    """Two containerds sharing a store, each with a server of its own ``--namespace``: neither lists (so
    neither's garbage collection removes) the other's snapshots, nor the Python API's."""
    from graftfs.store.snapshots import Snapshotter

    root = tmp_path / "root"
    first = wire.start_server(str(root), str(sock_dir / "a.sock"), tmp_path / "a.log")
    second = wire.start_server(str(root), str(sock_dir / "b.sock"), tmp_path / "b.log", flags=("--namespace", "b"))
    try:
        a, b = wire.WireSnapshotter(first.socket_path), wire.WireSnapshotter(second.socket_path)
        a.prepare("default/1/k", "", {"who": "a"})
        assert list(b.walk()) == []
        b.prepare("default/1/k", "", {"who": "b"})
        assert [i.labels["who"] for i in a.walk()] == ["a"] and [i.labels["who"] for i in b.walk()] == ["b"]
        assert list(Snapshotter(str(root)).walk()) == []
        assert [i.name for i in Snapshotter(str(root), namespace="b").walk()] == ["default/1/k"]
        a.remove("default/1/k")
        assert b.stat("default/1/k").labels == {"who": "b"}
        b.remove("default/1/k")
        a.close()
        b.close()
    finally:
        assert first.stop() == 0 and second.stop() == 0
    result = _run(*wire.server_argv(str(root), str(sock_dir / "c.sock"), "info", "--namespace", "no/slash"))
    assert result.returncode == 1 and "--namespace 'no/slash'" in result.stdout, result

"""graftfs.store.locks.FileLock: flock semantics across processes, bounded waits, GrootFS's timeout text."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from graftfs.errors import LockTimeout
from graftfs.store.locks import FileLock

HOLDER = """
import sys
from graftfs.store.locks import FileLock
lock = FileLock(sys.argv[1], sys.argv[2])
lock.acquire(shared=sys.argv[3] == "shared", timeout=10)
print("locked", flush=True)
sys.stdin.readline()
lock.release()
print("released", flush=True)
"""


class Holder:
    """Another process holding the lock until told to let go (or killed)."""

    def __init__(self, directory: Path, key: str, shared: bool) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(directory), key, "shared" if shared else "exclusive"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line == "locked\n", f"holder did not get the lock: {line!r}"

    def release(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "released\n"
        self.proc.wait(timeout=10)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()


@contextmanager
def held_elsewhere(directory: Path, key: str, shared: bool = False) -> Iterator[Holder]:
    holder = Holder(directory, key, shared)
    try:
        yield holder
    finally:
        holder.close()


@pytest.fixture
def locks(tmp_path: Path) -> Path:
    d = tmp_path / "locks"
    d.mkdir()
    return d


def test_exclusive_excludes_exclusive_across_processes(locks: Path) -> None:
    mine = FileLock(str(locks), "global-groot-lock")
    with held_elsewhere(locks, "global-groot-lock") as other:
        assert not mine.try_acquire()
        assert not mine.try_acquire(shared=True)
        other.release()
    assert mine.try_acquire()
    mine.release()


def test_shared_locks_coexist_and_exclude_exclusive(locks: Path) -> None:
    with held_elsewhere(locks, "global-groot-lock", shared=True) as other:
        reader = FileLock(str(locks), "global-groot-lock")
        assert reader.try_acquire(shared=True)
        writer = FileLock(str(locks), "global-groot-lock")
        assert not writer.try_acquire()
        reader.release()
        assert not writer.try_acquire()  # the other process still holds its shared lock
        other.release()
        assert writer.try_acquire()
        writer.release()


def test_shared_is_refused_while_another_process_holds_it_exclusively(locks: Path) -> None:
    with held_elsewhere(locks, "chain", shared=False), pytest.raises(LockTimeout):
        FileLock(str(locks), "chain").acquire(shared=True, timeout=0.05)


def test_different_keys_do_not_block_each_other(locks: Path) -> None:
    with held_elsewhere(locks, "sha256:aaa"):
        lock = FileLock(str(locks), "sha256:bbb")
        lock.acquire(timeout=0.5)
        lock.release()


def test_a_killed_holder_leaves_no_lock_behind(locks: Path) -> None:
    with held_elsewhere(locks, "groot-gc-lock") as other:
        other.kill()
        lock = FileLock(str(locks), "groot-gc-lock")
        lock.acquire(timeout=2)
        lock.release()


def test_a_waiter_gets_the_lock_once_it_is_released(locks: Path) -> None:
    with held_elsewhere(locks, "global-groot-lock") as other:
        timer = threading.Timer(0.2, other.release)
        timer.start()
        try:
            lock = FileLock(str(locks), "global-groot-lock")
            start = time.monotonic()
            lock.acquire(timeout=10)
            elapsed = time.monotonic() - start
        finally:
            timer.join()
        assert 0.1 <= elapsed < 5
        assert lock.waited == pytest.approx(elapsed, abs=0.05)
        lock.release()


def test_timeout_error_names_the_lock_like_grootfs(locks: Path) -> None:
    with held_elsewhere(locks, "global-groot-lock"):
        lock = FileLock(str(locks), "global-groot-lock")
        start = time.monotonic()
        with pytest.raises(LockTimeout) as err:
            lock.acquire(timeout=0.25)
        elapsed = time.monotonic() - start
    assert str(err.value) == "timed out waiting for the 'global-groot-lock' file lock after '0.25s'"
    assert 0.25 <= elapsed < 2
    assert lock.fd == -1  # a failed wait keeps no descriptor open


@pytest.mark.parametrize(("timeout", "text"), [(0.05, "0.05s"), (0, "0s")])
def test_timeout_seconds_are_printed_like_go(locks: Path, timeout: float, text: str) -> None:
    blocker = FileLock(str(locks), "k")
    blocker.acquire()
    try:
        # flock locks belong to the open file description: a second FileLock in this process conflicts too.
        with pytest.raises(LockTimeout, match=f"^timed out waiting for the 'k' file lock after '{text}'$"):
            FileLock(str(locks), "k").acquire(timeout=timeout)
    finally:
        blocker.release()


def test_grootfs_three_second_wait_without_waiting(locks: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(float(i) for i in range(100))
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(time, "sleep", lambda _seconds: None)
    blocker = FileLock(str(locks), "groot-gc-lock")
    blocker.acquire()
    try:
        with pytest.raises(LockTimeout) as err:
            FileLock(str(locks), "groot-gc-lock").acquire(timeout=3.0)
    finally:
        blocker.release()
    assert str(err.value) == "timed out waiting for the 'groot-gc-lock' file lock after '3s'"


def test_lock_file_name_mode_and_persistence(locks: Path) -> None:
    lock = FileLock(str(locks), "image:my/handle")
    with lock.held():
        path = locks / "image:myhandle.lock"
        assert lock.path == str(path)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.exists()  # never deleted: a waiter may hold it open


def test_held_releases_on_error(locks: Path) -> None:
    lock = FileLock(str(locks), "k")
    with pytest.raises(RuntimeError), lock.held():
        raise RuntimeError("boom")
    assert lock.fd == -1
    other = FileLock(str(locks), "k")
    assert other.try_acquire()
    other.release()


def test_release_is_idempotent(locks: Path) -> None:
    lock = FileLock(str(locks), "k")
    lock.release()
    lock.acquire()
    lock.release()
    lock.release()
    assert lock.fd == -1

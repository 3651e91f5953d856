"""Bounded flock-based locks shared by every graftfs process using a store.

flock (not fcntl record locks) because it belongs to the open file description: the kernel drops it when
a process dies, however it dies, so a kill -9 never leaves a lock behind. A lock file is deleted only by a
holder of its exclusive lock (:meth:`FileLock.discard`, once the object it guards is gone); a process that
opened the old file meanwhile sees, once it has locked it, that the path names another file now, and locks
that one instead, so the lock never splits in two.

Every wait is bounded and its error names the lock, in GrootFS's words.
"""

from __future__ import annotations

import fcntl
import os
import time

from ..errors import LockTimeout
from .fsutil import unlink

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

# Poll interval grows from 1 ms to 50 ms: contended locks are released in milliseconds on the warm path,
# and a long wait (someone unpacking a big layer) should not burn CPU.
MIN_SLEEP = 0.001
MAX_SLEEP = 0.05


class FileLock:
    #: Told how long every acquire waited (shared?, seconds), when metrics are collected.
    observer: Callable[[bool, float], None] | None = None

    def __init__(self, directory: str, key: str) -> None:
        self.key = key
        self.path = os.path.join(directory, key.replace("/", "") + ".lock")
        self.fd = -1
        self.waited = 0.0  # seconds spent acquiring (the Shared/ExclusiveLockingTime metric)

    def _open(self) -> None:
        if self.fd < 0:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def try_acquire(self, shared: bool = False) -> bool:
        while True:
            self._open()
            try:
                fcntl.flock(self.fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            # A lock file may have been discarded (unlinked by its holder) between our open and our flock:
            # the inode we hold is then no lock at all. Only the file at the path counts; take that one.
            try:
                if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                    return True
            except FileNotFoundError:
                pass
            self.release()

    def acquire(self, shared: bool = False, timeout: float = 30.0) -> None:
        start = time.monotonic()
        sleep = MIN_SLEEP
        while not self.try_acquire(shared):
            sleep = self.backoff(start, sleep, timeout)
        self.record_wait(shared, start)

    def backoff(self, start: float, sleep: float, timeout: float) -> float:
        """One wait of a poll for this lock that began at ``start`` (monotonic): sleep ``sleep`` seconds and
        return the next wait, or, past ``timeout``, release the lock file and raise the error naming it."""
        if time.monotonic() - start >= timeout:
            self.release()
            raise LockTimeout(f"timed out waiting for the '{self.key}' file lock after '{timeout:g}s'")
        time.sleep(sleep)
        return min(sleep * 2, MAX_SLEEP)

    def record_wait(self, shared: bool, start: float) -> None:
        """Note how long the acquire that began at ``start`` (monotonic) took, for metrics."""
        self.waited = time.monotonic() - start
        if FileLock.observer is not None:
            FileLock.observer(shared, self.waited)

    def discard(self) -> None:
        """Remove the lock file, then release it. The caller holds it exclusively and the object it guards
        is gone, so that lock files do not pile up (one per container ever created, otherwise). Safe because
        every acquire checks that it locked the file still at the path."""
        unlink(self.path)
        self.release()

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the only fd drops the flock
            self.fd = -1

    def held(self, shared: bool = False, timeout: float = 30.0) -> FileLock:
        """``with lock.held(): ...`` (a plain context manager: contextlib is not worth its import here)."""
        self.acquire(shared, timeout)
        return self

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def discard_orphans(directory: str, kind: str, listed: Callable[[str], bool], exists: Callable[[str], bool]) -> None:
    """Remove the lock files ``<kind>-<key>.lock`` in ``directory`` whose object is gone: ``listed(key)`` is
    false (a check against listings made before), and, under the lock taken exclusively without waiting,
    so also ``exists(key)``. A lock someone holds is left alone."""
    prefix = f"{kind}-"
    for name in os.listdir(directory):
        if name.startswith(prefix) and name.endswith(".lock"):
            key = name[len(prefix) : -len(".lock")]
            if listed(key):
                continue
            lock = FileLock(directory, prefix + key)
            if lock.try_acquire() and not exists(key):
                lock.discard()
            else:
                lock.release()

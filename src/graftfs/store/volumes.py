"""Layer volumes: one directory per chain ID, unpacked once, shared by every image that uses it.

Lifecycle and locking (``locks/volume-<id>.lock``, one per volume):

* **build**: under the volume's exclusive lock, in ``volumes/<id>-incomplete-<ns>-<rand>``; its size record
  and short link are written first and the directory is renamed into place last, so a volume that exists
  under its own name is complete. A build killed half way leaves only an ``-incomplete-`` directory, which
  the next builder of that volume (who holds the lock, so the old builder is dead) or ``clean`` removes.
* **use**: a create holds the shared lock of every volume of its image from the moment it sees them until
  the image's dependency record is written. Concurrent creates of one image share; the first to find a
  volume missing builds it while the others wait on the lock, then they all use the result.
* **collect**: ``clean`` takes the exclusive lock *without waiting*: a volume some create holds is simply
  not collected this time. A create never waits for a clean longer than the clean's few renames.
"""

from __future__ import annotations

import os
import time

from .. import jsonc
from ..errors import FailedPrecondition
from .fsutil import atomic_write, read_text, remove_tree, temp_name, unlink
from .layout import COLLECTING, GC_PREFIX, INCOMPLETE, Layout
from .locks import MIN_SLEEP, FileLock

TYPE_CHECKING = False  # keep typing and collections.abc off the start-up path
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

#: How long a create waits for another process that is building the same layer. Large layers on slow disks
#: take minutes; the bound is there so a wedged builder cannot hang every create forever.
BUILD_WAIT = 600.0


def volume_lock(layout: Layout, volume_id: str) -> FileLock:
    return FileLock(layout.locks, f"volume-{volume_id}")


class Lease:
    """Shared locks on a set of volumes: while held, ``clean`` will not collect them."""

    def __init__(self) -> None:
        self.locks: list[FileLock] = []
        self.built: list[str] = []  # volumes this lease had to build (for metrics and logs)

    def release(self) -> None:
        for lock in self.locks:
            lock.release()
        self.locks.clear()


if TYPE_CHECKING:
    Builder = Callable[[int, str], int]
    """``build(index, directory) -> size``: unpack layer ``index`` into the empty ``directory``."""


class Volumes:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    def exists(self, volume_id: str) -> bool:
        return os.path.isdir(self.layout.volume(volume_id))

    def size(self, volume_id: str) -> int:
        try:
            return int(jsonc.loads(read_text(self.layout.volume_meta(volume_id), "{}")).get("Size", 0))
        except (ValueError, AttributeError):
            return 0

    def ids(self) -> list[str]:
        """Complete volumes (not those being built or collected)."""
        try:
            names = os.listdir(self.layout.volumes)
        except FileNotFoundError:
            return []
        return [n for n in names if not n.startswith(GC_PREFIX) and f"-{INCOMPLETE}-" not in n]

    def lease(
        self, volume_ids: Sequence[str], build: Builder, workers: int = 1, parents: Sequence[str] | None = None
    ) -> Lease:
        """Make sure every volume exists and hold it shared. Missing volumes are built by up to ``workers``
        threads at once (each volume is unpacked on its own, so the order does not matter; downloads and
        decompression overlap), bottom-up with one. ``parents`` are the chain IDs below each volume, when
        they are not the volumes listed below it (layers used in place from a repository are not volumes)."""
        lease = Lease()
        below = list(parents) if parents is not None else [_below(volume_ids, i) for i in range(len(volume_ids))]
        try:
            missing = sum(not self.exists(v) for v in volume_ids)
            if workers <= 1 or missing <= 1:
                for index, volume_id in enumerate(volume_ids):
                    lease.locks.append(self._hold(index, volume_id, build, lease, below[index]))
            else:
                self._hold_parallel(volume_ids, build, lease, min(workers, missing), below)
        except BaseException:
            self.abandon(lease)
            raise
        return lease

    def abandon(self, lease: Lease) -> None:
        """Release a lease whose create failed, and remove the volumes it built, so that a failed create
        leaves the store as it found it. A volume another create has started using meanwhile (it holds the
        lock) stays: it is complete and verified, and ``clean`` collects it once unused."""
        lease.release()
        for volume_id in lease.built:
            lock = self.try_lock_exclusive(volume_id)
            if lock is None:
                continue
            try:
                if self.exists(volume_id):
                    self.collect(volume_id)
                lock.discard()
            finally:
                lock.release()

    def _hold_parallel(
        self, volume_ids: Sequence[str], build: Builder, lease: Lease, workers: int, below: Sequence[str]
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers, thread_name_prefix="layer") as pool:
            futures = [pool.submit(self._hold, i, v, build, lease, below[i]) for i, v in enumerate(volume_ids)]
            failed: BaseException | None = None
            for future in futures:
                try:
                    # Every lock taken goes into the lease, even after a failure, so that it is released.
                    lease.locks.append(future.result())
                except BaseException as exc:
                    if failed is None:
                        failed = exc  # the lowest layer's error: the same one a sequential pull reports
                        pool.shutdown(wait=False, cancel_futures=True)
            if failed is not None:
                raise failed

    def _hold(self, index: int, volume_id: str, build: Builder, lease: Lease, parent: str = "") -> FileLock:
        """Hold ``volume_id`` shared, building it first if it is missing.

        Never *waits* for a lock: this thread's siblings hold shared locks on other volumes of the image, and
        a process that waited here for an exclusive lock could wait forever on one whose own waiter holds
        ours (two creates that each saw the other's layer missing, then each built one). Instead it polls:
        shared if the volume exists, exclusive to build it if it does not, and otherwise (someone is building
        or collecting it) sleeps and looks again. A builder holds no other volume's lock while it waits for
        nothing, so every build finishes and every poller gets its answer."""
        start = time.monotonic()
        sleep = MIN_SLEEP
        lock = volume_lock(self.layout, volume_id)
        while True:
            if lock.try_acquire(shared=True):
                if self.exists(volume_id):
                    lock.record_wait(True, start)
                    return lock
                lock.release()
                if lock.try_acquire(shared=False):
                    lock.record_wait(False, start)
                    try:
                        if not self.exists(volume_id):
                            self._build(index, volume_id, build, parent)
                            lease.built.append(volume_id)
                    except BaseException:
                        lock.discard()  # the build failed and left nothing: no lock file either
                        raise
                    finally:
                        lock.release()
                    continue  # flock cannot downgrade atomically: take it shared afresh and look again
            sleep = lock.backoff(start, sleep, BUILD_WAIT)

    def _build(self, index: int, volume_id: str, build: Builder, parent: str) -> None:
        self.remove_incomplete(volume_id)
        final = self.layout.volume(volume_id)
        tmp = temp_name(final, INCOMPLETE)
        os.mkdir(tmp, 0o755)
        try:
            size = build(index, tmp)
            # No fsync: the layer's own files are not synced either (a kill -9 loses nothing from the page
            # cache; only a power cut could, and then this record is the least of it), and two fsyncs per
            # layer were a quarter of a 128-layer cold create.
            # The parent (the layer below, by chain ID; "" for a bottom layer) is what makes a volume a
            # committed snapshot with a parent (store.snapshots); GrootFS's readers only look at Size. Always
            # written, so that a record without it means "built before parents were recorded", not "bottom".
            record = {"Size": size, "Parent": parent}
            atomic_write(self.layout.volume_meta(volume_id), jsonc.dumps(record).encode() + b"\n", sync=False)
            self._link(volume_id)
            os.rename(tmp, final)  # the commit point
        except BaseException:
            remove_tree(tmp)
            raise

    def _link(self, volume_id: str) -> None:
        link = self.layout.link(volume_id)
        target = os.path.join("..", "volumes", volume_id)
        try:
            current = os.readlink(link)
        except FileNotFoundError:
            current = None
        if current == target:
            return
        if current is not None:
            # Two volumes whose IDs share 48 leading bits: astronomically unlikely, but never mount the
            # wrong layer because of it.
            live = os.path.basename(current)
            if os.path.isdir(self.layout.volume(live)):
                raise FailedPrecondition(f"short link {link} is taken by volume {live}")
        tmp = temp_name(link, "tmp")
        os.symlink(target, tmp)
        os.rename(tmp, link)

    def remove_incomplete(self, volume_id: str) -> None:
        prefix = f"{volume_id}-{INCOMPLETE}-"
        for name in os.listdir(self.layout.volumes):
            if name.startswith(prefix):
                remove_tree(os.path.join(self.layout.volumes, name))

    # -- collection ----------------------------------------------------------------------------------------

    def try_lock_exclusive(self, volume_id: str) -> FileLock | None:
        lock = volume_lock(self.layout, volume_id)
        if lock.try_acquire(shared=False):
            return lock
        lock.release()
        return None

    def collect(self, volume_id: str) -> None:
        """Remove a volume. The caller holds its exclusive lock. Rename first, to a name of its own, so a
        crash half way through a large removal leaves a ``gc.`` directory that no image can mistake for the
        layer and that no later collection of the same layer collides with; ``sweep`` finishes it."""
        doomed = temp_name(os.path.join(self.layout.volumes, GC_PREFIX + volume_id), COLLECTING)
        os.rename(self.layout.volume(volume_id), doomed)
        self.forget(volume_id)
        remove_tree(doomed)

    def forget(self, volume_id: str) -> None:
        link = self.layout.link(volume_id)
        try:
            if os.path.basename(os.readlink(link)) == volume_id:
                os.unlink(link)
        except OSError:
            pass
        unlink(self.layout.volume_meta(volume_id))


def _below(volume_ids: Sequence[str], index: int) -> str:
    return volume_ids[index - 1] if index > 0 else ""

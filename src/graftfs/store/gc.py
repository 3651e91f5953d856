"""Garbage collection with GrootFS's threshold semantics, without ever blocking a create.

GrootFS makes clean take a store-wide exclusive lock that every create holds shared, so a clean waits for
in-flight pulls and, past 3 s, fails. Here a volume is protected by its own lock instead (see volumes.py):
clean locks candidate volumes *without waiting*, skips those a create is using, re-reads the dependency
records once it holds its locks (a create that committed in between is seen), and collects the rest.

An age policy GrootFS lacks: with ``keep_seconds`` > 0 a layer an image used in the last ``keep_seconds``
is kept too, so a host that deletes and re-creates containers of the same image does not download it again
after every clean. A delete moves its image's dependency record to ``meta/released/`` (the move's time is
the last use); clean reads those younger than the window and removes the older ones.
"""

from __future__ import annotations

import os
import stat
import time

from ..errors import FailedPrecondition, GraftfsError, KernelError, os_reason
from .fsutil import read_int, remove_tree, unlink
from .images import Images, read_record, record_owner, remove
from .layout import COLLECTING, GC_PREFIX, INCOMPLETE, Layout
from .locks import FileLock, discard_orphans
from .volumes import Volumes

GC_LOCK_WAIT = 3.0  # GrootFS's bound: a second clean gives up rather than queue


class CleanResult:
    def __init__(self, ran: bool) -> None:
        self.ran = ran
        self.collected: list[str] = []
        self.leftovers: list[str] = []


def committed_quota(layout: Layout, images: Images) -> int:
    return sum(read_int(os.path.join(layout.image(i), "image_quota")) for i in images.ids())


def volumes_size(volumes: Volumes) -> int:
    return sum(volumes.size(v) for v in volumes.ids())


def in_use(images: Images) -> set[str]:
    """Volumes some image uses: this store's, and those of the stores sharing its layers."""
    return Records(images.layout).refresh()


class Records:
    """The commit records of a store and of the stores sharing its layers, each read once: clean reads them
    before and after it locks its candidates, and in a store of a thousand images the second reading was
    half of its time. A record is only ever replaced by a rename, so one whose name and inode were seen
    before has not changed; only new ones are read again."""

    def __init__(self, layout: Layout) -> None:
        self.directories = [layout.dependencies, *(member.dependencies for member in layout.members())]
        self.seen: dict[str, int] = {}
        self.used: set[str] = set()
        self.damaged: list[str] = []  # records that name nothing readable: they could protect any volume

    def refresh(self, wanted: set[str] | None = None) -> set[str]:
        """Every volume a record names, now or at an earlier refresh (a volume freed meanwhile is kept until
        the next clean: never the other way round). With ``wanted``, reading stops once each of those is
        named: the records left unread could only name more, and clean asks about its candidates only (in a
        store of a thousand images of a few layers, the first records name every layer there is). A damaged
        record left unread is reported by the first clean that has something to collect: until then it
        could not have changed what is collected (nothing)."""
        remaining = None if wanted is None else wanted - self.used
        if remaining is not None and not remaining:
            return self.used
        for directory in self.directories:
            try:
                entries = os.scandir(directory)
            except FileNotFoundError:
                continue
            with entries:
                for entry in entries:
                    # An image's commit record, or a snapshot's (store.snapshots) on pulled layers.
                    if not (entry.name.startswith(("image:", "snapshot:")) and entry.name.endswith(".json")):
                        continue
                    if self.seen.get(entry.path) != entry.inode():
                        self.seen[entry.path] = entry.inode()
                        deps = read_record(entry.path)
                        if deps is None:
                            self.damaged.append(entry.name)
                            continue
                        self.used.update(deps)
                        if remaining is not None:
                            remaining.difference_update(deps)
                            if not remaining:
                                return self.used
        return self.used


def recently_released(layout: Layout, keep_seconds: float) -> set[str]:
    """Volumes of images deleted within ``keep_seconds``; older released records are removed."""
    from .. import jsonc

    kept: set[str] = set()
    horizon = time.time() - keep_seconds
    try:
        names = os.listdir(layout.released)
    except FileNotFoundError:
        return kept
    for name in names:
        path = os.path.join(layout.released, name)
        try:
            if keep_seconds > 0 and os.stat(path).st_ctime >= horizon:
                with open(path, encoding="utf-8") as f:
                    deps = jsonc.loads(f.read())
                if isinstance(deps, list):
                    kept.update(d for d in deps if isinstance(d, str))
            else:
                os.unlink(path)
        except (OSError, ValueError):
            continue  # removed meanwhile, or damaged: it protects nothing
    return kept


#: A temporary name in the store's layer-repository caches older than this is a killed create's.
REPOSITORY_TEMP_AGE = 60.0


def sweep_repository_temps(layout: Layout, failures: list[str]) -> list[str]:
    """Remove what a create killed while writing a repository layer's short link or shim (``r/<hex>-tmp-…``,
    ``r/<hex>.shim-tmp-…``) or verdict (``meta/repository-layers/<hex>-tmp-…``) left: those are the store's
    (the links, shims and verdicts themselves are kept: caches of a few bytes each). The repository itself is
    never looked at."""
    removed: list[str] = []
    horizon = time.time() - REPOSITORY_TEMP_AGE
    for directory in (layout.repository_links, layout.repository_verdicts, layout.repository_chains):
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            continue  # a store without a repository
        for name in names:
            if "-tmp-" not in name:
                continue
            path = os.path.join(directory, name)
            try:
                st = os.lstat(path)
                if st.st_mtime < horizon:
                    if stat.S_ISDIR(st.st_mode):
                        remove_tree(path)  # a shim being built
                    else:
                        os.unlink(path)
                    removed.append(name)
            except FileNotFoundError:
                continue
            except OSError as exc:
                failures.append(f"removing {name}: {os_reason(exc)}")
    return removed


def clean(layout: Layout, threshold: int = 0, keep_seconds: float = 0) -> CleanResult:
    """Collect unused volumes and sweep leftovers. Every step that fails is noted and the rest still
    run (a clean killed half way, or a mount found in a leftover, must not keep later cleans from the
    rest of the store); what failed is raised at the end, in one line."""
    images, volumes = Images(layout), Volumes(layout)
    with FileLock(layout.locks, "groot-gc-lock").held(timeout=GC_LOCK_WAIT):
        if threshold > 0 and committed_quota(layout, images) + volumes_size(volumes) < threshold:
            return CleanResult(ran=False)
        result = CleanResult(ran=True)
        failures: list[str] = []
        result.leftovers.extend(sweep_images(images, failures))
        if os.path.isdir(os.path.join(layout.root, "snapshots")):
            # What a killed snapshot verb left, first: a record of its that outlived it keeps layers.
            from .snapshots import Snapshotter

            try:
                result.leftovers.extend(Snapshotter(layout.root, overlay_options=()).cleanup())
            except (OSError, GraftfsError) as exc:
                failures.append(f"cleaning up snapshots: {exc if isinstance(exc, GraftfsError) else os_reason(exc)}")
        recent = set().union(*(recently_released(s, keep_seconds) for s in [layout, *layout.members()]))
        records = Records(layout)
        present = set(volumes.ids()) - recent
        candidates = present - records.refresh(present)
        held: dict[str, FileLock] = {}
        try:
            for volume_id in sorted(candidates):
                lock = volumes.try_lock_exclusive(volume_id)
                if lock is not None:
                    held[volume_id] = lock
            used = records.refresh(set(held)) | recent  # again, now that no create can start using what we hold
            if records.damaged:
                # Which layers a damaged record protects is unknown: collect none until its image is deleted.
                failures.append(f"{records.damaged[0]}: damaged, so no layer is collected until its image is deleted")
                used |= set(held)
            for volume_id, lock in held.items():
                if volume_id in used or not volumes.exists(volume_id):
                    continue
                try:
                    volumes.collect(volume_id)
                except OSError as exc:
                    failures.append(f"collecting volume {volume_id}: {os_reason(exc)}")
                    continue
                lock.discard()
                result.collected.append(volume_id)
        finally:
            for lock in held.values():
                lock.release()
        result.leftovers.extend(sweep_volumes(volumes, failures))
        result.leftovers.extend(sweep_repository_temps(layout, failures))
        if failures:
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise FailedPrecondition(f"clean: {failures[0]}{more}")
        return result


# -- leftovers of interrupted work --------------------------------------------------------------------------


def sweep_images(images: Images, failures: list[str]) -> list[str]:
    """Remove what interrupted creates and deletes left, once its owner is gone (the image's lock is
    free): dot-named directories, uncommitted image directories (unmounted first), commit records without
    a directory or half written, and lock files of images that do not exist. Everything here may be
    going away under us (a delete or create finishing): what has vanished is skipped. Returns what was
    removed; what could not be is added to ``failures``, and the sweep goes on."""
    removed: list[str] = []
    # One listing of each directory, not a stat per image: in a store of a thousand images the stats
    # were most of a clean. The listings only pick candidates; each is checked again under its lock.
    names = os.listdir(images.layout.images)
    present = set(names)
    records = set(os.listdir(images.layout.dependencies))
    for name in names:
        leftover = name.startswith(".")  # .<id>-creating-… or .<id>-deleting-…
        if not leftover and f"image:{name}.json" in records:
            continue
        path = os.path.join(images.layout.images, name)
        image_id = name[1:].rsplit("-", 3)[0] if leftover else name
        with _Unheld(images.lock(image_id)) as free:
            if not free or not os.path.lexists(path) or (not leftover and images.is_committed(name)):
                continue  # in use, gone, or committed meanwhile
            try:
                images.unmount(path)
                remove(path)
                images.release(path)
                removed.append(name)
            except (OSError, KernelError) as exc:
                failures.append(f"removing {name}: {exc if isinstance(exc, KernelError) else os_reason(exc)}")
    for name in records:
        # A record whose image directory is gone (a delete killed between its two steps), or one that was
        # being written when its create was killed (``image:<id>.json-tmp-…``).
        owner, temp = record_owner(name)
        if owner is None or (not temp and owner in present):
            continue
        with _Unheld(images.lock(owner)) as free:
            if free and (temp or not os.path.lexists(images.layout.image(owner))):
                unlink(os.path.join(images.layout.dependencies, name))
                removed.append(name)
    discard_orphans(
        images.layout.locks,
        "image",
        lambda image_id: image_id in present or f"image:{image_id}.json" in records,
        lambda image_id: os.path.lexists(images.layout.image(image_id)) or images.is_committed(image_id),
    )
    return removed


def sweep_volumes(volumes: Volumes, failures: list[str]) -> list[str]:
    """Remove leftovers of interrupted work whose owner is gone (the volume's lock is free): ``gc.``
    directories, ``-incomplete-`` builds, size records, links and lock files of volumes that do not
    exist. Returns what it removed; what it could not remove is added to ``failures`` and the sweep goes
    on: one leftover it cannot remove must not keep it from the others."""
    removed: list[str] = []
    for volume_id, path, kind in _volume_leftovers(volumes):
        lock = volumes.try_lock_exclusive(volume_id)
        if lock is None:
            continue  # its builder or collector is at work
        try:
            if kind == "tree":
                remove_tree(path)
            elif kind == "file":
                unlink(path)  # a size record being written belongs to the builder holding the lock
            elif kind == "record" and not volumes.exists(volume_id):
                volumes.forget(volume_id)
            elif kind == "link" and not os.path.exists(path):
                unlink(path)  # its volume was collected (a builder re-creates it before committing)
            removed.append(os.path.basename(path))
        except OSError as exc:
            failures.append(f"removing {os.path.basename(path)}: {os_reason(exc)}")
        finally:
            lock.release()
    # Lock files of volumes that are gone, with nothing of theirs left to sweep (a failed pull, a
    # collection killed before it discarded its lock): one per layer ever pulled, otherwise.
    unfinished = {_volume_owner(name) for name in os.listdir(volumes.layout.volumes)}
    discard_orphans(volumes.layout.locks, "volume", unfinished.__contains__, volumes.exists)
    return removed


def _volume_leftovers(volumes: Volumes) -> list[tuple[str, str, str]]:
    """``(volume id, path, kind)`` of everything that may be a leftover; the sweep decides under the
    volume's lock."""
    found = []
    for name in os.listdir(volumes.layout.volumes):
        if name.startswith(GC_PREFIX) or f"-{INCOMPLETE}-" in name:
            found.append((_volume_owner(name), os.path.join(volumes.layout.volumes, name), "tree"))
    existing = set(volumes.ids())
    for name in os.listdir(volumes.layout.volume_meta_dir):
        if name.startswith("volume-"):
            volume_id, temp, _ = name[len("volume-") :].partition("-tmp-")
            if temp or volume_id not in existing:
                found.append(
                    (volume_id, os.path.join(volumes.layout.volume_meta_dir, name), "file" if temp else "record")
                )
    for name in os.listdir(volumes.layout.links):
        link = os.path.join(volumes.layout.links, name)
        if not os.path.exists(link) and os.path.islink(link):
            found.append((os.path.basename(os.readlink(link)), link, "link"))
    return found


def _volume_owner(name: str) -> str:
    """The volume a directory in ``volumes/`` belongs to: itself, or the one it was being built as or
    collected from (``<id>-incomplete-…``, ``gc.<id>-collecting-…``; ``gc.<id>`` from older versions)."""
    if name.startswith(GC_PREFIX):
        return name[len(GC_PREFIX) :].split(f"-{COLLECTING}-", 1)[0]
    return name.split(f"-{INCOMPLETE}-", 1)[0]


class _Unheld:
    """``with _Unheld(images.lock(id)) as free:`` the image's lock, taken without waiting; ``free`` says whether
    it was (nobody is creating or deleting that image). Released on exit either way."""

    def __init__(self, lock: FileLock) -> None:
        self.lock = lock

    def __enter__(self) -> bool:
        return self.lock.try_acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()

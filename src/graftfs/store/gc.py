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

from ..errors import FailedPrecondition, GraftfsError, os_reason
from .fsutil import read_int, remove_tree
from .images import Images, read_record
from .layout import Layout
from .locks import FileLock
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
        result.leftovers.extend(images.sweep(failures))
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
        result.leftovers.extend(volumes.sweep(failures))
        result.leftovers.extend(sweep_repository_temps(layout, failures))
        if failures:
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise FailedPrecondition(f"clean: {failures[0]}{more}")
        return result
